"""The CPU training campaign and what it trains on: the M&Ms-1 layout and its split, the heavy augmentation,
``dssm train --augment``, the campaign's queue run for real on tiny Prostate158 models, and the choice of a
model's default Markov steps K on its validation cases (``dssm evaluate --choose-steps``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA, PROSTATE, ROOT, _need, describe, run_dssm, subprocess_env
from DSSMSegmentLib import datasets
from DSSMSegmentLib.augment import AugmentConfig, intensity
from DSSMSegmentLib.recipes import AUGMENT_PRESETS, get_recipe

MNMS = DATA / "mnms1"
TINY = "--recipe prostate-t2-mri --widths 8,16,32,64 --batch-size 2 --val-patients 020"


def test_mnms1_cases_pair_each_frame_with_its_mask_and_split_by_vendor() -> None:
    _need(MNMS)
    cases = datasets.find_cases("mnms1")
    subjects = {c.patient for c in cases}
    assert len(subjects) == len(list((MNMS / "philips").iterdir()))
    assert len(cases) == 2 * len(subjects)  # ED and ES of every subject
    assert {c.group for c in cases} == {"philips"}
    for case in cases:
        assert case.image.exists() and case.label.name == case.image.name.replace(".nii.gz", "_gt.nii.gz")
        assert case.case_id.startswith(case.patient + "_sa_")
    labels = datasets.read_label_array(cases[0])
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and len(np.unique(labels)) == 4  # remapped to ACDC's labels


def test_the_heart_split_holds_back_a_fifth_of_the_philips_subjects_and_keeps_acdcs_validation_cases() -> None:
    """Joining M&Ms-1 to ACDC must not move ACDC's validation cases (the bundled heart model's), and must hold back
    Philips subjects to measure another vendor on."""
    _need(MNMS)
    _need(DATA / "acdc")
    recipe = get_recipe("heart-cine-mri")
    assert recipe["data"] == "acdc+mnms1"
    joined = datasets.split_cases(datasets.find_cases(recipe["data"]), recipe["val_fraction"])
    acdc_alone = datasets.split_cases(datasets.find_cases("acdc"), recipe["val_fraction"])
    assert [p for p in joined["val"] if p.startswith("acdc:")] == acdc_alone["val"]
    bundled = json.loads((ROOT / "DSSMSegment/Resources/Models/heart-cine-mri/model.json").read_text())
    assert acdc_alone["val"] == sorted(bundled["training"]["split"]["val"])
    philips_val = [p for p in joined["val"] if p.startswith("mnms1:")]
    philips_train = [p for p in joined["train"] if p.startswith("mnms1:")]
    assert len(philips_val) == round(0.2 * (len(philips_val) + len(philips_train))) > 0
    assert not set(philips_val) & set(philips_train)


def _only(**kwargs) -> AugmentConfig:
    """An augmentation that does nothing but ``kwargs``."""
    off = dict(gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0, bias_field=0.0, low_res=0.0, noise=0.0,
               blur=0.0)
    return AugmentConfig.from_dict({**off, **kwargs})


def test_gamma_on_the_inverted_image_brightens_the_dark_end_where_plain_gamma_darkens_it() -> None:
    x = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64).repeat(4, 1, 1, 1)
    plain = intensity(x, _only(gamma=(2.0, 2.0)), torch.Generator().manual_seed(0))
    inverted = intensity(x, _only(gamma=(2.0, 2.0), gamma_invert=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(plain, x ** 2, atol=1e-5)
    assert torch.allclose(inverted, 1 - (1 - x) ** 2, atol=1e-5)


def test_anisotropic_low_resolution_blurs_one_direction_more_than_the_other() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 96, 96, generator=gen).repeat(64, 1, 1, 1)
    iso = intensity(x, _only(low_res=1.0, low_res_factor=(3.0, 3.0)), torch.Generator().manual_seed(1))
    aniso = intensity(x, _only(low_res=1.0, low_res_factor=(3.0, 3.0), low_res_aniso=True),
                      torch.Generator().manual_seed(1))

    def detail(y):  # high-frequency energy along rows and along columns
        return float((y[..., 1:, :] - y[..., :-1, :]).abs().mean()), float((y[..., 1:] - y[..., :-1]).abs().mean())

    rows, cols = detail(iso)
    assert math.isclose(rows, cols, rel_tol=0.05)  # the same coarsening both ways
    rows, cols = detail(aniso)
    assert max(rows, cols) > 1.2 * min(rows, cols)  # one direction kept more detail than the other


def test_train_augment_preset_is_what_trains_and_what_the_bundle_records(prostate_cache, tmp_path) -> None:
    _need(PROSTATE)
    proc = run_dssm(["train", *TINY.split(), "--iterations", "1", "--device", "cpu", "--augment", "mri-heavy",
                     "--cache", prostate_cache, "--out", "run"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    meta = json.loads(next((tmp_path / "run" / "bundle").glob("*/model.json")).read_text())
    assert meta["training"]["augment"] == json.loads(json.dumps(AUGMENT_PRESETS["mri-heavy"]))
    assert meta["training"]["augment"] != get_recipe("prostate-t2-mri")["augment"]
    proc = run_dssm(["train", *TINY.split(), "--iterations", "1", "--augment", "strong", "--out", "x"], cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'strong'" in proc.stderr and not (tmp_path / "x").exists()


def _campaign(command: str, queue: Path, runs: Path) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "DSSM_CAMPAIGN_QUEUE": str(queue), "DSSM_CAMPAIGN_RUNS": str(runs),
           "DSSM": str(Path(sys.executable).with_name("dssm"))}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "campaign.py"), command], env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=600)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, prostate_cache):
    """A two-run queue, worked through for real: a tiny DSSM whose default K is chosen from K = 0 and 2, then a
    fine-tune of its bundle ({runs}), scored at its default K; then the worker is run again."""
    _need(PROSTATE)
    base = tmp_path_factory.mktemp("campaign")
    queue, runs = base / "queue.txt", base / "runs"
    queue.write_text(
        "# a comment line\n"
        f"first | prostate158 | 0,2 | {TINY} --iterations 2 --cache {prostate_cache}\n\n"
        f"second | prostate158 | | {TINY} --iterations 1 --cache {prostate_cache} "
        "--init {runs}/first/bundle/prostate-t2-mri\n")
    proc = _campaign("work", queue, runs)
    assert proc.returncode == 0, describe(proc)
    return queue, runs, proc


def test_the_campaign_trains_and_scores_each_run_of_its_queue_in_turn(campaign) -> None:
    queue, runs, proc = campaign
    assert proc.stdout.index("first: training") < proc.stdout.index("second: training")
    assert "the queue is done" in proc.stdout
    measured = {}
    for k in (0, 2):
        report = json.loads((runs / "first" / "eval" / f"K{k}" / "metrics.json").read_text())
        assert report["steps"] == k and report["n_cases"] == 1 and list(report["per_case"]) == ["020"]
        measured[k] = np.mean([s["dice"]["mean"] for s in report["summary"].values()])
    first = json.loads((runs / "first" / "bundle" / "prostate-t2-mri" / "model.json").read_text())
    assert first["default_steps_choice"]["steps"] == first["default_steps"] in (0, 2)  # chosen by --choose-steps
    assert set(first["metrics"]["evaluations"]) == {"val@K=0", "val@K=2"}
    second = json.loads((runs / "second" / "bundle" / "prostate-t2-mri" / "model.json").read_text())
    assert second["training"]["earlier_stages"]  # it started from the first run's bundle
    assert json.loads((runs / "second" / "args.json").read_text())[-1] == "{runs}/first/bundle/prostate-t2-mri"
    assert json.loads((runs / "second" / "eval" / "metrics.json").read_text())["steps"] == second["default_steps"]


def test_the_campaign_status_table_shows_iterations_samples_hours_and_dice(campaign) -> None:
    queue, runs, _ = campaign
    proc = _campaign("status", queue, runs)
    assert proc.returncode == 0, describe(proc)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| first") or line.startswith("| second")}
    first = rows["first"]
    assert first[0] == "done" and first[1] == "2 / 2" and first[2] == "4"  # 2 iterations of batch 2
    log = (runs / "first" / "log.csv").read_text().splitlines()
    assert first[3] == f"{float(log[-1].split(',')[1]) / 60:.2f}"
    meta = json.loads((runs / "first" / "bundle" / "prostate-t2-mri" / "model.json").read_text())
    for k in (0, 2):
        report = json.loads((runs / "first" / "eval" / f"K{k}" / "metrics.json").read_text())
        dice = np.mean([m["dice"]["mean"] for m in report["summary"].values()])
        assert f"K={k}: {dice:.3f}" in first[5]
    assert first[5].endswith(f"(default K = {meta['default_steps']})")
    assert rows["second"][0] == "done" and rows["second"][1] == "1 / 1"
    assert "campaign: not running" in proc.stdout


def test_a_finished_queue_is_not_trained_again_and_a_new_line_is(campaign, prostate_cache) -> None:
    queue, runs, _ = campaign
    before = (runs / "first" / "train.log").stat().st_size
    queue.write_text(queue.read_text() + f"third | | | {TINY} --iterations 1 --cache {prostate_cache}\n")
    proc = _campaign("work", queue, runs)
    assert proc.returncode == 0, describe(proc)
    assert "first: training" not in proc.stdout and "third: training" in proc.stdout
    assert "evaluating" not in proc.stdout  # the first two were scored already, the third asks for none
    assert (runs / "first" / "train.log").stat().st_size == before
    assert next((runs / "third" / "bundle").glob("*/model.json"))


def test_a_failed_run_is_said_so_and_tried_again_with_its_corrected_line(prostate_cache, tmp_path) -> None:
    _need(PROSTATE)
    queue, runs = tmp_path / "queue.txt", tmp_path / "runs"
    queue.write_text(f"bad | | | {TINY} --iterations 1 --cache {prostate_cache} --init no/such/bundle\n")
    proc = _campaign("work", queue, runs)
    assert proc.returncode == 0 and "bad: failed (exit 2)" in proc.stdout, describe(proc)
    row = next(ln for ln in _campaign("status", queue, runs).stdout.splitlines() if ln.startswith("| bad"))
    assert "failed: dssm train exited 2; see train.log" in row
    queue.write_text(f"bad | | | {TINY} --iterations 1 --cache {prostate_cache}\n")  # the line mended
    proc = _campaign("work", queue, runs)
    assert proc.returncode == 0 and "bad: done" in proc.stdout, describe(proc)
    assert not (runs / "bad" / "failed").exists() and next((runs / "bad" / "bundle").glob("*/model.json"))


def test_the_fewest_steps_that_no_larger_k_beats_by_more_than_the_margin() -> None:
    from DSSMSegmentLib.evaluate import most_accurate_steps

    assert most_accurate_steps({0: 0.900, 4: 0.899}) == 0
    assert most_accurate_steps({0: 0.900, 4: 0.9019}) == 0  # +0.0019: within the chain's noise
    assert most_accurate_steps({0: 0.900, 4: 0.9021}) == 4
    assert most_accurate_steps({0: 0.900, 1: 0.9019, 2: 0.9021}) == 1  # K = 2 adds 0.0002 to K = 1
    assert most_accurate_steps({0: 0.900, 1: 0.890, 4: 0.910}) == 4
    assert most_accurate_steps({2: 0.95}) == 2


def _tiny_bundle(campaign, tmp_path, name: str = "tiny-prostate") -> Path:
    """A copy of the campaign's first bundle under another name (beside the bundled prostate model)."""
    import shutil

    _, runs, _ = campaign
    bundle = tmp_path / "models" / name
    shutil.copytree(runs / "first" / "bundle" / "prostate-t2-mri", bundle)
    meta = json.loads((bundle / "model.json").read_text())
    meta.pop("default_steps_choice", None)
    meta["metrics"] = {}
    (bundle / "model.json").write_text(json.dumps({**meta, "name": name, "default_steps": 4}))
    return bundle


def test_choose_steps_makes_the_most_accurate_k_the_default_and_says_why(campaign, tmp_path) -> None:
    from DSSMSegmentLib.evaluate import most_accurate_steps

    bundle = _tiny_bundle(campaign, tmp_path)
    proc = run_dssm(["evaluate", "prostate158", "--model", bundle, "--choose-steps", "2,0", "--device", "cpu",
                     "-o", tmp_path / "eval"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    meta = json.loads((bundle / "model.json").read_text())
    measured = {k: np.mean([s["dice"]["mean"] for s in json.loads(
        (tmp_path / "eval" / f"K{k}" / "metrics.json").read_text())["summary"].values()]) for k in (0, 2)}
    expected = most_accurate_steps(measured)
    assert meta["default_steps"] == meta["default_steps_choice"]["steps"] == expected
    assert meta["metrics"]["dice"] == {s: round(v["dice"]["mean"], 4) for s, v in
                                       meta["metrics"]["evaluations"][f"val@K={expected}"]["summary"].items()}
    assert f"default K of tiny-prostate: {expected}" in proc.stdout
    listed = run_dssm(["models"], cwd=tmp_path, env={"DSSM_MODELS_PATH": str(tmp_path / "models")})
    line = next(ln.strip() for ln in listed.stdout.splitlines() if ln.strip().startswith("default K = ")
                and f"K = 0 {measured[0]:.3f}" in ln)
    assert line == (f"default K = {expected}: the most accurate of K = 0, 2 on the validation cases (a larger K only "
                    f"where it adds more than 0.002 mean Dice); mean validation Dice K = 0 {measured[0]:.3f}, "
                    f"K = 2 {measured[2]:.3f}")


def test_choose_steps_refuses_what_would_make_its_choice_unfair_before_any_work(campaign, tmp_path) -> None:
    bundle = _tiny_bundle(campaign, tmp_path)
    for extra, says in ((["--tta"], "leave out --tta"), (["--limit", "1"], "leave out --limit"),
                        (["--split", "all"], "leave out --split"), (["--choose-steps", "0,501"], "at most 500 steps")):
        proc = run_dssm(["evaluate", "prostate158", "--model", bundle, "--choose-steps", "0,2", *extra], cwd=tmp_path)
        assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, describe(proc)
    proc = run_dssm(["evaluate", "acdc", "--model", "heart-cine-mri-baseline", "--choose-steps", "0,1"], cwd=tmp_path)
    assert "is a discriminative baseline" in proc.stderr, describe(proc)
    assert "evaluations" not in json.loads((bundle / "model.json").read_text())["metrics"]  # nothing evaluated


def test_the_default_k_reason_follows_what_was_measured(campaign, tmp_path) -> None:
    from DSSMSegmentLib.bundle import ModelBundle

    bundle = _tiny_bundle(campaign, tmp_path)
    meta = json.loads((bundle / "model.json").read_text())

    def reason(default: int, measured: dict, choice: dict = None) -> str:
        evaluations = {f"val@K={k}": {"data": "prostate158", "summary": {"transition zone": {"dice": {"mean": v}}}}
                       for k, v in measured.items()}
        extra = {"default_steps_choice": choice} if choice else {}
        (bundle / "model.json").write_text(json.dumps({**meta, "default_steps": default, **extra,
                                                       "metrics": {"evaluations": evaluations}}))
        return ModelBundle(bundle).default_steps_reason()

    assert reason(4, {0: 0.80, 1: 0.81}) == ("set at training; not measured at this K on the validation cases "
                                             "(mean validation Dice K = 0 0.800, K = 1 0.810)")
    assert reason(1, {0: 0.80, 1: 0.81}) == "the most accurate K measured; mean validation Dice K = 0 0.800, K = 1 0.810"
    assert reason(0, {0: 0.80, 1: 0.81}).startswith("set at training, not chosen on validation cases (K = 1 scored")
    assert reason(0, {0: 0.80}) == "set at training; no validation Dice recorded at another K"
    choice = {"steps": 1, "rule": "RULE", "mean_dice": {"0": 0.8, "1": 0.81}}
    assert reason(1, {0: 0.80, 1: 0.81}, choice) == "RULE; mean validation Dice K = 0 0.800, K = 1 0.810"
    # a default changed by hand after the choice: the recorded rule no longer explains it
    assert not reason(0, {0: 0.80, 1: 0.81}, choice).startswith("RULE")


def test_every_line_of_the_campaign_queue_is_a_dssm_train_command_on_earlier_bundles() -> None:
    """The real queue: each line's ARGS parse as dssm train's, and each {runs}/RUN/bundle/NAME it starts from is
    the bundle an earlier line RUN writes (its --name, or the recipe's name, with -baseline for a baseline)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import campaign as queue_module
    from DSSMSegmentLib import cli

    parser = cli.build_parser()
    written = {}
    for entry in queue_module.read_queue(ROOT / "scripts" / "campaign_queue.txt"):
        args = parser.parse_args(["train", *entry["args"], "--out", "x"])
        assert args.iterations > 0 and args.minutes == 0, entry["name"]  # budgets in iterations
        assert "--device" not in entry["args"] and "--out" not in entry["args"], entry["name"]  # the campaign's own
        for source in (args.init, args.init_semantic):
            if source and source.startswith("{runs}/"):
                run, _, name = source[len("{runs}/"):].partition("/bundle/")
                assert written.get(run) == name, f"{entry['name']} starts from {source}, which no earlier line writes"
        get_recipe(args.recipe)
        written[entry["name"]] = args.name or (args.recipe + ("-baseline" if args.baseline else ""))
        if entry["evaluate"]:
            assert datasets.spec_datasets(entry["evaluate"]) <= set(datasets.LAYOUTS)


def _states(pid: int) -> set:
    """The states (R, S, T, ...) of ``pid`` and of every process in its group."""
    states = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # the process group
            states.add(fields[0])
    return states


def test_the_campaign_starts_in_the_background_once_pauses_resumes_and_stops(prostate_cache, tmp_path) -> None:
    import time

    _need(PROSTATE)
    queue, runs = tmp_path / "queue.txt", tmp_path / "runs"
    queue.write_text(f"long | | | {TINY} --iterations 100000 --cache {prostate_cache}\n")
    started = _campaign("start", queue, runs)
    assert started.returncode == 0 and "campaign started" in started.stdout, describe(started)
    pid = int((runs / "worker.pid").read_text())
    try:
        assert "already running" in _campaign("start", queue, runs).stdout  # one worker at a time
        deadline = time.time() + 120
        while not (runs / "long" / "train.log").exists() or len(_states(pid)) == 0:
            assert time.time() < deadline, "the worker did not start training"
            time.sleep(0.5)
        time.sleep(2)
        assert _campaign("pause", queue, runs).returncode == 0
        time.sleep(0.5)
        assert _states(pid) == {"T"}  # the worker and its dssm train, all stopped
        assert "campaign: paused" in _campaign("status", queue, runs).stdout
        assert _campaign("pause", queue, runs).returncode == 1  # already paused: scripts/test.sh leaves it so
        assert _campaign("resume", queue, runs).returncode == 0
        time.sleep(0.5)
        assert "T" not in _states(pid)
        assert "campaign: running" in _campaign("status", queue, runs).stdout
    finally:
        stopped = _campaign("stop", queue, runs)
    deadline = time.time() + 30
    while _states(pid) - {"Z"} and time.time() < deadline:
        time.sleep(0.2)
    assert not _states(pid) - {"Z"}, "the campaign did not stop"
    assert "campaign stopped" in stopped.stdout
    assert "campaign: not running" in _campaign("status", queue, runs).stdout


def test_evaluate_split_all_says_whether_the_cases_were_trained_on(tmp_path) -> None:
    """Scoring the bundled heart model on M&Ms-1 Philips, which it never saw, must not call them training cases;
    on ACDC's training split it must, with how many."""
    _need(MNMS)
    unseen = run_dssm(["evaluate", "mnms1", "--model", "heart-cine-mri-baseline", "--split", "all", "--limit", "1",
                       "--device", "cpu"], cwd=tmp_path)
    assert unseen.returncode == 0, describe(unseen)
    assert "none of the 1 case(s) is in heart-cine-mri-baseline's training split" in unseen.stdout
    assert "was trained on" not in unseen.stdout
    seen = run_dssm(["evaluate", "acdc", "--model", "heart-cine-mri-baseline", "--split", "train", "--limit", "1",
                     "--device", "cpu"], cwd=tmp_path)
    assert seen.returncode == 0, describe(seen)
    assert "include cases heart-cine-mri-baseline was trained on (1 of 1)" in seen.stdout


def test_a_cache_of_other_data_than_the_run_needs_is_refused_or_built_again(prostate_cache, tmp_path) -> None:
    """A recipe whose data changed (the heart gained M&Ms-1) must not train on its earlier cache without a word."""
    import shutil

    _need(PROSTATE)
    proc = run_dssm(["train", *TINY.split(), "--iterations", "1", "--data", "prostate158+mnms1",
                     "--cache", prostate_cache, "--out", "run"], cwd=tmp_path)
    assert proc.returncode != 0 and "holds prostate158, but this run trains on prostate158+mnms1" in proc.stderr, \
        describe(proc)
    assert not (tmp_path / "run" / "bundle").exists()
    (tmp_path / "cache").mkdir()
    shutil.copy(prostate_cache, tmp_path / "cache" / "prostate-t2-mri.npz")  # the recipe's own cache, as if stale
    proc = run_dssm(["train", *TINY.split(), "--iterations", "1", "--data", "prostate158=" + str(PROSTATE),
                     "--out", "run"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)  # the same dataset under NAME=FOLDER: the cache is right
    assert "building it again" not in proc.stdout


def test_time_spent_paused_is_not_counted_as_training_time(prostate_cache, tmp_path) -> None:
    import signal
    import time

    _need(PROSTATE)
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("dssm")), "train", *TINY.split(), "--iterations", "30",
               "--val-every", "1", "--device", "cpu", "--cache", str(prostate_cache), "--out", "run"]
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while "it=2," not in log.read_text(errors="replace"):  # training, past its first iterations
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.05)
        started = time.time()
        proc.send_signal(signal.SIGSTOP)
        time.sleep(8)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=300) == 0, log.read_text()
    training_wall = time.time() - started
    minutes = float((tmp_path / "run" / "log.csv").read_text().splitlines()[-1].split(",")[1])
    assert minutes * 60 < training_wall - 8 + 2, (minutes * 60, training_wall)  # the 8 s stopped are not in it
