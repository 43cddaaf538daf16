"""A tiny real training run: ``dssm train`` on the shared Prostate158 data -> cache, log, curves, bundle ->
``dssm segment`` with that bundle; resuming from the checkpoint; and the discriminative baseline."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from safetensors import safe_open

from conftest import (CXR, MODELS, PROSTATE, _need, assert_one_error_line, crop_slices, describe, run_dssm,
                      same_grid, subprocess_env)
from DSSMSegmentLib import cli
from DSSMSegmentLib.bundle import ModelBundle
from DSSMSegmentLib.datasets import load_cache
from DSSMSegmentLib.imageio import read_image
from DSSMSegmentLib.inference import Segmenter
from DSSMSegmentLib.networks import build_model, load_semantic_state, semantic_state
from DSSMSegmentLib.plan import ArchitectureConfig
from DSSMSegmentLib.recipes import get_recipe
from DSSMSegmentLib.training import TrainConfig, training_split

TINY = ["--recipe", "prostate-t2-mri", "--widths", "8,16,32,64", "--batch-size", "2", "--device", "cpu"]
LABEL_NAMES = ["transition zone", "peripheral zone"]


def read_log(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dssm_run(tmp_path_factory):
    """4 iterations of DSSM, validating at iterations 2 and 4; the cache is built by the command itself."""
    _need(PROSTATE)
    work = tmp_path_factory.mktemp("train")
    proc = run_dssm(["train", *TINY, "--iterations", "4", "--val-every", "0.5", "--out", "run",
                     "--cache", "run/cache.npz"], cwd=work)
    assert proc.returncode == 0, describe(proc)
    assert "model bundle written" in proc.stdout, describe(proc)
    return work / "run"


def test_cache_is_built_from_the_shared_prostate_data(dssm_run) -> None:
    cache = dssm_run / "cache.npz"
    assert cache.is_file() and cache.stat().st_size < 64 * 2**20
    data = load_cache(cache)
    cases = sorted(p.name for p in PROSTATE.iterdir() if (p / "t2_anatomy_reader1.nii.gz").is_file())
    assert sorted(set(data.patients.tolist())) == [f"prostate158:{c}" for c in cases]
    n_slices = sum(sitk.ReadImage(str(PROSTATE / c / "t2.nii.gz")).GetSize()[2] for c in cases)
    assert len(data.images) == len(data.labels) == n_slices  # one cached slice per axial slice (3 mm axis)
    assert data.images.shape[1:] == (1, 192, 192) and data.labels.shape[1:] == (192, 192)
    assert set(np.unique(data.labels).tolist()) == {0, 1, 2}
    images = data.images.astype(np.float32)
    assert np.isfinite(images).all() and float(images.std()) > 0.5  # z-scored


def test_log_csv_and_curves_png(dssm_run) -> None:
    rows = read_log(dssm_run)
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    for r in rows:
        assert math.isfinite(float(r["loss"])) and float(r["loss"]) > 0
        for name in LABEL_NAMES:
            assert 0.0 <= float(r[f"val_dice_{name}"]) <= 1.0
        assert float(r["val_mean_dice"]) == pytest.approx(np.mean([float(r[f"val_dice_{n}"]) for n in LABEL_NAMES]),
                                                         abs=1e-3)
    with Image.open(dssm_run / "curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 300 and png.size[1] > 200
    assert (dssm_run / "checkpoint.pt").is_file()


def test_bundle_has_fp16_weights_and_a_complete_model_json(dssm_run) -> None:
    folder = dssm_run / "bundle" / "prostate-t2-mri"
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert meta["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes <= {"F16", "I64"} and "F16" in dtypes
    assert meta["architecture"]["kind"] == "dssm" and meta["architecture"]["widths"] == [8, 16, 32, 64]
    assert meta["architecture"]["num_classes"] == 3 and meta["default_steps"] == 4
    assert meta["labels"] == get_recipe("prostate-t2-mri")["labels"]
    training = meta["training"]
    assert training["iterations"] == 4 and training["batch_size"] == 2 and training["processes"] == 1
    assert training["likelihood_loss_weight"] == 0.0 and training["semantic_init_from"] is None
    split = training["split"]
    assert split["val"] and not set(split["val"]) & set(split["train"])
    assert len(split["train"]) + len(split["val"]) == 4  # split by patient
    assert meta["preprocessing"]["spacing_mm"] == [0.6, 0.6]


def test_segment_with_the_trained_bundle(dssm_run, tmp_path) -> None:
    """The fresh bundle loads in a new process and gives a label image on the (oblique) input grid."""
    bundle = dssm_run / "bundle" / "prostate-t2-mri"
    meta = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    # case 001 has a real oblique direction (tilted axial T2); 8 slices around the gland to save CPU time
    case = "001"
    source = tmp_path / f"prostate{case}.nii.gz"
    sitk.WriteImage(crop_slices(read_image(PROSTATE / case / "t2.nii.gz"), 8, 16), str(source))
    proc = run_dssm(["segment", "--model", bundle, "-o", tmp_path / "out", source], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    image, mask = sitk.ReadImage(str(source)), sitk.ReadImage(str(tmp_path / "out" / source.name))
    assert not np.allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=0.05)  # oblique
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert same_grid(mask, image)
    values = set(np.unique(sitk.GetArrayFromImage(mask)).tolist())
    assert values <= {0} | {lab["value"] for lab in meta["labels"]}, values


def test_resume_continues_from_the_checkpoint(dssm_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(dssm_run, run, ignore=shutil.ignore_patterns("bundle"))
    before = read_log(run)
    proc = run_dssm(["train", *TINY, "--iterations", "6", "--val-every", "0.5", "--out", run,
                     "--cache", run / "cache.npz"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "resuming" in proc.stdout and "at iteration 4" in proc.stdout, describe(proc)
    rows = read_log(run)
    assert rows[: len(before)] == before, "the earlier log must be kept"
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6], "the iteration count must continue from 4"
    meta = json.loads((run / "bundle" / "prostate-t2-mri" / "model.json").read_text(encoding="utf-8"))
    assert meta["training"]["iterations"] == 6
    # the weights went on training from the checkpoint (not from scratch, not unchanged)
    first = ModelBundle(dssm_run / "bundle" / "prostate-t2-mri").load_network(torch.device("cpu")).state_dict()
    resumed = ModelBundle(run / "bundle" / "prostate-t2-mri").load_network(torch.device("cpu")).state_dict()
    assert any(not torch.equal(first[k], resumed[k]) for k in first if first[k].is_floating_point())

    # Running the finished command again trains nothing more: the budget is spent.
    again = run_dssm(["train", *TINY, "--iterations", "6", "--val-every", "0.5", "--out", run,
                      "--cache", run / "cache.npz"], cwd=tmp_path)
    assert again.returncode == 0, describe(again)
    assert [int(r["iteration"]) for r in read_log(run)] == [2, 4, 6]
    meta = json.loads((run / "bundle" / "prostate-t2-mri" / "model.json").read_text(encoding="utf-8"))
    assert meta["training"]["iterations"] == 6


def test_a_run_stopped_at_every_iteration_ends_exactly_as_an_uninterrupted_one(dssm_run, tmp_path) -> None:
    """--stop-after stops a call (checkpointed, with its random generators) and the same command resumes it: the
    learning-rate schedule, the batches and the augmentations go on as if there had been no stop, so the final
    weights are bit for bit those of the run that never stopped. The log records the training speed."""
    cache = dssm_run / "cache.npz"
    whole = run_dssm(["train", *TINY, "--iterations", "3", "--val-every", "0.5", "--out", tmp_path / "whole",
                      "--cache", cache], cwd=tmp_path)
    assert whole.returncode == 0, describe(whole)
    calls = 0
    while not (tmp_path / "stopped" / "bundle").exists():
        calls += 1
        assert calls <= 4, "the run does not finish"
        proc = run_dssm(["train", *TINY, "--iterations", "3", "--val-every", "0.5", "--stop-after", "0.00001",
                         "--out", tmp_path / "stopped", "--cache", cache], cwd=tmp_path)
        assert proc.returncode == 0, describe(proc)
        if calls < 3:
            assert f"at iteration {calls} " in proc.stdout and "run the same command again" in proc.stdout, proc.stdout
    assert calls == 3
    a = ModelBundle(tmp_path / "whole" / "bundle" / "prostate-t2-mri").load_network(torch.device("cpu")).state_dict()
    b = ModelBundle(tmp_path / "stopped" / "bundle" / "prostate-t2-mri").load_network(torch.device("cpu")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    rows = read_log(tmp_path / "stopped")
    assert [int(r["iteration"]) for r in rows] == [2, 3]
    assert all(float(r["samples_per_second"]) > 0 for r in rows)
    meta = json.loads((tmp_path / "stopped" / "bundle" / "prostate-t2-mri" / "model.json").read_text(encoding="utf-8"))
    assert meta["training"]["iterations"] == 3 and meta["training"]["samples_per_second"] > 0


def test_discriminative_baseline_tiny_run(dssm_run, tmp_path) -> None:
    proc = run_dssm(["train", *TINY, "--baseline", "--iterations", "2", "--val-every", "1", "--out", "base",
                     "--cache", dssm_run / "cache.npz"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    folder = tmp_path / "base" / "bundle" / "prostate-t2-mri-baseline"
    bundle = ModelBundle(folder)
    assert bundle.architecture.kind == "baseline" and bundle.default_steps == 0
    assert bundle.meta["training"]["iterations"] == 2
    assert bundle.meta["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    network = bundle.load_network(torch.device("cpu"))
    keys = network.state_dict().keys()
    assert any(k.startswith("semantic.") for k in keys)
    assert not any(k.startswith(("denoiser.", "autoencoder.", "bayes.", "ffm.")) for k in keys), "no generative part"
    case = bundle.meta["training"]["split"]["val"][0].split(":")[1]
    image = crop_slices(read_image(PROSTATE / case / "t2.nii.gz"), 8, 11)
    labels = Segmenter(bundle, device="cpu").segment(image)
    assert same_grid(labels, image)
    assert set(np.unique(sitk.GetArrayFromImage(labels)).tolist()) <= {0, 1, 2}


def test_compiled_training_computes_what_eager_training_does(dssm_run, tmp_path) -> None:
    """--compile (torch.compile of the training step) trains the same network as without it: two baseline
    iterations (the baseline's step draws no random numbers) give the same loss and nearly the same weights, and
    model.json records which ran. Both run channels-last, which dssm train now uses on every device."""
    cache = dssm_run / "cache.npz"
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}  # compiled here, not taken from a cache
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        proc = run_dssm(["train", *TINY, "--baseline", "--iterations", "2", "--val-every", "1", "--out", name,
                         "--cache", cache, *extra], cwd=tmp_path, env=env)
        assert proc.returncode == 0, describe(proc)
        assert "--compile failed" not in proc.stdout + proc.stderr, describe(proc)
    eager, compiled = (float(read_log(tmp_path / name)[-1]["loss"]) for name in ("eager", "compiled"))
    assert math.isfinite(eager) and abs(compiled - eager) <= 1e-3 * abs(eager), (eager, compiled)
    bundles = {name: ModelBundle(tmp_path / name / "bundle" / "prostate-t2-mri-baseline") for name in ("eager", "compiled")}
    assert bundles["eager"].meta["training"]["compiled"] is False
    assert bundles["compiled"].meta["training"]["compiled"] is True
    a, b = (bundles[name].load_network(torch.device("cpu")).state_dict() for name in ("eager", "compiled"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-2, worst  # fp16 weights after two AdamW steps of lr 2e-3 from the same start


def test_compile_without_a_cpp_compiler_trains_on_uncompiled_with_a_note(dssm_run, tmp_path) -> None:
    """A machine without a C++ compiler (here: CXX names none) cannot compile: the run says so in one line and
    finishes uncompiled, instead of stopping with torch's traceback."""
    proc = run_dssm(["train", *TINY, "--baseline", "--iterations", "2", "--val-every", "1", "--out", "run",
                     "--cache", dssm_run / "cache.npz", "--compile"], cwd=tmp_path,
                    env={"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, describe(proc)
    notes = [line for line in proc.stdout.splitlines() if "--compile failed" in line]
    assert len(notes) == 1 and notes[0].startswith("dssm: note: ") and "training without it" in notes[0], describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    bundle = ModelBundle(tmp_path / "run" / "bundle" / "prostate-t2-mri-baseline")
    assert bundle.meta["training"]["compiled"] is False and bundle.meta["training"]["iterations"] == 2


def test_a_webp_cache_holds_the_same_slices_as_the_jpeg_one_in_a_third_of_the_space(dssm_run, tmp_path) -> None:
    """The compact cache that carries training data to a GPU host (scripts/gpu_train.sh caches): lossy, but its
    slices differ from the JPEG cache's by about the training augmentation's noise, and the labels are exact."""
    proc = run_dssm(["cache", "--recipe", "prostate-t2-mri", "--encoding", "webp", "--out", "webp.npz"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    jpeg, webp = load_cache(dssm_run / "cache.npz"), load_cache(tmp_path / "webp.npz")
    assert webp.images.shape == jpeg.images.shape and webp.images.shape[1] == 1  # grey, though WebP decodes as RGB
    assert np.array_equal(webp.labels, jpeg.labels) and np.array_equal(webp.case_ids, jpeg.case_ids)
    difference = np.abs(webp.images.astype(np.float32) - jpeg.images.astype(np.float32))
    assert 0 < float(difference.mean()) < 0.1, float(difference.mean())  # z units; augmentation's noise sd is up to 0.1
    assert (tmp_path / "webp.npz").stat().st_size < 0.6 * (dssm_run / "cache.npz").stat().st_size
    # an earlier cache is replaced (built beside it, then moved in place)
    proc = run_dssm(["cache", "--recipe", "prostate-t2-mri", "--encoding", "webp:30", "--out", "webp.npz"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert float(np.abs(load_cache(tmp_path / "webp.npz").images.astype(np.float32) - webp.images).mean()) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webp.npz"]


def test_training_from_a_cache_needs_neither_simpleitk_nor_medpy(dssm_run, tmp_path) -> None:
    """The lent GPU host has PyTorch but neither SimpleITK nor medpy (and nothing can be installed from the net
    there): training from a carried cache must not import them."""
    blocked = tmp_path / "blocked"
    (blocked / "medpy").mkdir(parents=True)
    for module in (blocked / "SimpleITK.py", blocked / "medpy" / "__init__.py"):
        module.write_text("raise ImportError('not installed on the GPU host')\n")
    env = {"PYTHONPATH": subprocess_env()["PYTHONPATH"] + os.pathsep + str(blocked)}
    proc = run_dssm(["train", *TINY, "--baseline", "--iterations", "1", "--val-every", "1", "--out", "run",
                     "--cache", dssm_run / "cache.npz"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, describe(proc)
    assert (tmp_path / "run" / "bundle" / "prostate-t2-mri-baseline" / "model.safetensors").is_file()
    for module in ("SimpleITK", "medpy.metric"):  # the block holds: neither can be imported in that environment
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env={**subprocess_env(), **env},
                               capture_output=True, text=True, encoding="utf-8", errors="replace")
        assert probe.returncode != 0 and "not installed on the GPU host" in probe.stderr, probe.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "tpu"])
def test_train_on_an_unavailable_device_is_an_error(device, tmp_path, capfd) -> None:
    code = cli.main(["train", "--recipe", "prostate-t2-mri", "--iterations", "1", "--device", device,
                     "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache.npz")])
    err = capfd.readouterr().err
    if device.startswith("cuda"):
        assert "no CUDA GPU" in assert_one_error_line(code, err)
    else:  # refused by the argument check itself, before anything is imported
        assert code == 2 and "argument --device: 'tpu' is not a device" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache.npz").exists()


def _a_seed_with_another_split(patients, groups, recipe, tmp_path) -> int:
    """A split seed whose stratified split differs from seed 0's, so that a test of split-keeping can fail."""
    def split(seed):
        return training_split(TrainConfig(recipe="prostate-t2-mri", out=tmp_path, split_seed=seed), recipe,
                              patients, groups)[0]
    return next(s for s in range(1, 100) if split(s) != split(0))


def test_fine_tune_keeps_the_source_split_whatever_the_seed(dssm_run, tmp_path) -> None:
    """``--init`` trains on the source bundle's training cases only, even with another ``--seed`` (which once
    re-drew the split and put the source's validation cases into training), and records the whole history."""
    data = load_cache(dssm_run / "cache.npz")
    patients = sorted(set(data.patients.tolist()))
    groups = dict(zip(data.patients.tolist(), data.groups.tolist()))
    recipe = get_recipe("prostate-t2-mri")
    seed = _a_seed_with_another_split(patients, groups, recipe, tmp_path)
    source = dssm_run / "bundle" / "prostate-t2-mri"
    source_training = json.loads((source / "model.json").read_text(encoding="utf-8"))["training"]

    proc = run_dssm(["train", *TINY, "--init", source, "--seed", seed, "--split-seed", seed, "--iterations", "2",
                     "--val-every", "1", "--out", "tuned", "--cache", dssm_run / "cache.npz"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    training = json.loads((tmp_path / "tuned" / "bundle" / "prostate-t2-mri" / "model.json").read_text(encoding="utf-8"))["training"]
    assert training["split"] == source_training["split"]
    assert training["split_seed"] == source_training["split_seed"] == 0 and training["seed"] == seed
    assert training["warm_start_from"] == str(source)
    assert [s["iterations"] for s in training["earlier_stages"]] == [4] and "split" not in training["earlier_stages"][0]

    # without --init, --seed seeds the weights and augmentation only; --split-seed draws the split
    plain = training_split(TrainConfig(recipe="prostate-t2-mri", out=tmp_path, seed=seed), recipe, patients, groups)
    assert plain == (source_training["split"], 0)
    other, split_seed = training_split(TrainConfig(recipe="prostate-t2-mri", out=tmp_path, split_seed=seed), recipe,
                                       patients, groups)
    assert split_seed == seed and other != source_training["split"]
    assert sorted(other["train"] + other["val"]) == patients and not set(other["train"]) & set(other["val"])


def test_semantic_weights_move_between_a_baseline_and_dssm() -> None:
    """The part DSSM and its baseline share: a DSSM given the baseline's semantic module and classifier makes
    exactly the baseline's first prediction, and keeps its own generative part."""
    from DSSMSegmentLib.networks import ArchitectureConfig, build_model, load_semantic_state, semantic_state

    torch.manual_seed(0)
    small = dict(in_channels=1, num_classes=3, widths=(8, 16, 32, 64))
    baseline = build_model(ArchitectureConfig(kind="baseline", **small)).eval()
    dssm = build_model(ArchitectureConfig(kind="dssm", **small)).eval()
    generative = {k: v.clone() for k, v in dssm.state_dict().items() if not k.startswith(("semantic.", "first_head."))}
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(dssm.first_head(torch.nn.functional.leaky_relu(dssm.semantic(x)[0], 0.01)),
                                  baseline(x))
        load_semantic_state(dssm, semantic_state(baseline))
        first = dssm.first_head(torch.nn.functional.leaky_relu(dssm.semantic(x)[0], 0.01))
        torch.testing.assert_close(first, baseline(x), rtol=0, atol=0)
    assert all(torch.equal(v, dssm.state_dict()[k]) for k, v in generative.items())
    other = build_model(ArchitectureConfig(kind="baseline", in_channels=1, num_classes=3, widths=(16, 32, 64, 128)))
    with pytest.raises(ValueError, match="do not fit"):
        load_semantic_state(other, semantic_state(dssm))


def test_dssm_starts_from_the_baseline_semantic_module(dssm_run, tmp_path) -> None:
    """``--init-semantic BASELINE``: at learning rate 0 the DSSM bundle's semantic convolutions are the
    baseline's, the record names the source; a run on a baseline trained on another split keeps that split
    (whatever ``--split-seed`` says), and naming one of its training cases for validation is refused in one line."""
    cache = dssm_run / "cache.npz"
    proc = run_dssm(["train", *TINY, "--baseline", "--iterations", "2", "--val-every", "1", "--out", "base",
                     "--cache", cache], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    donor = tmp_path / "base" / "bundle" / "prostate-t2-mri-baseline"
    proc = run_dssm(["train", *TINY, "--init-semantic", donor, "--lr", "0", "--iterations", "2", "--val-every", "1",
                     "--out", "dssm", "--cache", cache], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    bundle = ModelBundle(tmp_path / "dssm" / "bundle" / "prostate-t2-mri")
    trained = bundle.load_network(torch.device("cpu")).state_dict()
    baseline = ModelBundle(donor).load_network(torch.device("cpu")).state_dict()
    convs = [k for k in baseline if k.startswith("semantic.") and k.endswith("weight") and baseline[k].dim() == 4]
    assert convs and all(torch.equal(trained[k], baseline[k]) for k in convs)
    assert torch.equal(trained["first_head.weight"], baseline["head.weight"])
    training = bundle.meta["training"]
    assert training["semantic_init_from"] == str(donor)
    assert [s["iterations"] for s in training["semantic_stages"]] == [2] and training["warm_start_from"] is None

    data = load_cache(cache)
    patients = sorted(set(data.patients.tolist()))
    seed = _a_seed_with_another_split(patients, dict(zip(data.patients.tolist(), data.groups.tolist())),
                                      get_recipe("prostate-t2-mri"), tmp_path)
    proc = run_dssm(["train", *TINY, "--baseline", "--split-seed", seed, "--iterations", "1", "--out", "other",
                     "--cache", cache], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    other = tmp_path / "other" / "bundle" / "prostate-t2-mri-baseline"
    proc = run_dssm(["train", *TINY, "--init-semantic", other, "--iterations", "1", "--out", "kept", "--cache", cache],
                    cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    other_split = ModelBundle(other).meta["training"]["split"]
    assert other_split != bundle.meta["training"]["split"]
    assert ModelBundle(tmp_path / "kept" / "bundle" / "prostate-t2-mri").meta["training"]["split"] == other_split
    proc = run_dssm(["train", *TINY, "--init-semantic", other, "--val-patients", other_split["train"][0], "--iterations",
                     "1", "--out", "leaky", "--cache", cache], cwd=tmp_path)
    assert proc.returncode != 0 and "validation cases" in proc.stderr, describe(proc)
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "leaky" / "bundle").exists()


def test_likelihood_loss_adds_the_bayesian_head_alone_to_the_loss() -> None:
    """``--likelihood-loss W`` adds W x (CE + Dice) of the Bayesian head's likelihood without its prior; the final
    posterior is still that likelihood plus the decoded prior."""
    import torch.nn.functional as F

    from DSSMSegmentLib.networks import ArchitectureConfig, build_model
    from DSSMSegmentLib.training import TrainStep, dice_ce_loss

    torch.manual_seed(0)
    network = build_model(ArchitectureConfig(kind="dssm", in_channels=1, num_classes=3, widths=(8, 16, 32, 64)))
    x, target = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))

    def with_seed(fn):
        torch.manual_seed(1)  # training_forward draws t, the noise and the ground-truth/prediction choice
        return fn()

    plain = with_seed(lambda: TrainStep(network)(x, target))
    weighted = with_seed(lambda: TrainStep(network, 0.7)(x, target))
    o = with_seed(lambda: network.training_forward(x, F.one_hot(target, 3).permute(0, 3, 1, 2).float()))
    torch.testing.assert_close(weighted, plain + 0.7 * dice_ce_loss(o.likelihood, target))
    torch.testing.assert_close(o.final - o.likelihood, torch.log_softmax(o.decoded, dim=1))


def test_two_stage_dssm_at_k0_is_its_baseline_and_starts_as_it_at_any_k() -> None:
    """Two-stage DSSM (``refiner: residual``) on a real trained baseline: K = 0 gives the baseline's logits
    exactly, and so does an untrained generative half at K = 4 (its correction starts at zero), so whatever the
    chain adds after training is measured against the baseline itself."""
    baseline = ModelBundle(MODELS.parent.parent.parent / "Baselines" / "lungs-cxr-baseline")
    plain = baseline.load_network(torch.device("cpu"))
    arch = ArchitectureConfig.from_dict(dict(baseline.architecture.to_dict(), kind="dssm", refiner="residual"))
    two_stage = build_model(arch)
    load_semantic_state(two_stage, semantic_state(plain))
    two_stage.eval()
    x = torch.from_numpy(np.array(Image.open(CXR / "images" / "MCUCXR_0006_0.png").convert("F"))[None, None])
    x = (x - x.mean()) / x.std()
    with torch.inference_mode():
        expected = plain(x)
        assert torch.equal(two_stage(x, steps=0), expected)
        assert torch.equal(two_stage(x, steps=4, generator=[torch.Generator().manual_seed(0)]), expected)
    with torch.no_grad():  # a trained correction moves the output, and only for K > 0
        two_stage.residual.out.bias.copy_(torch.tensor([0.0, 1.0]))
        assert torch.equal(two_stage(x, steps=0), expected)
        assert torch.allclose(two_stage(x, steps=2, generator=[torch.Generator().manual_seed(0)]),
                              expected + torch.tensor([0.0, 1.0])[:, None, None], atol=1e-5)


def test_two_stage_inference_computes_what_the_training_pieces_compute() -> None:
    """The inference path of a two-stage DSSM (the residual head's input layer split by input, its label part run
    at quarter resolution, chunked; ``DSSM._fused_correction``) gives the logits of the reference composition
    that training differentiates (``_forward_reference``: ``denoise``, ``label_features``, ``correction``), for a
    generative half with non-zero weights."""
    baseline = ModelBundle(MODELS.parent.parent.parent / "Baselines" / "lungs-cxr-baseline")
    arch = ArchitectureConfig.from_dict(dict(baseline.architecture.to_dict(), kind="dssm", refiner="residual"))
    net = build_model(arch)
    load_semantic_state(net, semantic_state(baseline.load_network(torch.device("cpu"))))
    torch.manual_seed(0)
    with torch.no_grad():
        for module in (net.residual, net.label_features):
            for p in module.parameters():
                p.normal_(0, 0.3)
    net.eval()
    x = torch.from_numpy(np.array(Image.open(CXR / "images" / "MCUCXR_0006_0.png").convert("F"))[None, None])
    x = torch.cat([x, x.flip(-1)])
    x = (x - x.mean()) / x.std()
    with torch.no_grad():
        reference = net._forward_reference(x, 2, [torch.Generator().manual_seed(i) for i in range(2)])
        fast = net(x, steps=2, generator=[torch.Generator().manual_seed(i) for i in range(2)])
        first = net(x, steps=0)
    assert float((reference - first).abs().max()) > 0.5  # the correction is not negligible here
    assert float((fast - reference).abs().max()) < 1e-3
    assert float((fast.argmax(1) == reference.argmax(1)).float().mean()) > 0.9999
    # under bfloat16 autocast (how dssm segment and training's validation run on a GPU) it runs, in float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, steps=2, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert low.dtype == torch.float32
    assert float((low.argmax(1) == reference.argmax(1)).float().mean()) > 0.99


def test_two_stage_training_keeps_the_first_stage_frozen(dssm_run, tmp_path) -> None:
    """``dssm train --refiner residual --init-semantic BASELINE``: the semantic module and its head stay the
    baseline's to the bit (BatchNorm statistics too) while the generative half and the residual head learn; without a
    baseline the command is refused in one line."""
    cache = dssm_run / "cache.npz"
    proc = run_dssm(["train", *TINY, "--baseline", "--iterations", "2", "--val-every", "1", "--out", "base",
                     "--cache", cache], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    donor = tmp_path / "base" / "bundle" / "prostate-t2-mri-baseline"
    proc = run_dssm(["train", *TINY, "--refiner", "residual", "--init-semantic", donor, "--iterations", "3",
                     "--stage1-dropout", "0.3", "--val-every", "1", "--out", "stage2", "--cache", cache], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    bundle = ModelBundle(tmp_path / "stage2" / "bundle" / "prostate-t2-mri")
    assert bundle.architecture.refiner == "residual" and bundle.meta["training"]["stage1_dropout"] == 0.3
    # stage 2 keeps its baseline's split; naming a case the baseline trained on for validation is refused
    donor_split = ModelBundle(donor).meta["training"]["split"]
    assert bundle.meta["training"]["split"] == donor_split and donor_split["val"]
    proc = run_dssm(["train", *TINY, "--refiner", "residual", "--init-semantic", donor, "--iterations", "1",
                     "--val-patients", donor_split["train"][0].split(":")[1], "--out", "leak", "--cache", cache],
                    cwd=tmp_path)
    assert "use a bundle with the same split" in assert_one_error_line(proc.returncode, proc.stderr)
    trained = bundle.load_network(torch.device("cpu")).state_dict()
    baseline = ModelBundle(donor).load_network(torch.device("cpu")).state_dict()
    first_stage = [k for k in baseline if k.startswith("semantic.")]
    assert first_stage and all(torch.equal(trained[k], baseline[k]) for k in first_stage)
    assert torch.equal(trained["first_head.weight"], baseline["head.weight"])
    assert trained["residual.out.weight"].abs().sum() > 0, "the residual head did not learn"
    proc = run_dssm(["train", *TINY, "--refiner", "residual", "--iterations", "1", "--out", "alone", "--cache", cache],
                    cwd=tmp_path)
    assert "--init-semantic BASELINE_BUNDLE" in assert_one_error_line(proc.returncode, proc.stderr)
    proc = run_dssm(["train", *TINY, "--stage1-dropout", "0.3", "--iterations", "1", "--out", "e2e", "--cache", cache],
                    cwd=tmp_path)
    assert "two-stage DSSM (--refiner residual) only" in assert_one_error_line(proc.returncode, proc.stderr)


def test_stage1_dropout_outside_0_to_1_is_refused_by_the_command_line(tmp_path) -> None:
    proc = run_dssm(["train", *TINY, "--refiner", "residual", "--stage1-dropout", "1.5", "--iterations", "1",
                     "--out", "run"], cwd=tmp_path)
    assert proc.returncode == 2 and "argument --stage1-dropout: must be at least 0 and below 1, got 1.5" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_stage1_dropout_makes_first_stage_mistakes_in_training_only() -> None:
    """``--stage1-dropout P``: in a two-stage training pass, half of the batch goes through the frozen baseline with
    whole decoder channels dropped, and its first prediction on a real X-ray then makes mistakes (Dice against the
    clean prediction drops); the other half, and inference at any K, see the baseline untouched."""
    _need(CXR)
    baseline = ModelBundle(MODELS.parent.parent.parent / "Baselines" / "lungs-cxr-baseline")
    plain = baseline.load_network(torch.device("cpu"))
    arch = ArchitectureConfig.from_dict(dict(baseline.architecture.to_dict(), kind="dssm", refiner="residual"))
    two_stage = build_model(arch)
    load_semantic_state(two_stage, semantic_state(plain))
    image = Image.open(CXR / "images" / "MCUCXR_0006_0.png").convert("F").resize((256, 256))
    x = torch.from_numpy(np.array(image))[None, None]
    x = ((x - x.mean()) / x.std()).expand(8, -1, -1, -1).contiguous()
    onehot = torch.zeros(8, 2, 256, 256)
    onehot[:, 0] = 1
    with torch.no_grad():
        clean = plain(x).argmax(1)
        torch.manual_seed(0)
        two_stage.stage1_dropout = 0.3
        first = two_stage.training_forward(x, onehot).first.argmax(1)

    def dice(a, b):
        return float(2 * (a & b).sum() / (a.sum() + b.sum()))

    per_sample = [dice(first[i] == 1, clean[i] == 1) for i in range(8)]
    assert sum(d == 1.0 for d in per_sample) >= 1, per_sample  # the untouched half
    assert min(per_sample) < 0.99, per_sample  # and mistakes in the other
    two_stage.eval()
    with torch.inference_mode():
        assert torch.equal(two_stage(x[:1], steps=0), plain(x[:1]))
