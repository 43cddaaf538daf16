"""Geometry round trip: masks come back on exactly the input's voxel grid, whatever its orientation.

The engine works in index space (slices along the index axis with the largest spacing), so an oblique
direction or another origin must not change the mask, and permuting the index axes must permute the mask.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import (ACDC, CXR, ISIC, LV, MYO, RV, _need, assert_one_error_line, crop_slices, describe, dice,
                      grid_report, run_dssm, same_grid)
from DSSMSegmentLib import cli
from DSSMSegmentLib.imageio import read_image


def rotation(axis, degrees) -> np.ndarray:
    """A proper rotation matrix (Rodrigues) about ``axis``."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx


def write_dicom_series(image: sitk.Image, folder, series: int = 1, description: str = "dssm test series") -> None:
    """One DICOM file per slice (int16 MR), with position/orientation tags: a DICOM series folder (another
    ``series`` number adds a second series to the folder)."""
    folder.mkdir(exist_ok=True)
    d = image.GetDirection()
    uid = f"1.2.826.0.1.3680043.2.1125.1.20261124.{series}"
    tags = [("0008|0060", "MR"), ("0008|0008", "DERIVED\\SECONDARY"), ("0020|000e", uid),
            ("0020|000d", uid + ".0"), ("0008|103e", description), ("0020|0011", str(series)),
            ("0020|0037", "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])))]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    voxels = sitk.Cast(image, sitk.sitkInt16)
    for k in range(image.GetDepth()):
        s = voxels[:, :, k]
        for tag, value in tags:
            s.SetMetaData(tag, value)
        s.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0008|0018", f"{uid}.{k + 1}")
        writer.SetFileName(str(folder / f"s{series}slice{k:03d}.dcm"))
        writer.Execute(s)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Three NIfTI volumes with the same voxels of ACDC patient011 (4 slices), written as a user would get them:

    - ``plain``: identity direction, anisotropic spacing 1.4 x 1.6 x 8 mm;
    - ``oblique``: the same, with a non-axis-aligned direction and another origin;
    - ``dicom_oblique``: the oblique volume as a DICOM series folder (ACDC intensities are whole numbers, so
      the int16 DICOM voxels are the same);
    - ``permuted``: the index axes permuted so that the largest spacing lies along the first index axis (i),
      with the direction's columns permuted to match (the same physical object).
    """
    _need(ACDC / "patient011")
    src = crop_slices(read_image(ACDC / "patient011" / "patient011_frame01.nii.gz"), 2, 6)
    array = sitk.GetArrayFromImage(src)  # (Z, Y, X)
    gt = sitk.GetArrayFromImage(read_image(ACDC / "patient011" / "patient011_frame01_gt.nii.gz"))[2:6]
    folder = tmp_path_factory.mktemp("geometry-in")
    spacing = (1.4, 1.6, 8.0)  # (x, y, z)

    plain = sitk.GetImageFromArray(array)
    plain.SetSpacing(spacing)
    sitk.WriteImage(plain, str(folder / "plain.nii.gz"))

    oblique = sitk.GetImageFromArray(array)
    oblique.SetSpacing(spacing)
    direction = rotation([1.0, 2.0, 3.0], 35.0)
    oblique.SetDirection(direction.flatten().tolist())
    oblique.SetOrigin((-120.5, 33.25, 71.0))
    sitk.WriteImage(oblique, str(folder / "oblique.nii.gz"))
    assert np.array_equal(array, np.round(array))
    write_dicom_series(oblique, folder / "dicom_oblique")

    # numpy (Z, Y, X) -> (Y, X, Z): index axis i of the new image is the old z (8 mm), j the old x, k the old y.
    permuted = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(1, 2, 0)))
    permuted.SetSpacing((spacing[2], spacing[0], spacing[1]))
    permuted.SetDirection(direction[:, [2, 0, 1]].flatten().tolist())
    permuted.SetOrigin((-120.5, 33.25, 71.0))
    sitk.WriteImage(permuted, str(folder / "permuted.nii.gz"))
    return folder, gt


@pytest.fixture(scope="module")
def segmented(volumes, tmp_path_factory):
    """``dssm segment`` on the folder of the three volumes, in its own process (one model load)."""
    folder, _ = volumes
    out = tmp_path_factory.mktemp("geometry-out")
    proc = run_dssm(["segment", "--model", "heart-cine-mri", "--steps", "2", "-o", out, folder], cwd=out)
    assert proc.returncode == 0, describe(proc)
    return out


@pytest.mark.parametrize("name", ["plain", "oblique", "permuted", "dicom_oblique"])
def test_mask_is_on_exactly_the_input_grid(name, volumes, segmented) -> None:
    folder, _ = volumes
    image = read_image(folder / name if name.startswith("dicom") else folder / f"{name}.nii.gz")
    mask = sitk.ReadImage(str(segmented / f"{name}.nii.gz"))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == image.GetSize()
    assert same_grid(mask, image), grid_report(mask, image)
    if name != "plain":
        assert not np.allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=0.05)  # really oblique


def test_oblique_mask_equals_plain_mask_voxel_for_voxel(volumes, segmented) -> None:
    _, gt = volumes
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(segmented / "plain.nii.gz")))
    oblique = sitk.GetArrayFromImage(sitk.ReadImage(str(segmented / "oblique.nii.gz")))
    assert np.array_equal(plain, oblique), f"{int((plain != oblique).sum())} voxels differ"
    # and it is a real segmentation of the heart (anisotropic in-plane spacing and all)
    assert set(np.unique(plain).tolist()) == {0, RV, MYO, LV}
    assert dice(plain, gt, LV) > 0.85, dice(plain, gt, LV)


def test_dicom_series_mask_equals_plain_mask(volumes, segmented) -> None:
    folder, _ = volumes
    series = read_image(folder / "dicom_oblique")
    oblique = sitk.ReadImage(str(folder / "oblique.nii.gz"))
    assert same_grid(series, oblique, tol=1e-4), grid_report(series, oblique)  # the series reads back as written
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(segmented / "plain.nii.gz")))
    dicom = sitk.GetArrayFromImage(sitk.ReadImage(str(segmented / "dicom_oblique.nii.gz")))
    assert np.array_equal(plain, dicom), f"{int((plain != dicom).sum())} voxels differ"


def test_a_folder_of_two_dicom_series_is_refused_naming_each(volumes, tmp_path) -> None:
    """A folder exported from a scanner often holds several series (a localizer beside the cine). Only the first
    used to be segmented, without a word; now the folder is refused, each series named, and nothing written."""
    folder, _ = volumes
    exam = tmp_path / "exam"
    shutil.copytree(folder / "dicom_oblique", exam)
    write_dicom_series(sitk.ReadImage(str(folder / "plain.nii.gz"))[:, :, :2], exam, series=7, description="localizer")
    out = tmp_path / "out"
    proc = run_dssm(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", out, exam], cwd=tmp_path)
    line = assert_one_error_line(proc.returncode, proc.stderr)
    assert f"{exam} holds 2 DICOM series (" in line, line
    assert "series 1 'dssm test series' (4 files)" in line and "series 7 'localizer' (2 files)" in line, line
    assert "put each series in a folder of its own" in line
    assert not out.exists() or not any(out.iterdir())


def test_one_file_of_a_dicom_series_is_segmented_with_a_note_to_give_the_folder(volumes, tmp_path) -> None:
    folder, _ = volumes
    series = folder / "dicom_oblique"
    proc = run_dssm(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", "s1slice002.dcm"],
                    cwd=series)
    assert proc.returncode == 0, describe(proc)
    assert (tmp_path / "out" / "s1slice002.nii.gz").is_file()
    assert (f"dssm: note: s1slice002.dcm is one slice of a DICOM series of 4 files in {series}; give the folder to "
            "segment the whole volume") in proc.stderr.splitlines(), proc.stderr


def test_a_dicom_series_with_a_slice_missing_or_cut_off_is_refused(volumes, tmp_path) -> None:
    """A slice file lost or cut off in a copy drops out of the series; ITK then stacks the rest as an even volume,
    and every slice after the gap used to be placed a gap off, without a word."""
    folder, _ = volumes
    for damage in ("missing", "cut"):
        series = tmp_path / damage
        shutil.copytree(folder / "dicom_oblique", series)
        second = series / "s1slice001.dcm"
        if damage == "missing":
            second.unlink()
        else:
            second.write_bytes(second.read_bytes()[:2000])
        proc = run_dssm(["segment", "--model", "heart-cine-mri", "--steps", "0", "-o", tmp_path / "out", series],
                        cwd=tmp_path)
        line = assert_one_error_line(proc.returncode, proc.stderr)
        assert f"{series}: the 3 slices of its DICOM series are not evenly spaced (gaps 8.00 to 16.00 mm)" in line, line
        assert not (tmp_path / "out" / f"{damage}.nii.gz").exists()


def test_permuted_axes_give_the_permuted_mask(volumes, segmented) -> None:
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(segmented / "plain.nii.gz")))
    permuted = sitk.GetArrayFromImage(sitk.ReadImage(str(segmented / "permuted.nii.gz")))
    assert permuted.shape == plain.transpose(1, 2, 0).shape
    assert np.array_equal(permuted, plain.transpose(1, 2, 0)), \
        f"{int((permuted != plain.transpose(1, 2, 0)).sum())} voxels differ"


def test_permuted_mask_is_the_same_physical_segmentation(volumes, segmented) -> None:
    """Resampled (nearest) into the oblique volume's physical space, the permuted mask is the oblique mask."""
    oblique = sitk.ReadImage(str(segmented / "oblique.nii.gz"))
    permuted = sitk.ReadImage(str(segmented / "permuted.nii.gz"))
    resampled = sitk.Resample(permuted, oblique, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    a, b = sitk.GetArrayFromImage(oblique), sitk.GetArrayFromImage(resampled)
    assert (a == b).mean() > 0.999, (a != b).sum()


# ---------------------------------------------------------------------------------------------------------
# 2D images: PNG/JPG in, PNG out, at the input's own size


def _segment_in_process(args, capfd):
    code = cli.main([str(a) for a in args])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    return captured


def test_xray_png_native_and_512_upsampled(tmp_path, capfd) -> None:
    """A Montgomery X-ray from lungs-cxr's validation split, at the shared 256 px and upsampled to a native-like
    512 x 512 (measured lung Dice 0.977 at 256 px)."""
    name = "MCUCXR_0006_0.png"
    _need(CXR / "images" / name)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(CXR / "images" / name, inputs / "xray256.png")
    big = Image.open(CXR / "images" / name).convert("L").resize((512, 512), Image.BICUBIC)
    big.save(inputs / "xray512.png")
    gt = np.asarray(Image.open(CXR / "masks" / name).convert("L")) > 127
    out = tmp_path / "out"
    _segment_in_process(["segment", "--model", "lungs-cxr", "--steps", "1", "-o", out, inputs], capfd)
    assert sorted(p.name for p in out.iterdir()) == ["xray256.png", "xray512.png"]
    for stem, size in (("xray256", 256), ("xray512", 512)):
        mask_img = Image.open(out / f"{stem}.png")
        assert mask_img.size == (size, size) and mask_img.mode == "L"
        mask = np.asarray(mask_img)
        assert set(np.unique(mask).tolist()) <= {0, 1}
        ref = gt if size == 256 else \
            np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((512, 512), Image.NEAREST)) > 0
        score = dice(mask.astype(bool), ref, True)
        assert score > 0.93, f"{stem}: lung Dice {score:.3f}"
    # the sitk view of the output agrees with the input grid (2D)
    assert same_grid(sitk.ReadImage(str(out / "xray512.png")), sitk.ReadImage(str(inputs / "xray512.png")))


def test_rgb_dermoscopy_jpg_at_native_size_gives_png(tmp_path, capfd) -> None:
    """An RGB JPG at a PH2-like native size (765 x 575, not square) into the skin model -> PNG of that size."""
    name = "ISIC_0000007"  # in skin-lesion-dermoscopy's validation split
    _need(ISIC / "images" / f"{name}.jpg")
    rgb = Image.open(ISIC / "images" / f"{name}.jpg").convert("RGB").resize((765, 575), Image.BICUBIC)
    src = tmp_path / "lesion.jpg"
    rgb.save(src, quality=95)
    gt = np.asarray(Image.open(ISIC / "masks" / f"{name}_segmentation.png").convert("L").resize((765, 575),
                                                                                                Image.NEAREST)) > 127
    out = tmp_path / "out"
    _segment_in_process(["segment", "--model", "skin-lesion-dermoscopy", "--steps", "1", "-o", out, src], capfd)
    assert [p.name for p in out.iterdir()] == ["lesion.png"]
    mask = np.asarray(Image.open(out / "lesion.png"))
    assert mask.shape == (575, 765)
    assert set(np.unique(mask).tolist()) <= {0, 1}
    score = dice(mask.astype(bool), gt, True)
    assert score > 0.85, f"lesion Dice {score:.3f}"  # measured 0.913


def test_a_2d_nifti_nrrd_or_mha_image_keeps_its_geometry_in_a_nifti_mask(tmp_path, capfd) -> None:
    """A 2D X-ray stored as NIfTI, NRRD or MHA (as converters and Slicer write one) is placed in space by its
    origin and direction, which a PNG cannot hold: its mask and uncertainty map are NIfTI files on exactly its
    grid, and the mask is the one the same pixels give as a PNG (the pixels, not the header, are segmented)."""
    name = "MCUCXR_0006_0.png"
    _need(CXR / "images" / name)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(CXR / "images" / name, inputs / "xray.png")
    xray = sitk.ReadImage(str(inputs / "xray.png"))
    placed = sitk.Image(xray)
    placed.SetOrigin((-120.5, 37.25))
    placed.SetDirection((0.0, 1.0, 1.0, 0.0))  # the rows run along x: a transposed scan
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        sitk.WriteImage(placed, str(inputs / f"placed{suffix.replace('.', '_')}{suffix}"))
    # the same pixels as a 300-dpi TIFF, whose print resolution SimpleITK reads as a spacing of 0.085 mm
    Image.open(inputs / "xray.png").save(inputs / "print.tif", dpi=(300, 300))
    assert sitk.ReadImage(str(inputs / "print.tif")).GetSpacing()[0] == pytest.approx(25.4 / 300, rel=1e-3)
    out = tmp_path / "out"
    captured = _segment_in_process(["segment", "--model", "lungs-cxr", "--steps", "1", "--uncertainty",
                                    "--uncertainty-chains", "2", "-o", out, inputs], capfd)
    written = sorted(p.name for p in out.iterdir())
    stems = ["placed_mha", "placed_nii_gz", "placed_nrrd"]
    assert written == sorted(["xray.png", "xray_uncertainty.png", "print.png", "print_uncertainty.png"]
                             + [f"{s}.nii.gz" for s in stems] + [f"{s}_uncertainty.nii.gz" for s in stems]), written
    png_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "xray.png")))
    for stem in stems:
        mask = sitk.ReadImage(str(out / f"{stem}.nii.gz"))
        assert mask.GetDimension() == 2 and same_grid(mask, placed), grid_report(mask, placed)
        assert np.array_equal(sitk.GetArrayFromImage(mask), png_mask), stem
        uncertainty = sitk.ReadImage(str(out / f"{stem}_uncertainty.nii.gz"))
        assert uncertainty.GetPixelID() == sitk.sitkFloat32 and same_grid(uncertainty, placed)
    # areas: in mm^2 where the header gives a pixel size, in pixels for a PNG, which has none
    lines = {ln.split(" -> ")[1].split(":")[0]: ln.split(": ", 1)[1] for ln in captured.out.splitlines()
             if "uncertain (" in ln}
    assert len(lines) == 5 and all(lines[f"{s}_uncertainty.nii.gz"].endswith(" mm2") for s in stems), lines
    # a picture's areas are its pixels, whatever print resolution it carries
    assert lines["xray_uncertainty.png"].endswith(" px")
    assert lines["print_uncertainty.png"] == lines["xray_uncertainty.png"]
