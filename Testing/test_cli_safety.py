"""``dssm segment`` never loses data and never fails silently (issue 13), tried as a user would.

Each test names the defect it guards against. They run the real bundled models on real data: ACDC cine MRI,
chest X-rays (also as 12-bit DICOM files, MONOCHROME1 and 2, 16-bit PNG and at 4000 px), and ISIC dermoscopy.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import (ACDC, CXR, ISIC, LV, PROSTATE, ROOT, _need, assert_one_error_line, crop_slices, describe, dice,
                      dssm_command, files_under, run_dssm, same_grid, subprocess_env)
from DSSMSegmentLib import __version__, cli
from DSSMSegmentLib.bundle import resolve_model
from DSSMSegmentLib.imageio import read_image
from DSSMSegmentLib.overlay import GAP, render

XRAY = CXR / "images" / "MCUCXR_0006_0.png"  # in lungs-cxr's validation split (Dice 0.977 at 256 px)
XRAY_MASK = CXR / "masks" / "MCUCXR_0006_0.png"
HEART = ACDC / "patient011" / "patient011_frame01.nii.gz"
HEART_GT = ACDC / "patient011" / "patient011_frame01_gt.nii.gz"


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _main(args, capfd):
    code = cli.main([str(a) for a in args])
    return code, capfd.readouterr()


@pytest.fixture(scope="module")
def small_heart(tmp_path_factory) -> Path:
    """patient011 ED cropped to 2 mid-ventricular slices, as a user's NIfTI file."""
    _need(HEART)
    folder = tmp_path_factory.mktemp("heart")
    image = read_image(HEART)
    sitk.WriteImage(crop_slices(image, 4, 6), str(folder / "p011.nii.gz"))
    return folder / "p011.nii.gz"


# ---------------------------------------------------------------------------------------------------------
# 1. An input is never replaced; an existing output only with --overwrite


def test_output_folder_equal_to_the_input_folder_never_replaces_the_input(small_heart, tmp_path, capfd) -> None:
    _need(XRAY)
    volume_dir, image_dir = tmp_path / "inplace3d", tmp_path / "inplace"
    volume_dir.mkdir(), image_dir.mkdir()
    shutil.copy(small_heart, volume_dir / "p011.nii.gz")
    shutil.copy(XRAY, image_dir / XRAY.name)
    before = {p: _digest(p) for p in [volume_dir / "p011.nii.gz", image_dir / XRAY.name]}
    for args in (["--model", "heart-cine-mri", "-o", volume_dir, volume_dir],
                 ["--model", "lungs-cxr", "-o", image_dir, image_dir / XRAY.name],
                 ["--model", "lungs-cxr", "--overwrite", "-o", image_dir, image_dir / XRAY.name]):
        code, captured = _main(["segment", *args], capfd)
        line = assert_one_error_line(code, captured.err)
        assert "would replace the input" in line and "-o" in line, line
    assert {p: _digest(p) for p in before} == before
    assert sorted(p.name for p in files_under(tmp_path)) == [XRAY.name, "p011.nii.gz"]


def test_existing_outputs_are_kept_unless_overwrite(small_heart, tmp_path, capfd) -> None:
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "p011.nii.gz"
    earlier.write_bytes(b"a mask corrected by hand")
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", out, small_heart], capfd)
    line = assert_one_error_line(code, captured.err)
    assert "already exist" in line and "--overwrite" in line, line
    assert earlier.read_bytes() == b"a mask corrected by hand"
    # the same check covers the timings file, before any work
    (tmp_path / "t.json").write_text("{}")
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "--timings",
                            tmp_path / "t.json", "-o", tmp_path / "other", small_heart], capfd)
    assert "t.json" in assert_one_error_line(code, captured.err)
    assert not (tmp_path / "other").exists()
    (out / "p011_overlay.png").write_bytes(XRAY.read_bytes())  # the overlay of the earlier mask
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "--overwrite", "-o", out,
                            small_heart], capfd)
    assert code == 0, captured.err
    assert same_grid(sitk.ReadImage(str(earlier)), sitk.ReadImage(str(small_heart)))
    # that overlay is not written again, so it no longer shows the mask beside it: said, and left alone
    assert captured.err.splitlines() == [
        f"dssm: note: {out / 'p011_overlay.png'} is from an earlier run and will not match the new mask of "
        f"{small_heart}; delete it, or pass the option that writes it again (--overlay, --uncertainty)"]
    assert (out / "p011_overlay.png").read_bytes() == XRAY.read_bytes()


# ---------------------------------------------------------------------------------------------------------
# 2. No silent default model


def test_model_is_required_and_named_in_the_output(tmp_path) -> None:
    _need(XRAY)
    proc = run_dssm(["segment", "-o", tmp_path / "out", XRAY], cwd=tmp_path)
    assert proc.returncode == 2 and "--model" in proc.stderr, describe(proc)
    assert not (tmp_path / "out").exists()
    proc = run_dssm(["segment", "--model", "lungs-cxr", "-o", tmp_path / "out", XRAY], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.splitlines()[0].startswith("model lungs-cxr (dssm, K=4) on cpu"), proc.stdout


# ---------------------------------------------------------------------------------------------------------
# 3. Output files follow the user's umask


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask(umask, tmp_path, capfd) -> None:
    _need(XRAY)
    old = os.umask(umask)
    try:
        code, captured = _main(["segment", "--model", "lungs-cxr", "--steps", "0", "--overlay", "--timings",
                                tmp_path / "out" / "timings.json", "-o", tmp_path / "out", XRAY], capfd)
    finally:
        os.umask(old)
    assert code == 0, captured.err
    written = files_under(tmp_path / "out")
    assert [p.name for p in written] == [XRAY.name, XRAY.name.replace(".png", "_overlay.png"), "timings.json"]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}


# ---------------------------------------------------------------------------------------------------------
# 4. One bad file does not stop a batch


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """A chest X-ray PNG, a colour dermoscopy JPG (wrong channel count for the X-ray model), and the X-ray
    again as NIfTI, in that (sorted) order."""
    _need(XRAY), _need(ISIC)
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(XRAY, folder / "a_xray.png")
    shutil.copy(sorted((ISIC / "images").glob("*.jpg"))[0], folder / "b_dermoscopy.jpg")
    sitk.WriteImage(sitk.ReadImage(str(XRAY)), str(folder / "c_xray.nii.gz"))
    return folder


def test_a_bad_file_in_a_folder_does_not_stop_the_others(mixed_folder, tmp_path) -> None:
    proc = run_dssm(["segment", "--model", "lungs-cxr", "--steps", "0", "--timings", tmp_path / "t.json",
                     "-o", tmp_path / "out", mixed_folder], cwd=tmp_path)
    assert proc.returncode == 2, describe(proc)
    # the NIfTI holds a 2D image; its mask is a NIfTI too, which keeps its geometry
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_xray.png", "c_xray.nii.gz"]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("dssm: error: ") and "b_dermoscopy.jpg" in errors[0] and "channel" in errors[0]
    assert errors[1] == "dssm: 1 of 3 input(s) failed (listed above); 2 segmented"
    report = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert [Path(c["input"]).name for c in report["cases"]] == ["a_xray.png", "c_xray.nii.gz"]
    assert [Path(c["input"]).name for c in report["failed"]] == ["b_dermoscopy.jpg"]


def test_fail_fast_stops_at_the_first_failure(mixed_folder, tmp_path) -> None:
    proc = run_dssm(["segment", "--model", "lungs-cxr", "--steps", "0", "--fail-fast", "-o", tmp_path / "out",
                     mixed_folder], cwd=tmp_path)
    assert_one_error_line(proc.returncode, proc.stderr)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_xray.png"]


# ---------------------------------------------------------------------------------------------------------
# 5. Label maps in a folder are skipped, and said so


def test_label_maps_in_a_folder_are_skipped_by_name_or_by_values(small_heart, tmp_path, capfd) -> None:
    _need(HEART_GT), _need(XRAY_MASK)
    folder = tmp_path / "patient"
    folder.mkdir()
    shutil.copy(small_heart, folder / "p011.nii.gz")
    shutil.copy(HEART_GT, folder / "p011_gt.nii.gz")  # by its name
    shutil.copy(XRAY_MASK, folder / "p011_reader2.png")  # by its values: 0 and 255 only
    (folder / "p011_overlay.png").write_bytes(XRAY.read_bytes())  # an output of an earlier run
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out",
                            folder], capfd)
    assert code == 0, captured.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p011.nii.gz"]
    skipped = [ln for ln in captured.out.splitlines() if ln.startswith("skipped ")]
    assert len(skipped) == 3, captured.out
    assert "p011_gt.nii.gz: a label map, by its name" in skipped[0]
    assert "p011_overlay.png: an output of dssm segment" in skipped[1]
    assert "p011_reader2.png: a label map (values 0, 255)" in skipped[2]
    # a file named on the command line is the user's choice: segmented whatever it looks like
    code, captured = _main(["segment", "--model", "lungs-cxr", "--steps", "0", "-o", tmp_path / "out2",
                            folder / "p011_reader2.png"], capfd)
    assert code == 0 and (tmp_path / "out2" / "p011_reader2.png").is_file(), captured.err


def test_the_count_of_inputs_leaves_out_the_label_maps_skipped(small_heart, tmp_path, capfd) -> None:
    """The line that says how many inputs a run segments counts those it segments: a label map told by its values
    (a second reader's mask beside the image) is named as skipped before it, not counted, and listed as skipped in
    --timings; it used to be counted, and only skipped in the run."""
    _need(XRAY_MASK)
    folder = tmp_path / "patient"
    folder.mkdir()
    shutil.copy(small_heart, folder / "p011.nii.gz")
    shutil.copy(XRAY_MASK, folder / "p011_reader2.png")  # 0 and 255 only
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "--timings", tmp_path / "t.json",
                            "-o", tmp_path / "out", folder], capfd)
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0] == (f"skipped {folder / 'p011_reader2.png'}: a label map (values 0, 255); name it on the "
                        "command line to segment it anyway"), captured.out
    assert lines[1].startswith("model heart-cine-mri (") and f": 1 input(s) -> {tmp_path / 'out'}" in lines[1], lines[1]
    assert [ln for ln in lines if ln.startswith("skipped ")] == lines[:1]
    report = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert report["skipped"] == [{"input": str(folder / "p011_reader2.png"), "reason": "label map"}]
    assert [c["input"] for c in report["cases"]] == [str(folder / "p011.nii.gz")]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p011.nii.gz"]


def test_a_folder_segmented_into_itself_can_be_segmented_again(tmp_path, capfd) -> None:
    """``-o`` the input folder puts X.png beside X.jpg. A later run over that folder (into it again, or elsewhere)
    skips those masks, and the hidden ._X.jpg copies macOS leaves on some drives, and says so; it used to stop at
    a name clash between X.jpg and X.png."""
    name = "ISIC_0000007"  # in skin-lesion-dermoscopy's validation split
    _need(ISIC / "images" / f"{name}.jpg")
    folder = tmp_path / "photos"
    folder.mkdir()
    small = Image.open(ISIC / "images" / f"{name}.jpg").convert("RGB").resize((320, 240), Image.BICUBIC)
    small.save(folder / "lesion.jpg", quality=95)
    shutil.copy(folder / "lesion.jpg", folder / "._lesion.jpg")
    command = ["segment", "--model", "skin-lesion-dermoscopy", "--steps", "0"]
    code, captured = _main(command + ["-o", folder, folder], capfd)
    assert code == 0, captured.err
    first = _digest(folder / "lesion.png")
    for out, extra in ((folder, ["--overwrite"]), (tmp_path / "elsewhere", [])):
        code, captured = _main(command + extra + ["-o", out, folder], capfd)
        assert code == 0, captured.err
        skipped = [ln for ln in captured.out.splitlines() if ln.startswith("skipped ")]
        assert [ln.split(":")[0] for ln in skipped] == [f"skipped {folder / '._lesion.jpg'}",
                                                        f"skipped {folder / 'lesion.png'}"], captured.out
        assert "the mask of lesion.jpg from an earlier run" in skipped[1]
        assert _digest(out / "lesion.png") == first, "the same mask again"
    assert sorted(p.name for p in folder.iterdir()) == ["._lesion.jpg", "lesion.jpg", "lesion.png"]
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == ["lesion.png"]
    # without --overwrite, the earlier mask is kept and the run says how to replace it
    code, captured = _main(command + ["-o", folder, folder], capfd)
    assert code == 2 and "already exists; pass --overwrite" in captured.err


def test_every_pair_of_inputs_that_would_share_an_output_is_named_at_once(tmp_path, capfd) -> None:
    _need(XRAY)
    folder = tmp_path / "xrays"
    folder.mkdir()
    picture = Image.open(XRAY)
    for name in ("a.png", "a.tif", "b.png", "b.bmp"):
        picture.save(folder / name)
    code, captured = _main(["segment", "--model", "lungs-cxr", "--overlay", "-o", tmp_path / "out", folder], capfd)
    line = assert_one_error_line(code, captured.err)
    out = tmp_path / "out"
    assert (f"{folder / 'a.png'} and {folder / 'a.tif'} would both be written as {out / 'a.png'}; "
            f"{folder / 'b.bmp'} and {folder / 'b.png'} would both be written as {out / 'b.png'}; segment") \
        in line, line


def test_an_input_named_twice_is_segmented_once(small_heart, tmp_path, capfd) -> None:
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", small_heart,
                            small_heart], capfd)
    assert code == 0, captured.err
    assert "1 input(s)" in captured.out and [p.name for p in (tmp_path / "out").iterdir()] == [small_heart.name]


def test_a_folder_of_patient_folders_says_to_name_the_subfolders(small_heart, tmp_path, capfd) -> None:
    (tmp_path / "study" / "patient011").mkdir(parents=True)
    shutil.copy(small_heart, tmp_path / "study" / "patient011" / small_heart.name)
    code, captured = _main(["segment", "--model", "heart-cine-mri", "-o", tmp_path / "out", tmp_path / "study"], capfd)
    line = assert_one_error_line(code, captured.err)
    assert f"no images found in folder {tmp_path / 'study'}" in line, line
    assert f"its 1 subfolder(s) are not searched: name them, e.g. {tmp_path / 'study' / '*'}" in line, line


def test_timings_that_name_a_folder_an_input_or_an_output_are_refused_first(small_heart, tmp_path, capfd) -> None:
    """... or a device or a pipe, which writing the file would replace (as root, --timings /dev/null replaced
    /dev/null with a regular file); a link gets the timings written into the file it points to."""
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "pipe.json")
    out = tmp_path / "out"
    for timings, message in ((tmp_path / "folder", "is a folder; --timings names the JSON file"),
                             (tmp_path / "pipe.json", "is not a regular file (a device or a pipe)"),
                             (small_heart, "is one of the inputs"),
                             (out / small_heart.name, f"is also the output of {small_heart}"),
                             (out / ".." / "out" / small_heart.name, f"is also the output of {small_heart}")):
        code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "--timings", timings,
                                "-o", out, small_heart], capfd)
        line = assert_one_error_line(code, captured.err)
        assert f"--timings {timings} {message}" in line, line
        assert not out.exists(), "refused before any work"
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to("real.json")
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "--overwrite", "--timings",
                            tmp_path / "link.json", "-o", out, small_heart], capfd)
    assert code == 0, captured.err
    assert (tmp_path / "link.json").is_symlink() and stat.S_ISFIFO(os.stat(tmp_path / "pipe.json").st_mode)
    assert json.loads((tmp_path / "real.json").read_text(encoding="utf-8"))["model"] == "heart-cine-mri"


def test_missing_folders_of_o_and_timings_are_created_alike_and_named(tmp_path, capfd) -> None:
    """-o and --timings follow one rule: a missing folder is created before any work, with its missing parents, and
    each one created that the option does not name itself (a parent of -o, the folder of --timings) gets a note, so
    that a mistyped path shows at once; --timings /no/such/dir/t.json created its folders without a word."""
    _need(XRAY)
    out, timings = tmp_path / "no" / "such" / "out", tmp_path / "other" / "dir" / "t.json"
    code, captured = _main(["segment", "--model", "lungs-cxr", "--steps", "0", "--timings", timings, "-o", out, XRAY],
                           capfd)
    assert code == 0, captured.err
    base = tmp_path.resolve()  # --timings is followed to the file it names (links too)
    assert [ln for ln in captured.err.splitlines() if "created" in ln] == [
        f"dssm: note: created the missing folders {tmp_path / 'no'}, {tmp_path / 'no' / 'such'} for -o {out}",
        f"dssm: note: created the missing folders {base / 'other'}, {base / 'other' / 'dir'} for --timings {timings}"]
    assert (out / XRAY.name).is_file() and json.loads(timings.read_text(encoding="utf-8"))["cases"]
    # the folder -o names, and the timings in it: nothing to say
    code, captured = _main(["segment", "--model", "lungs-cxr", "--steps", "0", "--timings", tmp_path / "new" / "t.json",
                            "-o", tmp_path / "new", XRAY], capfd)
    assert code == 0 and "created" not in captured.err, captured.err
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [XRAY.name, "t.json"]


# ---------------------------------------------------------------------------------------------------------
# 6. Direction cosines a little off orthonormal (scanner float32 headers) are read, not refused


def _nifti_with_sform_only(source: Path, target: Path, shear: float) -> None:
    """``source`` rewritten as an uncompressed NIfTI-1 with qform_code 0 and an sform whose rotation is off
    orthonormal by about ``shear`` (as in an M&Ms GE cine), which ITK refuses to read."""
    sitk.WriteImage(sitk.ReadImage(str(source)), str(target.with_suffix(".tmp.nii")))
    raw = bytearray(target.with_suffix(".tmp.nii").read_bytes())
    target.with_suffix(".tmp.nii").unlink()
    srow = np.array(struct.unpack_from("<12f", raw, 280)).reshape(3, 4)
    srow[0, 1] += shear * srow[1, 1]
    struct.pack_into("<2h", raw, 252, 0, 1)
    struct.pack_into("<12f", raw, 280, *srow.ravel())
    target.write_bytes(gzip.compress(bytes(raw)))


def test_nearly_orthonormal_direction_is_repaired_and_the_mask_keeps_the_input_header(small_heart, tmp_path,
                                                                                    capfd) -> None:
    near = tmp_path / "gecine.nii.gz"
    _nifti_with_sform_only(small_heart, near, 1e-4)
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(near))  # what users hit before
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", near],
                           capfd)
    assert code == 0, captured.err
    notes = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(notes) == 1 and notes[0].startswith("dssm: note: ") and "nearest orthonormal" in notes[0], notes
    mask_path = tmp_path / "out" / "gecine.nii.gz"
    in_head, out_head = gzip.decompress(near.read_bytes())[:348], gzip.decompress(mask_path.read_bytes())[:348]
    for offset, size in ((76, 16), (123, 1), (252, 76)):  # pixdim, units, qform/sform codes and transforms
        assert out_head[offset:offset + size] == in_head[offset:offset + size], offset
    # the mask is the segmentation of this image: the same as the heart model gives for the intact file
    gt = sitk.GetArrayFromImage(read_image(HEART_GT))[4:6]
    assert dice(sitk.GetArrayFromImage(read_image(mask_path)), gt, LV) > 0.85


def test_truly_broken_direction_is_refused_with_a_reason(small_heart, tmp_path, capfd) -> None:
    broken = tmp_path / "broken.nii.gz"
    _nifti_with_sform_only(small_heart, broken, 0.1)
    code, captured = _main(["segment", "--model", "heart-cine-mri", "-o", tmp_path / "out", broken], capfd)
    line = assert_one_error_line(code, captured.err)
    assert "off orthonormal by" in line and "broken" in line, line
    assert files_under(tmp_path / "out") == []


def _sheared_nrrd(source: Path, target: Path, shear: float) -> Path:
    """``source`` as an NRRD whose first axis leans by ``shear`` towards y: a sheared grid, which NRRD can hold."""
    sitk.WriteImage(sitk.ReadImage(str(source)), str(target), False)
    header, _, data = target.read_bytes().partition(b"\n\n")
    lines = header.decode("ascii").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("space directions:"):
            axes = [[float(v) for v in axis.strip("()").split(",")] for axis in line.split(":", 1)[1].split()]
            axes[0][1] = shear * axes[0][0]
            lines[i] = "space directions: " + " ".join("(" + ",".join(f"{v:.8g}" for v in a) + ")" for a in axes)
    target.write_bytes("\n".join(lines).encode("ascii") + b"\n\n" + data)
    return target


def test_a_sheared_nrrd_is_refused_and_a_nearly_orthogonal_one_read_with_a_note(small_heart, tmp_path, capfd) -> None:
    """NRRD and MHA can hold a sheared grid, which ITK reads as it is but no NIfTI mask can lie on: the mask
    used to be written with another direction than its image's, without a word."""
    sheared = _sheared_nrrd(small_heart, tmp_path / "tilted.nrrd", 0.2)
    direction = np.reshape(sitk.ReadImage(str(sheared)).GetDirection(), (3, 3))
    assert np.abs(direction.T @ direction - np.eye(3)).max() > 0.1, "ITK reads the shear as it is"
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", sheared],
                           capfd)
    line = assert_one_error_line(code, captured.err)
    assert "its voxel grid is sheared" in line and "Resample it onto an orthogonal grid first" in line, line
    assert files_under(tmp_path / "out") == []
    slight = _sheared_nrrd(small_heart, tmp_path / "slight.nrrd", 0.002)
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", slight],
                           capfd)
    assert code == 0, captured.err
    assert captured.err.startswith(f"dssm: note: {slight}: direction cosines off orthonormal by 2.0e-03; ")
    mask, image = sitk.ReadImage(str(tmp_path / "out" / "slight.nii.gz")), sitk.ReadImage(str(slight))
    assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(mask.GetDirection(), image.GetDirection(), atol=0.01)


def test_mask_of_an_acdc_volume_keeps_its_header_geometry(small_heart, tmp_path, capfd) -> None:
    code, captured = _main(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path, HEART], capfd)
    assert code == 0, captured.err
    in_head = gzip.decompress(HEART.read_bytes())[:348]
    out_head = gzip.decompress((tmp_path / HEART.name).read_bytes())[:348]
    assert out_head[252:328] == in_head[252:328] and out_head[76:92] == in_head[76:92]


# ---------------------------------------------------------------------------------------------------------
# 7. Chest X-rays as they come: DICOM files (CR/DX, MONOCHROME1), 16-bit PNG, 4000 px


def _dicom_xray(pixels: np.ndarray, path: Path, photometric: str) -> Path:
    """A single-file DX DICOM as an X-ray system writes it: 12 bits stored in 16, no series folder."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "DX", "Test^Phantom"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def xray_variants(tmp_path_factory):
    """One real chest X-ray at 4000 px, 12 bits: as 16-bit PNG, DICOM MONOCHROME2, DICOM MONOCHROME1 (stored
    inverted, as many CR systems do) without a file suffix; and its expert lung mask at that size."""
    _need(XRAY), _need(XRAY_MASK)
    folder = tmp_path_factory.mktemp("xrays")
    size = (4000, 4000)
    base = np.asarray(Image.open(XRAY).convert("F").resize(size, Image.BICUBIC))
    twelve = np.clip(base * 16 + np.random.default_rng(0).uniform(0, 16, size), 0, 4095).astype(np.uint16)
    Image.fromarray(twelve.astype(np.int32)).convert("I;16").save(folder / "big16.png")
    files = {"png16": folder / "big16.png",
             "monochrome2": _dicom_xray(twelve, folder / "dx_m2.dcm", "MONOCHROME2"),
             "monochrome1": _dicom_xray(4095 - twelve, folder / "IM000001", "MONOCHROME1")}
    truth = np.asarray(Image.open(XRAY_MASK).convert("L").resize(size, Image.NEAREST)) > 0
    return files, truth


def test_xray_files_as_they_come_are_segmented_on_their_own_grid(xray_variants, tmp_path) -> None:
    files, truth = xray_variants
    assert sitk.ReadImage(str(files["png16"])).GetPixelID() == sitk.sitkUInt16
    masks = {}
    for name, path in files.items():
        proc = run_dssm(["segment", "--model", "lungs-cxr", "-o", tmp_path / name, path], cwd=tmp_path)
        assert proc.returncode == 0, describe(proc)
        out = next((tmp_path / name).iterdir())
        mask, image = sitk.ReadImage(str(out)), sitk.ReadImage(str(path))
        assert same_grid(mask, image), name
        masks[name] = sitk.GetArrayFromImage(mask).reshape(truth.shape) > 0
        assert dice(masks[name], truth, True) > 0.95, name
    # a MONOCHROME1 file is shown (and segmented) inverted back: the same lungs as its MONOCHROME2 twin
    assert dice(masks["monochrome1"], masks["monochrome2"], True) > 0.999
    assert dice(masks["png16"], masks["monochrome2"], True) > 0.999


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_a_4000_px_xray_stays_within_the_benchmark_memory_limit(xray_variants, tmp_path) -> None:
    """Peak RAM of the whole ``dssm segment`` process (model, 16-bit read, 4000 px probabilities) < 1.5 GB,
    the limit ``dssm benchmark`` checks for every case."""
    files, _ = xray_variants
    # VmHWM, the peak RSS of this process's own memory map: getrusage's ru_maxrss would also count the pytest
    # process that started it (Linux carries the parent's peak across fork/vfork + exec: 1.5 GB in a full run)
    code = ("import sys; from DSSMSegmentLib.cli import main; rc = main(sys.argv[1:]); "
            "print('peak_kb', open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "segment", "--model", "lungs-cxr", "-o", str(tmp_path),
                           str(files["monochrome2"])], env=subprocess_env(), capture_output=True, text=True,
                          encoding="utf-8", errors="replace")
    assert proc.returncode == 0, describe(proc)
    peak_gb = int(proc.stdout.split("peak_kb")[1]) / 2 ** 20
    assert peak_gb < 1.5, f"peak RAM {peak_gb:.2f} GB"


# ---------------------------------------------------------------------------------------------------------
# 8. Arguments are checked before PyTorch is imported; defaults shown; --version


CHECK_WITHOUT_TORCH = ("import sys; from DSSMSegmentLib.cli import main\n"
                       "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
                       "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
                       "sys.exit(rc)")


@pytest.mark.parametrize("args, message", [
    (["--model", "lungs-cxr", "--steps", "-1", "-o", "{out}"], "argument --steps: must be 0 or more, got -1"),
    (["--model", "lungs-cxr", "--batch-size", "0", "-o", "{out}"], "argument --batch-size: must be 1 or more, got 0"),
    (["--model", "lungs-cxr", "--samples", "two", "-o", "{out}"], "argument --samples: expected a whole number"),
    (["--model", "lungs-cxr", "--device", "gpu0", "-o", "{out}"], "argument --device: 'gpu0' is not a device"),
    (["--model", "lungs-cxr", "--seed", str(2 ** 64), "-o", "{out}"], "argument --seed: must be 9223372036854775807 or less"),
    (["--model", "lungs-cxr", "-o", "{file}"], "is a file; -o names the output folder"),
    (["--model", "lungs-cxr", "-o", ""], "argument -o/--output: is empty; name the output folder"),
    (["--model", "lungs-cxr", "-o", "{file}/masks"], "cannot write into "),  # said once, not after each input
    (["--model", "no-such-model", "-o", "{out}"], "model 'no-such-model' not found"),
    (["--model", "Lungs-CXR", "-o", "{out}"], "model 'Lungs-CXR' not found (did you mean 'lungs-cxr'? available: "),
    (["--model", "lungs-cxr", "-o", "{out}"], "already exist"),  # {out} holds an earlier mask of the X-ray
])
def test_mistakes_in_the_command_are_refused_before_torch_is_imported(args, message, tmp_path) -> None:
    _need(XRAY)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / XRAY.name).write_text("an earlier mask")
    fill = {"{file}": str(tmp_path / "a_file"), "{out}": str(tmp_path / "out")}
    command = ["segment", *[a.format(file=fill["{file}"], out=fill["{out}"]) for a in args], str(XRAY)]
    proc = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_TORCH, *command], env=subprocess_env(),
                          capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 2, describe(proc)
    assert message in proc.stderr, describe(proc)
    assert proc.stdout.strip().endswith("torch not imported"), describe(proc)
    assert (tmp_path / "out" / XRAY.name).read_text(encoding="utf-8") == "an earlier mask"


@pytest.mark.parametrize("args, message", [
    (["--encoding", "png"], "argument --encoding: 'png' is not an encoding"),
    (["--encoding", "webp:150"], "argument --encoding: 'webp:150' is not an encoding"),
    (["--out", "{dir}/cache.txt"], "a cache is an .npz file"),
    (["--out", "{dir}/mine.npz"], "exists and is not a DSSM training cache"),
])
def test_cache_mistakes_are_refused_and_replace_nothing(args, message, tmp_path) -> None:
    """``dssm cache`` refuses an unknown encoding, and an --out that is not an .npz or is someone's own file, in
    one line and before PyTorch is imported; that file keeps its content."""
    (tmp_path / "mine.npz").write_text("my own data")
    command = ["cache", "--recipe", "prostate-t2-mri", *[a.replace("{dir}", str(tmp_path)) for a in args]]
    proc = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_TORCH, *command], env=subprocess_env(),
                          capture_output=True, text=True, encoding="utf-8", errors="replace", cwd=tmp_path)
    assert proc.returncode == 2, describe(proc)
    assert message in proc.stderr and "Traceback" not in proc.stderr, describe(proc)
    assert proc.stdout.strip().endswith("torch not imported"), describe(proc)
    assert (tmp_path / "mine.npz").read_text() == "my own data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.npz"]


def test_a_cache_build_that_fails_midway_leaves_the_earlier_cache_as_it_was(tmp_path) -> None:
    """The second of two cases is corrupt: the build stops with one line saying which file, and the earlier cache
    at --out is the same file, byte for byte, with nothing else left beside it."""
    _need(PROSTATE)
    data = tmp_path / "data"
    case = sorted(p for p in PROSTATE.iterdir() if (p / "t2_anatomy_reader1.nii.gz").is_file())[0]
    shutil.copytree(case, data / "001")
    (data / "002").mkdir()
    shutil.copy(case / "t2_anatomy_reader1.nii.gz", data / "002")
    (data / "002" / "t2.nii.gz").write_bytes(b"not an image")
    earlier = tmp_path / "cache.npz"
    np.savez(earlier, slice_case=np.zeros(1, np.int32), lo_hi=np.zeros((1, 2), np.float32),
             labels=np.zeros((1, 4, 4), np.uint8))
    before = earlier.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "DSSMSegmentLib.cli", "cache", "--recipe", "prostate-t2-mri",
                           "--data", f"prostate158={data}", "--out", str(earlier)], env=subprocess_env(),
                          capture_output=True, text=True, encoding="utf-8", errors="replace", cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bar, one line says what and where
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, describe(proc)
    assert last.startswith("dssm: error: cannot read") and "002" in last, describe(proc)
    assert earlier.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz", "data"]


def test_help_shows_defaults_and_version_matches_the_package(tmp_path) -> None:
    from importlib.metadata import version

    proc = run_dssm(["segment", "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for shown in ("slices per network batch (default: 16)", "(default: auto)", "seed of the Markov chain's noise "
                  "(default: 0)", "--overwrite", "--fail-fast"):
        assert shown in text, shown
    proc = run_dssm(["--version"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dssm {__version__}"
    assert version("dssmsegment") == __version__


# ---------------------------------------------------------------------------------------------------------
# 9. Piped or logged output: one clean line per case, no progress bar


def test_piped_output_has_one_line_per_case_and_no_progress_bar(small_heart, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("p1.nii.gz", "p2.nii.gz"):
        shutil.copy(small_heart, folder / name)
    proc = run_dssm(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", folder],
                    cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == "" and "\r" not in proc.stdout, describe(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("model heart-cine-mri")
    assert [ln.split(" -> ")[0] for ln in lines[1:]] == [str(folder / "p1.nii.gz"), str(folder / "p2.nii.gz")]


def test_sigterm_stops_a_run_as_ctrl_c_does_and_leaves_no_partial_file(small_heart, tmp_path) -> None:
    """`kill`, `timeout` and job schedulers send SIGTERM: the run stops cleanly, with what it finished intact."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        shutil.copy(small_heart, folder / f"p{i}.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen(dssm_command() + ["segment", "--model", "heart-cine-mri", "--steps", "0", "--overlay",
                                              "-o", str(out), str(folder)], cwd=str(tmp_path), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace")
    proc.stdout.readline()  # the model line
    proc.stdout.readline()  # the first case is written
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted; nothing more was written" in stderr
    written = sorted(p.name for p in out.iterdir())
    assert not [name for name in written if name.startswith(".")], written  # no half-written file
    assert "p0.nii.gz" in written and len([n for n in written if n.endswith(".nii.gz")]) < 6, written
    for name in written:
        if name.endswith(".nii.gz"):
            assert same_grid(read_image(out / name), read_image(small_heart))


def test_a_wrong_rank_or_world_size_in_the_environment_is_refused(small_heart, tmp_path) -> None:
    for env, message in (({"WORLD_SIZE": "abc"}, "must be whole numbers"),
                         ({"WORLD_SIZE": "2", "RANK": "7"}, "RANK must be 0 to WORLD_SIZE - 1")):
        proc = run_dssm(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", small_heart],
                        cwd=tmp_path, env=env)
        assert proc.returncode == 2 and message in proc.stderr, describe(proc)
        assert not (tmp_path / "out" / small_heart.name).exists()


def test_more_markov_steps_than_the_chain_has_are_refused_before_any_work(small_heart, tmp_path) -> None:
    """The chain has one step per noise level from markov_start x T down (500 for the bundled models); a larger
    K used to be capped there without a word, and a run with it was not the run asked for."""
    for command in (["segment", "-o", tmp_path / "out", small_heart], ["evaluate", "acdc", "--limit", "1"]):
        proc = run_dssm(command + ["--model", "heart-cine-mri", "--steps", "501"], cwd=tmp_path)
        line = assert_one_error_line(proc.returncode, proc.stderr)
        assert "--steps 501" in line and "at most 500 steps" in line and "default is 4" in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------------------
# 10. dssm models: per-dataset numbers, and the prostate model's leave-one-case-out numbers


def test_dssm_models_shows_each_dataset_and_the_cross_validation(tmp_path) -> None:
    proc = run_dssm(["models"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    text = proc.stdout
    names = [line.split()[0] for line in text.splitlines() if line and not line.startswith(" ")]
    # each DSSM: its name, its labels, its default K and why (test_campaign.py), then its Dice rows
    skin = text[text.index("skin-lesion-dermoscopy  ["):].split("\n")
    assert skin[2].startswith("    default K = ")
    assert skin[3].startswith("    validation Dice on isic2018 (403 cases): skin lesion 0.")
    assert skin[4].startswith("    validation Dice on ph2 (27 cases): skin lesion 0.")
    prostate = text[text.index("prostate-t2-mri  ["):].split("\n")
    assert prostate[3].startswith("    leave-one-case-out Dice (4 cases): transition zone 0.")
    assert "whole gland" in prostate[3]
    assert "prostate-t2-mri-baseline" in names
    # the numbers are those of the recorded evaluation (not re-typed)
    skin_meta = resolve_model("skin-lesion-dermoscopy").metrics["evaluations"]["val@K=4"]["by_dataset"]
    assert f"{skin_meta['ph2']['skin lesion']['dice']['mean']:.3f}" in skin[4]


# ---------------------------------------------------------------------------------------------------------
# 11. Overlays: a legend and slice numbers, no black strip


def test_overlay_of_a_2d_image_has_its_size_and_a_legend(tmp_path) -> None:
    _need(XRAY)
    bundle = resolve_model("lungs-cxr")
    image = sitk.ReadImage(str(XRAY))
    mask = sitk.Cast(sitk.ReadImage(str(XRAY_MASK)) > 0, sitk.sitkUInt8)
    mask.CopyInformation(image)
    picture = render(image, mask, bundle.labels)
    assert picture.shape == (256, 256, 3)
    assert picture[:, -GAP:].max() > 0, "a black strip at the right"
    # the legend: the label's colour as a solid swatch in the top-left corner
    colour = np.array(bundle.labels[0].color, dtype=np.uint8)
    corner = picture[:20, :20].reshape(-1, 3)
    assert (corner == colour).all(1).sum() >= 16


def test_overlay_montage_has_gaps_only_between_panels_and_slice_numbers(small_heart, tmp_path) -> None:
    bundle = resolve_model("heart-cine-mri")
    image = read_image(small_heart)
    gt = read_image(HEART_GT)[:, :, 4:6]
    gt.CopyInformation(image)
    picture = render(image, sitk.Cast(gt, sitk.sitkUInt8), bundle.labels)
    w = image.GetSize()[0]
    assert picture.shape[1] == 2 * w + GAP
    assert picture[:, w:w + GAP].max() == 0 and picture[:, -GAP:].max() > 0
    # each panel's bottom-left corner carries its slice number in white on a dark box
    for left in (0, w + GAP):
        assert (picture[-14:, left:left + 40] > 240).all(-1).any(), left
