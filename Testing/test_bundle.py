"""Model bundles: fp16 safetensors + model.json with the weights' sha256, checked on load; exact round trip."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import BUNDLED, CXR, MODELS, _need, describe, run_dssm
from DSSMSegmentLib.bundle import (META_FILE, WEIGHTS_FILE, ModelBundle, available_models, resolve_model,
                                   save_bundle)
from DSSMSegmentLib.errors import DSSMError
from DSSMSegmentLib.networks import ArchitectureConfig, build_model


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fp16_report(weights) -> dict:
    kinds = {}
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            dtype = f.get_slice(key).get_dtype()
            kinds[dtype] = kinds.get(dtype, 0) + 1
    return kinds


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_is_fp16_safetensors_with_matching_sha256(name) -> None:
    folder = MODELS / name
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["sha256"] == digest
    kinds = _fp16_report(folder / WEIGHTS_FILE)
    assert kinds.get("F16", 0) > 50, kinds
    assert set(kinds) <= {"F16", "I64"}, f"only fp16 weights and integer counters expected: {kinds}"
    # the labels are what the network predicts, and the bundle records how it was made
    bundle = ModelBundle(folder)
    assert [lab.value for lab in bundle.labels] == list(range(1, bundle.architecture.num_classes))
    assert meta["training"]["split"]["train"] and "preprocessing" in meta
    assert (folder / WEIGHTS_FILE).stat().st_size < 8 * 2**20  # small enough for the extension index


def test_resolve_by_name_and_by_path_and_list() -> None:
    by_name = resolve_model("lungs-cxr")
    by_path = resolve_model(str(MODELS / "lungs-cxr"))
    assert by_name.path == by_path.path == MODELS / "lungs-cxr"
    names = [m.name for m in available_models()]
    assert names[:5] == sorted(BUNDLED)  # bundled first
    assert "heart-cine-mri-baseline" in names


def test_local_models_are_found_by_their_listed_name_and_left_out_ones_are_named(tmp_path) -> None:
    """``dssm models`` lists model.json's name, so ``--model`` takes that name (not only the folder's) and a file
    in a bundle; a folder left out of the list (unreadable, or a name taken by an earlier bundle) is said to be."""
    _need(CXR / "images" / "MCUCXR_0006_0.png")
    local = tmp_path / "models"
    shutil.copytree(MODELS / "lungs-cxr", local / "lungs-2026-run3")
    meta = json.loads((local / "lungs-2026-run3" / META_FILE).read_text(encoding="utf-8"))
    (local / "lungs-2026-run3" / META_FILE).write_text(json.dumps(dict(meta, name="my-lungs")), encoding="utf-8")
    shutil.copytree(MODELS / "lungs-cxr", local / "lungs-copy")  # still named lungs-cxr: the bundled one wins
    (local / "broken").mkdir()
    (local / "broken" / META_FILE).write_text("{ not json", encoding="utf-8")
    (local / "no-weights").mkdir()  # a copy that stopped before its weights
    shutil.copy(MODELS / "lungs-cxr" / META_FILE, local / "no-weights" / META_FILE)
    env = {"DSSM_MODELS_PATH": str(local)}
    listed = run_dssm(["models"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, describe(listed)
    assert any(line.startswith("my-lungs  [") for line in listed.stdout.splitlines()), listed.stdout
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("dssm: warning: ") for w in warnings), listed.stderr
    assert f"{local / 'broken'} is left out: " in warnings[0]
    assert f"{local / 'lungs-copy'} is left out: its model name 'lungs-cxr' is taken by {MODELS / 'lungs-cxr'}" \
        in warnings[1]
    assert f"{local / 'no-weights'} is left out: its weights, {WEIGHTS_FILE}, are missing" in warnings[2]
    for model in ("my-lungs", "lungs-2026-run3", local / "lungs-2026-run3" / WEIGHTS_FILE):
        proc = run_dssm(["segment", "--model", model, "--steps", "0", "-o", tmp_path / "out", "--overwrite",
                         CXR / "images" / "MCUCXR_0006_0.png"], cwd=tmp_path, env=env)
        assert proc.returncode == 0 and "model my-lungs " in proc.stdout, describe(proc)


def test_save_bundle_round_trip_is_exact(tmp_path, heart_bundle, heart_segmenter) -> None:
    """A loaded fp16 model saved again and reloaded gives bit-identical tensors and outputs."""
    folder = tmp_path / "copy"
    copy = save_bundle(heart_segmenter.network, folder, heart_bundle.meta)
    assert isinstance(copy, ModelBundle) and copy.name == "heart-cine-mri"
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    assert meta["sha256"] == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["labels"] == heart_bundle.meta["labels"]
    # both files follow the user's umask (safetensors alone writes 0600: a shared models folder went unreadable)
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {oct(0o666 & ~_umask())}
    original, saved = load_file(str(MODELS / "heart-cine-mri" / WEIGHTS_FILE)), load_file(str(folder / WEIGHTS_FILE))
    assert original.keys() == saved.keys()
    assert all(torch.equal(original[k], saved[k]) and original[k].dtype == saved[k].dtype for k in original)
    reloaded = copy.load_network(torch.device("cpu"))
    x = torch.randn(2, 1, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for steps in (0, 2):
            a = heart_segmenter.network(x, steps=steps, generator=torch.Generator().manual_seed(1))
            b = reloaded(x, steps=steps, generator=torch.Generator().manual_seed(1))
            assert torch.equal(a, b), f"K={steps}: outputs differ by {float((a - b).abs().max())}"


@pytest.mark.parametrize("kind", ["dssm", "baseline"])
def test_fresh_network_round_trip_equals_fp16_rounded_original(kind, tmp_path) -> None:
    torch.manual_seed(0)
    arch = ArchitectureConfig(kind=kind, in_channels=3, num_classes=3, widths=(8, 16, 32, 64))
    net = build_model(arch)
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for name, buf in net.named_buffers():
            if "running_mean" in name:
                buf.normal_(0, 0.1)
            elif "running_var" in name:
                buf.uniform_(0.5, 1.5)
            elif "num_batches_tracked" in name:
                buf.fill_(1234)
    net.eval()
    meta = {"name": "tiny", "architecture": arch.to_dict(), "preprocessing": {"modality": "dermoscopy", "is_2d": True,
            "size": [64, 64]}, "labels": [{"value": 1, "name": "a", "color": [1, 2, 3]},
                                           {"value": 2, "name": "b", "color": [4, 5, 6]}]}
    bundle = save_bundle(net, tmp_path / "tiny", meta)
    assert _fp16_report(tmp_path / "tiny" / WEIGHTS_FILE).keys() <= {"F16", "I64"}
    loaded = bundle.load_network(torch.device("cpu"))
    assert int(loaded.state_dict()[next(k for k in loaded.state_dict() if "num_batches_tracked" in k)]) == 1234
    reference = build_model(arch)
    rounded = {k: (v.half().float() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    reference.load_state_dict(rounded)
    reference.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        a = reference(x, steps=2, generator=torch.Generator().manual_seed(3))
        b = loaded(x, steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert json.loads((tmp_path / "tiny" / META_FILE).read_text(encoding="utf-8"))["format_version"] == 1


def test_sha256_is_checked_on_load(tmp_path) -> None:
    folder = tmp_path / "lungs"
    shutil.copytree(MODELS / "lungs-cxr", folder)
    ModelBundle(folder).load_network(torch.device("cpu"))  # intact: loads
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0x40  # one bit of one weight
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(DSSMError, match="sha256"):
        ModelBundle(folder).load_network(torch.device("cpu"))


def test_mismatched_architecture_is_a_clear_error(tmp_path) -> None:
    """Valid weights with a model.json describing another network (sha256 fine) must not load silently."""
    folder = tmp_path / "lungs"
    shutil.copytree(MODELS / "lungs-cxr", folder)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    meta["architecture"]["widths"] = [8, 16, 32, 64]
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(DSSMError, match="do not fit the architecture"):
        ModelBundle(folder).load_network(torch.device("cpu"))


def test_loading_never_unpickles(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must never be used to load a bundle")

    monkeypatch.setattr(torch, "load", refuse)
    resolve_model("lungs-cxr").load_network(torch.device("cpu"))
