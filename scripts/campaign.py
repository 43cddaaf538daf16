"""The CPU training campaign: a queue of training runs that goes on for days, across working sessions.

    bash scripts/campaign.sh start     # resume the queue in the background (nohup, 2 threads); idempotent
    bash scripts/campaign.sh status    # one table: each run's iteration of its budget, samples, hours, Dice
    bash scripts/campaign.sh pause     # SIGSTOP the campaign (for timings, the test suite); resume: SIGCONT
    bash scripts/campaign.sh resume
    bash scripts/campaign.sh stop      # end it; its runs resume from their checkpoints at the next start

The queue is ``scripts/campaign_queue.txt``: one run a line, ``NAME | EVALUATE | STEPS | dssm train ARGS``, in
the order they are trained. Each run trains in ``runs/campaign/NAME`` with ``--device cpu`` (its budget is in
iterations; it checkpoints every few minutes and resumes bit for bit), then is scored with ``dssm evaluate
EVALUATE`` (a dataset spec such as ``acdc+mnms1``: its validation cases there) into ``runs/campaign/NAME/eval/``:
at the model's default K when STEPS is empty, else with ``--choose-steps STEPS``, which scores each K (into
``eval/K<k>/``) and makes the most accurate the bundle's default. ``{runs}`` in ARGS is ``runs/campaign``, so that a
run can start from an earlier one's bundle (a two-stage DSSM's frozen baseline). A finished run is skipped; the
worker reads the queue again before each run, so lines can be added or changed while it runs (a run already
started keeps its arguments, recorded in ``args.json``). A run that failed is tried again at the next start (its
``failed`` file says why). One worker at a time (``runs/campaign/worker.pid``).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DSSMSegment"))

from DSSMSegmentLib.metrics import mean_dice  # noqa: E402  (plain numpy: no PyTorch in the status command)

# the environment can point the campaign at another queue and runs folder (the tests do)
QUEUE = Path(os.environ.get("DSSM_CAMPAIGN_QUEUE", ROOT / "scripts" / "campaign_queue.txt"))
RUNS = Path(os.environ.get("DSSM_CAMPAIGN_RUNS", ROOT / "runs" / "campaign"))
PID = RUNS / "worker.pid"
CURRENT = RUNS / "current"  # the name of the run the worker is busy with
LOG = RUNS / "worker.log"
DSSM = shlex.split(os.environ.get("DSSM", str(ROOT / ".venv" / "bin" / "dssm")))


def read_queue(path: Path = None) -> list:
    """The queue's runs: name, the dataset spec to evaluate on, the K's to choose from, the ``dssm train`` ARGS
    (``{runs}`` still in them)."""
    path = path or QUEUE
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 4 or not parts[0] or not parts[3]:
            sys.exit(f"{path}:{number}: expected NAME | EVALUATE | STEPS | ARGS, got {line!r}")
        name, evaluate, steps, args = parts
        entries.append({"name": name, "evaluate": evaluate, "steps": [int(k) for k in steps.split(",") if k],
                        "args": shlex.split(args)})
    return entries


def train_args(args: list) -> list:
    """ARGS as ``dssm train`` gets them: ``{runs}`` made the runs folder."""
    return [a.replace("{runs}", str(RUNS)) for a in args]


def option(args: list, name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def bundle_of(run: Path):
    found = sorted(glob.glob(str(run / "bundle" / "*" / "model.json")))
    return Path(found[0]).parent if found else None


def eval_reports(run: Path, entry: dict) -> dict:
    """``{K or None: the metrics.json report}`` of the run's evaluations written so far (None: the default K)."""
    folders = {k: run / "eval" / f"K{k}" for k in entry["steps"]} if entry["steps"] else {None: run / "eval"}
    reports = {}
    for k, folder in folders.items():
        try:
            reports[k] = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            pass
    return reports


def _log(message: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S"), message, flush=True)


def _run_logged(command: list, log: Path, env: dict) -> int:
    with open(log, "a") as out:
        return subprocess.call(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def work() -> None:
    """The worker: every unfinished run of the queue in turn, then its evaluation."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONUNBUFFERED="1")
    handled = set()  # the runs finished or failed in this worker's life
    while True:
        todo = [e for e in read_queue() if e["name"] not in handled]
        if not todo:
            CURRENT.unlink(missing_ok=True)
            _log("the queue is done")
            return
        entry = todo[0]
        run = RUNS / entry["name"]
        run.mkdir(parents=True, exist_ok=True)
        CURRENT.write_text(entry["name"] + "\n")
        args_file = run / "args.json"
        if args_file.exists():  # a run keeps the arguments it started with
            entry["args"] = json.loads(args_file.read_text())
        else:
            args_file.write_text(json.dumps(entry["args"]) + "\n")
        (run / "failed").unlink(missing_ok=True)  # failed at an earlier start: tried again
        if bundle_of(run) is None:
            _log(f"{entry['name']}: training")
            code = _run_logged(DSSM + ["train", *train_args(entry["args"]), "--device", "cpu", "--out", str(run)],
                               run / "train.log", env)
            if code != 0 or bundle_of(run) is None:
                if code < 0 or code in (130, 137, 143):  # stopped by a signal: resumed at the next start
                    _log(f"{entry['name']}: stopped (exit {code})")
                    return
                if not (run / "checkpoint.pt").exists():
                    args_file.unlink(missing_ok=True)  # nothing trained yet: the next try takes the queue's line
                (run / "failed").write_text(f"dssm train exited {code}; see train.log\n")
                _log(f"{entry['name']}: failed (exit {code}); tried again at the next start")
                handled.add(entry["name"])
                continue
        if len(eval_reports(run, entry)) < max(1, len(entry["steps"])) and entry["evaluate"]:
            _log(f"{entry['name']}: evaluating on {entry['evaluate']}")
            # --overwrite: an evaluation stopped before its metrics.json leaves masks behind in its own folder
            command = DSSM + ["evaluate", entry["evaluate"], "--model", str(bundle_of(run)), "-o", str(run / "eval"),
                              "--device", "cpu", "--overwrite"]
            if entry["steps"]:
                command += ["--choose-steps", ",".join(str(k) for k in entry["steps"]), "--update-bundle"]
            code = _run_logged(command, run / "evaluate.log", env)
            if code != 0:
                if code < 0 or code in (130, 137, 143):
                    _log(f"{entry['name']}: evaluation stopped (exit {code})")
                    return
                (run / "failed").write_text(f"dssm evaluate exited {code}; see evaluate.log\n")
                _log(f"{entry['name']}: evaluation failed (exit {code}); tried again at the next start")
                handled.add(entry["name"])
                continue
        _log(f"{entry['name']}: done")
        handled.add(entry["name"])


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _running_pid():
    """The worker's pid, if the process that ``worker.pid`` names is alive and is this campaign's worker (a pid
    file left by a lost session may name another process by now)."""
    try:
        pid = int(PID.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if _state(pid) in ("Z", "X", "?") or b"work" not in command or not any(c.endswith(b"campaign.py") for c in command):
        return None
    return pid


def start() -> None:
    pid = _running_pid()
    if pid and _state(pid) == "T":
        os.killpg(pid, signal.SIGCONT)
        print(f"the campaign was paused (worker {pid}): resumed")
        return
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


def stop() -> None:
    pid = _running_pid()
    if not pid:
        print("the campaign is not running")
        return
    os.killpg(pid, signal.SIGTERM)
    os.killpg(pid, signal.SIGCONT)  # a paused process acts on the SIGTERM once it runs again
    print(f"campaign stopped (worker {pid}); its runs resume from their checkpoints at the next start")


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


def _read_log(run: Path) -> list:
    """``log.csv``'s complete rows (a row being written is left out)."""
    try:
        rows = list(csv.DictReader(open(run / "log.csv", newline="")))
    except OSError:
        return []
    good = []
    for row in rows:
        try:
            good.append((int(row["iteration"]), float(row["train_minutes"]), float(row["val_mean_dice"])))
        except (KeyError, TypeError, ValueError):
            pass
    return good


def _dice_text(report: dict) -> str:
    """Mean Dice over the structures, per dataset when the report has several."""
    parts = report.get("by_dataset") or {}
    if len(parts) > 1:
        return ", ".join(f"{name} {mean_dice(summary):.3f}" for name, summary in parts.items())
    return f"{mean_dice(report['summary']):.3f}"


def status(readme: bool = False) -> str:
    """The status table; ``readme``: without the header line and the evaluations' Dice (tables of their own
    give those: scripts/experiments/heart_vendors.py), so that each number appears once."""
    pid = _running_pid()
    running = bool(pid) and _state(pid) != "T"
    current = CURRENT.read_text().strip() if pid and CURRENT.exists() else None
    header = f"campaign: {'running' if running else 'paused' if pid else 'not running'}" + (
        f" (worker {pid}, on {current})" if pid and current else "") + f"; runs folder {RUNS}" + (
        "" if RUNS.exists() else " (none yet: this checkout has never started a campaign)")
    rows = ["| run | state | iteration / budget | samples | hours of training at the last validation (CPU, 2 threads) | validation mean Dice "
            "while training (last, best) | evaluated: mean Dice over the structures |", "|---|---|---|---|---|---|---|"]
    for entry in read_queue():
        run = RUNS / entry["name"]
        try:
            args = json.loads((run / "args.json").read_text())
        except (OSError, ValueError):
            args = entry["args"]
        budget = int(option(args, "--iterations", 0))
        batch = int(option(args, "--batch-size", 32))
        log = _read_log(run)
        iteration, minutes = (log[-1][0], log[-1][1]) if log else (0, 0.0)
        if entry["name"] == current:  # training now: its progress line is ahead of the last validation
            iteration = max(iteration, _live_iteration(run))
        dice = [d for _, _, d in log if math.isfinite(d)]
        reports = eval_reports(run, entry)
        wanted = max(1, len(entry["steps"])) if entry["evaluate"] else 0
        if (run / "failed").exists():
            state = "failed: " + (run / "failed").read_text().strip()
        elif bundle_of(run) is None:
            state = ("training" if entry["name"] == current else
                     "stopped, resumes from its checkpoint" if (run / "checkpoint.pt").exists() else "not started")
        else:
            state = "done" if len(reports) >= wanted else "evaluating" if entry["name"] == current else "trained"
        evaluated = "; ".join((f"K={k}: " if k is not None else "") + _dice_text(r) for k, r in sorted(
            reports.items(), key=lambda kr: -1 if kr[0] is None else kr[0]))
        bundle = bundle_of(run)
        if bundle is not None and entry["steps"] and len(reports) >= wanted:
            evaluated += f" (default K = {json.loads((bundle / 'model.json').read_text()).get('default_steps')})"
        rows.append(f"| {entry['name']} | {state} | {iteration} / {budget} | {iteration * batch} | {minutes / 60:.2f} "
                    f"| {(f'{dice[-1]:.3f}, {max(dice):.3f}' if dice else '-')} | {evaluated or '-'} |")
    if readme:
        return "\n".join("|".join(row.split("|")[:-2]) + "|" for row in rows)
    return header + "\n\n" + "\n".join(rows)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "work":
        work()
    elif command == "start":
        start()
    elif command == "status":
        print(status(readme="--readme" in sys.argv[2:]))
    elif command == "pause":
        sys.exit(signal_group(signal.SIGSTOP, "paused"))
    elif command == "resume":
        sys.exit(signal_group(signal.SIGCONT, "resumed"))
    elif command == "stop":
        stop()
    else:
        sys.exit(f"unknown command {command!r}: start, status, pause, resume or stop")
