"""The benchmark's cases: a typical ACDC volume, a 512x512 chest X-ray and a 256x256x20 MRI, built from the
shared data (needs SimpleITK), saved to and loaded from ``.npz`` so that a host without SimpleITK or the data
can run them from arrays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import DSSMError

QUICK_SLICES = 3  # --quick: the middle slices of the ACDC volume
XRAY_MODEL = "lungs-cxr"


def case_specs(model: str, quick: bool) -> List[dict]:
    cases = [{"name": "acdc", "title": "ACDC volume" + (f" ({QUICK_SLICES} middle slices)" if quick else ""),
              "model": model}]
    if not quick:
        cases += [{"name": "xray512", "title": "X-ray 512x512", "model": XRAY_MODEL},
                  {"name": "mri256x20", "title": "MRI 256x256x20", "model": model}]
    return cases


def _first_val_key(bundle, prefix: str) -> Optional[str]:
    split = bundle.meta.get("training", {}).get("split", {})
    for key in split.get("val", []):
        if key.startswith(prefix + ":"):
            return key.split(":", 1)[1]
    return None


def prepare_cases(model: str, quick: bool, folder: Path) -> Dict[str, dict]:
    """Build the benchmark's cases from the shared data (needs SimpleITK): image files in ``folder`` and, for
    each case, its arrays and geometry (so that it can also run from arrays), and its ground truth."""
    import SimpleITK as sitk

    from .. import imageio  # noqa: F401 - switches ITK's per-file warnings off
    from ..bundle import resolve_model
    from ..datasets import SHARED_DATA

    heart = resolve_model(model)
    patient = _first_val_key(heart, "acdc") or "patient011"
    acdc_dir = SHARED_DATA / "acdc" / "training" / patient
    frames = sorted(p for p in acdc_dir.glob(f"{patient}_frame*.nii.gz") if "_gt" not in p.name)
    if not frames:
        raise DSSMError(f"ACDC data not found in {acdc_dir} (set DSSM_DATA to the shared/data folder, "
                        "or pass --cases FILE.npz)")
    volume = sitk.ReadImage(str(frames[0]))
    gt_volume = sitk.ReadImage(str(frames[0]).replace(".nii.gz", "_gt.nii.gz"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}

    def add(name, image, gt, suffix):
        path = folder / f"{name}{suffix}"
        sitk.WriteImage(image, str(path), True)
        array = sitk.GetArrayFromImage(image)
        cases[name] = {"path": str(path), "array": array, "spacing": image.GetSpacing(),
                       "origin": image.GetOrigin(), "direction": image.GetDirection(),
                       "vector": image.GetNumberOfComponentsPerPixel() > 1,
                       "gt": sitk.GetArrayFromImage(gt).astype(np.uint8), "size": list(image.GetSize())}

    if quick and volume.GetSize()[2] > QUICK_SLICES:  # the middle slices, with their real geometry
        z0 = (volume.GetSize()[2] - QUICK_SLICES) // 2
        add("acdc", volume[:, :, z0:z0 + QUICK_SLICES], gt_volume[:, :, z0:z0 + QUICK_SLICES], ".nii.gz")
    else:
        add("acdc", volume, gt_volume, ".nii.gz")
    specs = {c["name"] for c in case_specs(model, quick)}
    if "mri256x20" in specs:
        # the same field of view on a 256x256x20 grid (square pixels; the short side is padded with background)
        size, spacing = volume.GetSize(), volume.GetSpacing()
        fov = [n * s for n, s in zip(size, spacing)]
        inplane = max(fov[0], fov[1]) / 256
        new_spacing = (inplane, inplane, fov[2] / 20)
        center = volume.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
        ref = sitk.Image(256, 256, 20, volume.GetPixelID())
        ref.SetSpacing(new_spacing)
        ref.SetDirection(volume.GetDirection())
        ref.SetOrigin(center)
        offset = ref.TransformContinuousIndexToPhysicalPoint([127.5, 127.5, 9.5])
        ref.SetOrigin([2 * c - o for c, o in zip(center, offset)])
        background = float(sitk.GetArrayViewFromImage(volume).min())
        mri = sitk.Resample(volume, ref, sitk.Transform(), sitk.sitkLinear, background)
        gt = sitk.Resample(gt_volume, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        add("mri256x20", mri, gt, ".nii.gz")
    if "xray512" in specs:
        lungs = resolve_model(XRAY_MODEL)
        key = _first_val_key(lungs, "cxr_lung") or "CHNCXR_0002_0"
        png = SHARED_DATA / "cxr_lung" / "images" / f"{key}.png"
        if not png.exists():
            raise DSSMError(f"chest X-ray not found: {png}")
        small = sitk.ReadImage(str(png))
        small_gt = sitk.ReadImage(str(SHARED_DATA / "cxr_lung" / "masks" / f"{key}.png"))
        if small.GetNumberOfComponentsPerPixel() > 1:
            small = sitk.VectorIndexSelectionCast(small, 0)
        if small_gt.GetNumberOfComponentsPerPixel() > 1:
            small_gt = sitk.VectorIndexSelectionCast(small_gt, 0)
        # a 512x512 acquisition of the same anatomy: B-spline upsampling of the real 256x256 image
        ref = sitk.Image(512, 512, small.GetPixelID())
        ref.SetSpacing([s * small.GetSize()[i] / 512 for i, s in enumerate(small.GetSpacing())])
        ref.SetOrigin(small.GetOrigin())
        big = sitk.Resample(sitk.Cast(small, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkBSpline, 0.0)
        big = sitk.Cast(sitk.Clamp(big, sitk.sitkFloat32, 0, 255), sitk.sitkUInt8)
        big_gt = sitk.Resample(small_gt, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        big_gt = sitk.Cast(sitk.BinaryThreshold(big_gt, 128, 255, 1, 0), sitk.sitkUInt8)
        add("xray512", big, big_gt, ".png")
    return cases


def save_cases(cases: Dict[str, dict], path: Path) -> None:
    arrays = {}
    for name, c in cases.items():
        arrays[f"{name}/array"] = c["array"]
        arrays[f"{name}/gt"] = c["gt"]
        arrays[f"{name}/geometry"] = np.array(json.dumps(
            {"spacing": list(c["spacing"]), "origin": list(c["origin"]), "direction": list(c["direction"]),
             "vector": bool(c["vector"]), "size": c["size"]}))
    np.savez_compressed(path, **arrays)


def load_cases(path: Path) -> Dict[str, dict]:
    data = np.load(path)
    cases = {}
    for key in data.files:
        name, field = key.split("/", 1)
        c = cases.setdefault(name, {"path": None})
        if field == "geometry":
            c.update(json.loads(str(data[key])))
        else:
            c[field] = data[key]
    return cases



def segmenter_slices(case: dict) -> int:
    array = np.asarray(case["array"])
    dim = array.ndim - (1 if case.get("vector") else 0)
    if dim == 2:
        return 1
    spacing_zyx = tuple(reversed(case["spacing"]))
    from ..preprocess import slice_axis

    axis = slice_axis(spacing_zyx, array.shape[:3])
    return int(array.shape[axis])

