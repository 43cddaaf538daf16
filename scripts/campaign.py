"""The CPU training campaign: a queue of training runs that goes on for days, across working sessions.

    bash scripts/campaign.sh start     # resume the queue in the background (nohup, 2 threads); idempotent
    bash scripts/campaign.sh status    # one table: each run's iteration of its budget, samples, hours, Dice
    bash scripts/campaign.sh pause     # SIGSTOP the campaign (for timings, the test suite); resume: SIGCONT
    bash scripts/campaign.sh resume
    bash scripts/campaign.sh stop      # end it; its runs resume from their checkpoints at the next start

The queue is ``scripts/campaign_queue.txt``: one run a line, ``NAME | EVALUATE | STEPS | dssm train ARGS``, in
the order they are trained. Each run trains in ``runs/campaign/NAME`` with ``--device cpu`` (its budget is in
iterations; it checkpoints every few minutes and resumes bit for bit), then is scored with ``dssm evaluate`` on
each dataset of EVALUATE (its validation cases there) at each Markov step count of STEPS, into
``runs/campaign/NAME/eval-DATA-kK/``. ``{runs}`` in ARGS is ``runs/campaign``, so that a run can start from an
earlier one's bundle (a two-stage DSSM's frozen baseline). A finished run is skipped; the worker reads the queue
again before each run, so lines can be added or changed while it runs (a run already started keeps its
arguments: they are recorded in its folder). One worker at a time (``runs/campaign/worker.pid``).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the environment can point the campaign at another queue and runs folder (the tests do)
QUEUE = Path(os.environ.get("DSSM_CAMPAIGN_QUEUE", ROOT / "scripts" / "campaign_queue.txt"))
RUNS = Path(os.environ.get("DSSM_CAMPAIGN_RUNS", ROOT / "runs" / "campaign"))
PID = RUNS / "worker.pid"
LOG = RUNS / "worker.log"
DSSM = shlex.split(os.environ.get("DSSM", str(ROOT / ".venv" / "bin" / "dssm")))


def read_queue() -> list:
    entries = []
    for number, line in enumerate(QUEUE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 4:
            sys.exit(f"{QUEUE}:{number}: expected NAME | EVALUATE | STEPS | ARGS, got {line!r}")
        name, evaluate, steps, args = parts
        entries.append({"name": name, "evaluate": [d for d in evaluate.split(",") if d],
                        "steps": [int(k) for k in steps.split(",") if k],
                        "args": shlex.split(args.replace("{runs}", str(RUNS)))})
    return entries


def _option(args: list, name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def bundle_of(run: Path):
    found = sorted(glob.glob(str(run / "bundle" / "*" / "model.json")))
    return Path(found[0]).parent if found else None


def _log(message: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S"), message, flush=True)


def work() -> None:
    """The worker: every unfinished run of the queue in turn, then its evaluations."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONUNBUFFERED="1")
    done_names = set()
    while True:
        todo = [e for e in read_queue() if e["name"] not in done_names]
        if not todo:
            _log("the queue is done")
            return
        entry = todo[0]
        run = RUNS / entry["name"]
        run.mkdir(parents=True, exist_ok=True)
        args_file = run / "args.json"
        if args_file.exists():  # a run keeps the arguments it started with
            entry["args"] = json.loads(args_file.read_text())
        else:
            args_file.write_text(json.dumps(entry["args"]) + "\n")
        if (run / "failed").exists():
            _log(f"{entry['name']}: failed earlier (see {run / 'failed'}); skipped")
            done_names.add(entry["name"])
            continue
        if bundle_of(run) is None:
            _log(f"{entry['name']}: training")
            with open(run / "train.log", "a") as out:
                code = subprocess.call(DSSM + ["train", *entry["args"], "--device", "cpu", "--out", str(run)],
                                       cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            if code != 0 or bundle_of(run) is None:
                if code < 0 or code in (130, 137, 143):  # stopped by a signal: resumed at the next start
                    _log(f"{entry['name']}: stopped (exit {code})")
                    return
                (run / "failed").write_text(f"dssm train exited {code}; see train.log\n")
                _log(f"{entry['name']}: failed (exit {code})")
                done_names.add(entry["name"])
                continue
        bundle = bundle_of(run)
        for data in entry["evaluate"]:
            for k in entry["steps"] or [None]:
                target = run / (f"eval-{data}" + (f"-k{k}" if k is not None else ""))
                if (target / "metrics.json").exists():
                    continue
                _log(f"{entry['name']}: evaluating on {data}" + (f" at K = {k}" if k is not None else ""))
                # --overwrite: an evaluation stopped before its metrics.json leaves masks behind in its own folder
                command = DSSM + ["evaluate", data, "--model", str(bundle), "-o", str(target), "--device", "cpu",
                                  "--overwrite"]
                if k is not None:
                    command += ["--steps", str(k)]
                with open(run / "evaluate.log", "a") as out:
                    subprocess.call(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _log(f"{entry['name']}: done")
        done_names.add(entry["name"])


def _running_pid():
    try:
        pid = int(PID.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if _state(pid) not in ("Z", "X", "?") else None  # an ended worker not yet reaped is not running


def start() -> None:
    pid = _running_pid()
    if pid:
        print(f"the campaign is already running (worker {pid}); bash scripts/campaign.sh status")
        return
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as log:
        proc = subprocess.Popen([sys.executable, __file__, "work"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    PID.write_text(f"{proc.pid}\n")
    print(f"campaign started (worker {proc.pid}, 2 threads); log: {LOG}")


def signal_group(sig, verb: str) -> int:
    """Signal the worker and the dssm process it runs (one session, one process group). Exit status 1 when there
    was nothing to do: not running, or already paused (so that scripts/test.sh resumes only what it paused)."""
    pid = _running_pid()
    if not pid:
        print("the campaign is not running")
        return 1
    if sig == signal.SIGSTOP and _state(pid) == "T":
        print(f"the campaign is already paused (worker {pid})")
        return 1
    os.killpg(pid, sig)
    print(f"campaign {verb} (worker {pid})")
    return 0


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except OSError:
        return "?"


def status() -> str:
    pid = _running_pid()
    header = (f"campaign: {'running' if pid and _state(pid) != 'T' else 'paused' if pid else 'not running'}"
              + (f" (worker {pid})" if pid else ""))
    rows = ["| run | state | iteration / budget | samples | hours (CPU, 2 threads) | validation mean Dice (last, best) "
            "| evaluated (mean Dice over the structures) |", "|---|---|---|---|---|---|---|"]
    for entry in read_queue():
        run = RUNS / entry["name"]
        args = json.loads((run / "args.json").read_text()) if (run / "args.json").exists() else entry["args"]
        budget = int(_option(args, "--iterations", 0))
        batch = int(_option(args, "--batch-size", 32))
        log = list(csv.DictReader(open(run / "log.csv"))) if (run / "log.csv").exists() else []
        iteration = max(int(log[-1]["iteration"]) if log else 0, _live_iteration(run))
        hours = float(log[-1]["train_minutes"]) / 60 if log else 0.0
        ckpt_note = ""
        if (run / "checkpoint.pt").exists() and bundle_of(run) is None:
            ckpt_note = f" (checkpoint {time.strftime('%m-%d %H:%M', time.localtime((run / 'checkpoint.pt').stat().st_mtime))})"
        dice = [float(r["val_mean_dice"]) for r in log]
        state = ("failed" if (run / "failed").exists() else "trained" if bundle_of(run) else
                 "training" if (run / "checkpoint.pt").exists() or log else "queued")
        evaluated = []
        for data in entry["evaluate"]:
            for k in entry["steps"] or [None]:
                target = run / (f"eval-{data}" + (f"-k{k}" if k is not None else ""))
                if (target / "metrics.json").exists():
                    summary = json.loads((target / "metrics.json").read_text())
                    evaluated.append(f"{data}{'' if k is None else f' K={k}'}: {_mean_dice(summary):.3f}")
        if state == "trained" and len(evaluated) == len(entry["evaluate"]) * max(1, len(entry["steps"])):
            state = "done"
        rows.append(f"| {entry['name']} | {state} | {iteration} / {budget}{ckpt_note} | {iteration * batch} "
                    f"| {hours:.2f} | {(f'{dice[-1]:.3f}, {max(dice):.3f}' if dice else '-')} "
                    f"| {'; '.join(evaluated) or '-'} |")
    return header + "\n\n" + "\n".join(rows)


def _live_iteration(run: Path) -> int:
    """The iteration a run's progress line last reported (``it=N`` in train.log), 0 if none."""
    try:
        with open(run / "train.log", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return 0
    found = re.findall(r"\bit=(\d+)", tail)
    return int(found[-1]) if found else 0


def _mean_dice(report: dict) -> float:
    """Mean over the structures of the per-case mean Dice (``dssm evaluate``'s metrics.json)."""
    values = [metrics["dice"]["mean"] for metrics in report["summary"].values()]
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "work":
        work()
    elif command == "start":
        start()
    elif command == "status":
        print(status())
    elif command == "pause":
        sys.exit(signal_group(signal.SIGSTOP, "paused"))
    elif command == "resume":
        sys.exit(signal_group(signal.SIGCONT, "resumed"))
    elif command == "stop":
        pid = _running_pid()
        if pid:
            os.killpg(pid, signal.SIGTERM)
            os.killpg(pid, signal.SIGCONT)  # a paused process acts on the SIGTERM once it runs again
            print(f"campaign stopped (worker {pid}); its runs resume from their checkpoints at the next start")
        else:
            print("the campaign is not running")
    else:
        sys.exit(f"unknown command {command!r}: start, status, pause, resume or stop")
