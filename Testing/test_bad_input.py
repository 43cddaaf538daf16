"""Bad input: each case gets one clear ``dssm: error: ...`` line, a non-zero exit, no traceback and no output
file at all (not even a partial one).

Most cases call the command's ``main`` in this process (same code as the ``dssm`` entry point, which is
``sys.exit(main())``), capturing the real file descriptors so that anything a C library prints is seen too.
A few representative cases, and the ACDC header-warning check, run the installed ``dssm`` in its own process.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from conftest import (ACDC, CXR, ISIC, MODELS, _need, assert_one_error_line, describe, files_under, run_dssm,
                      run_module)
from DSSMSegmentLib import cli
from DSSMSegmentLib.errors import DSSMError
from DSSMSegmentLib.imageio import to_channels

XRAY = CXR / "images" / "MCUCXR_0006_0.png"  # a valid grayscale image for the model-error cases
ACDC_SMALL = ACDC / "patient041" / "patient041_frame01.nii.gz"  # the smallest ACDC volume (154 x 224 x 6)


def _volume(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing((1.5, 1.5, 8.0)[: image.GetDimension()] + (1.0,) * max(0, image.GetDimension() - 3))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Bad input files, each made the way it happens in practice."""
    _need(ACDC_SMALL)
    d = tmp_path_factory.mktemp("bad-inputs")
    heart = sitk.GetArrayFromImage(sitk.ReadImage(str(ACDC_SMALL))).astype(np.float32)  # (6, 224, 154)
    files = {}
    # a cine series saved as one 4D file (x, y, z, t)
    files["4d"] = _volume(np.stack([heart, heart * 0.9]), d / "cine_4d.nii.gz")
    # not images: text with an image name, an empty (0-byte) file, a real NIfTI cut in half (a broken download)
    (d / "notes.nii.gz").write_text("patient notes, not an image\n")
    files["text"] = d / "notes.nii.gz"
    (d / "zero_bytes.nii.gz").write_bytes(b"")
    files["zero-bytes"] = d / "zero_bytes.nii.gz"
    raw = ACDC_SMALL.read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    files["truncated-gz"] = d / "truncated.nii.gz"
    plain = gzip.decompress(raw)
    (d / "truncated.nii").write_bytes(plain[: len(plain) * 2 // 3])
    files["truncated-nii"] = d / "truncated.nii"
    # empty images: a NIfTI header announcing a zero-sized axis, and an NRRD with a zero size
    header = bytearray(plain[:352])
    struct.pack_into("<h", header, 42, 0)  # dim[1] = 0
    (d / "empty.nii").write_bytes(bytes(header))
    files["empty-nii"] = d / "empty.nii"
    (d / "empty.nrrd").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 0 64 64\nencoding: raw\n\n")
    files["empty-nrrd"] = d / "empty.nrrd"
    # constant images
    files["constant-nii"] = _volume(np.zeros((4, 64, 64), np.float32), d / "zeros.nii.gz")
    Image.fromarray(np.full((128, 128), 128, np.uint8)).save(d / "gray.png")
    files["constant-png"] = d / "gray.png"
    # NaN / inf: NIfTI (the NIfTI reader turns them into 0 unless we look), NRRD, MHA
    with_nan = heart.copy()
    with_nan[2, 100:110, 60:70] = np.nan
    files["nan-nii"] = _volume(with_nan, d / "nan.nii.gz")
    files["nan-nrrd"] = _volume(with_nan, d / "nan.nrrd")
    with_inf = heart.copy()
    with_inf[0, 0, 0] = np.inf
    files["inf-mha"] = _volume(with_inf, d / "inf.mha")
    files["nan-float64-nii"] = _volume(with_nan.astype(np.float64), d / "nan64.nii")
    # pictures cut off (a broken download): libjpeg decodes a cut JPEG anyway, grey where data is missing
    for key, source, name in (("truncated-jpg", ISIC / "images" / "ISIC_0000007.jpg", "cut.jpg"),
                              ("truncated-png", XRAY, "cut.png")):
        _need(source)
        picture = source.read_bytes()
        (d / name).write_bytes(picture[: len(picture) * 3 // 5])
        files[key] = d / name
    volume = d / "whole.mha"
    _volume(heart, volume)
    (d / "cut.mha").write_bytes(volume.read_bytes()[: volume.stat().st_size // 2])  # ITK: "No such file", wrongly
    files["truncated-mha"] = d / "cut.mha"
    return files


CASES = {
    # case: (model, file key, words the message must contain)
    "4d": ("heart-cine-mri", "4d", ["4D"]),
    "text": ("heart-cine-mri", "text", ["cannot read", "notes.nii.gz"]),
    "zero-bytes": ("heart-cine-mri", "zero-bytes", ["cannot read"]),
    "truncated-gz": ("heart-cine-mri", "truncated-gz", ["truncated"]),
    "truncated-nii": ("heart-cine-mri", "truncated-nii", ["truncated"]),
    "empty-nii": ("heart-cine-mri", "empty-nii", ["empty"]),
    "empty-nrrd": ("heart-cine-mri", "empty-nrrd", ["cannot read", "size is zero"]),
    "constant-nii": ("heart-cine-mri", "constant-nii", ["constant"]),
    "constant-png": ("lungs-cxr", "constant-png", ["constant"]),
    "nan-nii": ("heart-cine-mri", "nan-nii", ["100 NaN"]),
    "nan-float64-nii": ("heart-cine-mri", "nan-float64-nii", ["100 NaN"]),
    "nan-nrrd": ("heart-cine-mri", "nan-nrrd", ["100 NaN"]),
    "inf-mha": ("heart-cine-mri", "inf-mha", ["1 NaN or infinite"]),
    "truncated-jpg": ("skin-lesion-dermoscopy", "truncated-jpg", ["truncated", "copy or export the file again"]),
    "truncated-png": ("lungs-cxr", "truncated-png", ["cannot read", "cut.png"]),
    "truncated-mha": ("heart-cine-mri", "truncated-mha", ["cannot read", "a truncated or corrupt file"]),
}


def _main(args, capfd):
    code = cli.main([str(a) for a in args])
    captured = capfd.readouterr()
    return code, captured


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_image_gives_one_error_line_and_no_output(case, bad, tmp_path, capfd) -> None:
    model, key, words = CASES[case]
    out = tmp_path / "out"
    code, captured = _main(["segment", "--model", model, "-o", out, bad[key]], capfd)
    line = assert_one_error_line(code, captured.err)
    for word in words:
        assert word in line, line
    assert files_under(out) == [], files_under(out)


def test_a_jpeg_with_data_after_its_end_is_read_and_an_mhd_without_its_data_file_says_so(tmp_path) -> None:
    """Phones append a video after a JPEG's end (motion photos), which may hold any bytes: that is no cut-off file.
    A .mhd header whose .raw data file is missing keeps ITK's own reason, "No such file or directory"."""
    from DSSMSegmentLib.imageio import read_image

    source = ISIC / "images" / "ISIC_0000007.jpg"
    _need(source)
    photo = tmp_path / "motion.jpg"
    photo.write_bytes(source.read_bytes() + b"\x00\x00\x00\x18ftypmp42" + b"\xff\xda\x00\x08" * 4 + b"video")
    assert read_image(photo).GetSize() == read_image(source).GetSize()
    header = tmp_path / "volume.mhd"
    sitk.WriteImage(sitk.Image(8, 8, 2, sitk.sitkInt16) + 1, str(header))
    header.with_suffix(".raw").unlink()
    with pytest.raises(DSSMError, match="No such file or directory"):
        read_image(header)


@pytest.mark.parametrize("model,image", [
    ("heart-cine-mri", ISIC / "images" / "ISIC_0000007.jpg"),  # RGB dermoscopy into the grayscale heart model
    ("skin-lesion-dermoscopy", XRAY),  # grayscale X-ray into the RGB skin model
])
def test_wrong_number_of_channels(model, image, tmp_path, capfd) -> None:
    _need(image)
    out = tmp_path / "out"
    code, captured = _main(["segment", "--model", model, "-o", out, image], capfd)
    line = assert_one_error_line(code, captured.err)
    assert "channel" in line and "model expects" in line, line
    assert files_under(out) == []


def test_grayscale_stored_as_rgb_is_accepted_by_a_grayscale_model() -> None:
    """The flip side of the channel check: an X-ray saved as RGB (R = G = B) is grayscale, not an error."""
    gray = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    image = sitk.GetImageFromArray(np.stack([gray] * 3, -1), isVector=True)
    array = to_channels(image, 1)
    assert array.shape == (1, 1, 64, 64) and np.array_equal(array[0, 0], gray)
    with pytest.raises(DSSMError, match="3 channel"):
        to_channels(sitk.GetImageFromArray(np.dstack([gray, gray, gray // 2]), isVector=True), 1)


def test_empty_image_in_memory_is_refused() -> None:
    with pytest.raises(DSSMError, match="empty"):
        to_channels(sitk.Image([0, 32, 32], sitk.sitkFloat32), 1)


def test_missing_model(tmp_path, capfd) -> None:
    _need(XRAY)
    out = tmp_path / "out"
    code, captured = _main(["segment", "--model", "no-such-model", "-o", out, XRAY], capfd)
    line = assert_one_error_line(code, captured.err)
    assert "no-such-model" in line and "not found" in line and "heart-cine-mri" in line, line
    assert files_under(out) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_device_cuda_without_gpu(tmp_path, capfd) -> None:
    _need(XRAY)
    out = tmp_path / "out"
    code, captured = _main(["segment", "--model", "lungs-cxr", "--device", "cuda", "-o", out, XRAY], capfd)
    line = assert_one_error_line(code, captured.err)
    assert "cuda" in line.lower() and "--device cpu" in line, line
    assert files_under(out) == []


# ---------------------------------------------------------------------------------------------------------
# Corrupt model bundles


def _corrupt(kind: str, folder: Path) -> None:
    weights, meta_path = folder / "model.safetensors", folder / "model.json"
    if kind == "weights-byte-changed":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif kind == "model-json-truncated":
        text = meta_path.read_text(encoding="utf-8")
        meta_path.write_text(text[: len(text) // 2])
    elif kind == "model-json-not-an-object":
        meta_path.write_text("[]\n")
    elif kind == "not-safetensors-matching-sha":  # e.g. a pickled checkpoint renamed, with its hash recorded
        weights.write_bytes(b"\x80\x04\x95" + b"not a safetensors file" * 200)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))
    elif kind == "weights-missing":
        weights.unlink()
    elif kind == "sha256-missing":  # a hand-edited bundle: nothing left to check the weights against
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        del meta["sha256"]
        meta_path.write_text(json.dumps(meta))
    else:
        raise AssertionError(kind)


CORRUPT = {
    "weights-byte-changed": "sha256",
    "model-json-truncated": "corrupt",
    "model-json-not-an-object": "corrupt",
    "not-safetensors-matching-sha": "not a valid safetensors",
    "weights-missing": "missing",
    "sha256-missing": "sha256",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_model_bundle(kind, tmp_path, capfd) -> None:
    _need(XRAY)
    bundle = tmp_path / "lungs-copy"
    shutil.copytree(MODELS / "lungs-cxr", bundle)
    _corrupt(kind, bundle)
    out = tmp_path / "out"
    code, captured = _main(["segment", "--model", bundle, "-o", out, XRAY], capfd)
    line = assert_one_error_line(code, captured.err)
    assert CORRUPT[kind] in line, line
    assert files_under(out) == []


def test_unwritable_output_leaves_no_partial_file(tmp_path, capfd) -> None:
    """A write that fails (here a folder sits where the mask should go) is an error line, and the temporary
    file the mask is first written to is removed."""
    _need(XRAY)
    out = tmp_path / "out"
    (out / "MCUCXR_0006_0.png").mkdir(parents=True)
    code, captured = _main(["segment", "--model", "lungs-cxr", "--steps", "0", "--overwrite", "-o", out, XRAY], capfd)
    line = assert_one_error_line(code, captured.err)
    assert "cannot write" in line, line
    assert files_under(out) == [], files_under(out)


# ---------------------------------------------------------------------------------------------------------
# The real entry point, in its own process


@pytest.mark.parametrize("case", ["text", "nan-nii", "corrupt-model"])
def test_dssm_process_exit_status_and_stderr(case, bad, tmp_path) -> None:
    model, image = "heart-cine-mri", bad["text"] if case == "text" else bad["nan-nii"]
    if case == "corrupt-model":
        model = tmp_path / "heart-copy"
        shutil.copytree(MODELS / "heart-cine-mri", model)
        _corrupt("weights-byte-changed", model)
        image = ACDC_SMALL
    out = tmp_path / "out"
    proc = run_dssm(["segment", "--model", model, "-o", out, image], cwd=tmp_path)
    assert proc.returncode == 2, describe(proc)
    assert_one_error_line(proc.returncode, proc.stderr)
    assert files_under(out) == []


def test_acdc_header_warnings_do_not_reach_the_user(tmp_path) -> None:
    """ACDC's NIfTI headers make ITK warn 'unexpected scales in sform' on every read; dssm must stay quiet."""
    # precondition: this file really makes plain SimpleITK warn (else the test below could not fail)
    raw = run_module(["-c", f"import SimpleITK as sitk; sitk.ReadImage({str(ACDC_SMALL)!r})"], cwd=tmp_path)
    assert raw.returncode == 0 and "unexpected scales in sform" in raw.stderr, describe(raw)
    out = tmp_path / "out"
    proc = run_dssm(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", out, ACDC_SMALL], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "WARNING" not in proc.stderr and "sform" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert (out / "patient041_frame01.nii.gz").is_file()
