"""Training data: dataset layouts, patient-level splits, and the compact preprocessed cache.

A dataset is found by name in ``../shared/data`` (or given as a folder in one of the same layouts):

======================  ============================================  ===========================
name                    layout                                        case / split unit
======================  ============================================  ===========================
``acdc``                ``training/patientNNN/patientNNN_frameMM``     patient, stratified by group
``la2018``              ``imagesTr/X.nii.gz`` + ``labelsTr/X.nii.gz``  volume
``prostate158``         ``NNN/t2.nii.gz`` + ``t2_anatomy_reader1``     patient
``cxr_lung``            ``images/X.png`` + ``masks/X.png``             image, stratified by source
``isic2018``            ``images/X.jpg`` + ``masks/X_segmentation.png`` image
``ph2``                 ``images/X.png`` + ``masks/X_lesion.png``      image
``mnms1``               ``VENDOR/ID/ID_sa_ED.nii.gz`` + ``..._gt``     subject, stratified by vendor
======================  ============================================  ===========================

The cache (:func:`build_cache`) holds every slice already preprocessed exactly as inference will see it
(:mod:`DSSMSegmentLib.preprocess`), cropped to a fixed tile, quantised to 8 bits per case and compressed,
so that training can move to a GPU host cheaply (at most 64 MiB per dataset).
"""

from __future__ import annotations

import io
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import DSSMError

SHARED_DATA = Path(os.environ.get("DSSM_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@dataclass
class Case:
    case_id: str  # unique per image/volume
    patient: str  # the split unit
    group: str  # stratum for the split
    image: Path
    label: Path
    dataset: str


def _acdc(root: Path) -> List[Case]:
    cases = []
    base = root / "training" if (root / "training").is_dir() else root
    for pdir in sorted(base.glob("patient*")):
        info = (pdir / "Info.cfg").read_text() if (pdir / "Info.cfg").exists() else ""
        m = re.search(r"Group:\s*(\S+)", info)
        for gt in sorted(pdir.glob("*_frame*_gt.nii.gz")):
            img = gt.with_name(gt.name.replace("_gt", ""))
            cases.append(Case(img.name.replace(".nii.gz", ""), pdir.name, m.group(1) if m else "", img, gt, "acdc"))
    return cases


def _mnms(root: Path) -> List[Case]:
    """M&Ms-1 cine MRI, one folder per vendor (``philips/``...), ED and ES frames per subject; ACDC's labels."""
    cases = []
    for vendor in sorted(d for d in root.iterdir() if d.is_dir()):
        for sdir in sorted(d for d in vendor.iterdir() if d.is_dir()):
            for gt in sorted(sdir.glob("*_sa_*_gt.nii.gz")):
                img = gt.with_name(gt.name.replace("_gt", ""))
                if img.exists():
                    cases.append(Case(img.name.replace(".nii.gz", ""), sdir.name, vendor.name, img, gt, "mnms1"))
    return cases


def _paired(root: Path, img_dir: str, lab_dir: str, pattern: str, to_label, dataset: str, group=None) -> List[Case]:
    cases = []
    for img in sorted((root / img_dir).glob(pattern)):
        lab = root / lab_dir / to_label(img)
        if lab.exists():
            stem = img.name.split(".")[0]
            cases.append(Case(stem, stem, group(stem) if group else "", img, lab, dataset))
    return cases


def _prostate(root: Path) -> List[Case]:
    return [Case(p.name, p.name, "", p / "t2.nii.gz", p / "t2_anatomy_reader1.nii.gz", "prostate158")
            for p in sorted(root.iterdir()) if (p / "t2_anatomy_reader1.nii.gz").exists()]


LAYOUTS = {
    "acdc": _acdc,
    "la2018": lambda r: _paired(r, "imagesTr", "labelsTr", "*.nii.gz", lambda p: p.name, "la2018"),
    "prostate158": _prostate,
    "mnms1": _mnms,
    "cxr_lung": lambda r: _paired(r, "images", "masks", "*.png", lambda p: p.name, "cxr_lung",
                                  group=lambda s: s.split("_")[0]),
    "isic2018": lambda r: _paired(r, "images", "masks", "*.jpg", lambda p: p.stem + "_segmentation.png", "isic2018"),
    "ph2": lambda r: _paired(r, "images", "masks", "*.png", lambda p: p.stem + "_lesion.png", "ph2"),
}

# Mask value -> class index, for datasets whose masks store 255 for the foreground.
BINARY_255 = {"cxr_lung", "isic2018", "ph2"}


def find_cases(spec: str) -> List[Case]:
    """``spec`` is a dataset name, ``name=folder``, or several of those joined by ``+``."""
    cases: List[Case] = []
    for part in spec.split("+"):
        name, _, folder = part.partition("=")
        if name not in LAYOUTS:
            raise DSSMError(f"unknown dataset '{name}' (known: {', '.join(LAYOUTS)}); "
                            "give a folder as NAME=FOLDER for a dataset in one of those layouts")
        root = Path(folder) if folder else SHARED_DATA / name
        if not root.is_dir():
            raise DSSMError(f"dataset folder not found: {root}")
        found = LAYOUTS[name](root)
        if not found:
            raise DSSMError(f"no image/label pairs found in {root} for layout '{name}'")
        cases.extend(found)
    return cases


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int = 0) -> Dict[str, List[str]]:
    """Split by patient, stratified by group, with a fixed seed. Returns patient ids per split."""
    by_group: Dict[str, List[str]] = defaultdict(list)
    for patient, group in sorted({(c.dataset + ":" + c.patient, c.group) for c in cases}):
        by_group[group].append(patient)
    rng = random.Random(seed)
    train, val = [], []
    for group in sorted(by_group):
        patients = sorted(by_group[group])
        rng.shuffle(patients)
        n_val = int(round(len(patients) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(patients) > 1:
            n_val = 1
        val += patients[:n_val]
        train += patients[n_val:]
    return {"train": sorted(train), "val": sorted(val)}


def case_key(case: Case) -> str:
    return case.dataset + ":" + case.patient


def read_label_array(case: Case) -> np.ndarray:
    import SimpleITK as sitk

    from .imageio import read_image

    arr = sitk.GetArrayFromImage(read_image(case.label))
    if arr.ndim == 3 and case.dataset in BINARY_255 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    if case.dataset in BINARY_255:
        arr = (arr > 127).astype(np.uint8)
    return arr.astype(np.uint8)


# ------------------------------------------------------------------------------------------------------
# The cache


def _crop_or_pad(a: np.ndarray, tile: Sequence[int], center: Sequence[int], fill) -> np.ndarray:
    """Crop/pad the last two axes of ``a`` to ``tile`` centred on ``center``."""
    out = np.empty(a.shape[:-2] + tuple(tile), dtype=a.dtype)
    out[...] = fill
    h, w = a.shape[-2:]
    y0, x0 = int(center[0]) - tile[0] // 2, int(center[1]) - tile[1] // 2
    sy, sx = max(0, y0), max(0, x0)
    ey, ex = min(h, y0 + tile[0]), min(w, x0 + tile[1])
    out[..., sy - y0:ey - y0, sx - x0:ex - x0] = a[..., sy:ey, sx:ex]
    return out


def preprocess_case(case: Case, prep, in_channels: int, tile: Optional[Sequence[int]]):
    """Image and label of one case as inference sees them: slices (S, C, H, W) float32, labels (S, H, W)."""
    import torch

    from . import preprocess as pp
    from .imageio import read_image

    image = read_image(case.image)
    slices, axis, target = pp.prepare_slices(image, prep, in_channels, str(case.image))
    size_zyx = tuple(reversed(image.GetSize()))
    labels = read_label_array(case).reshape(size_zyx if len(size_zyx) == 3 else (1, *size_zyx))
    lab = np.moveaxis(labels, axis, 0)
    x = pp.resize(torch.from_numpy(slices), target).numpy()
    y = pp.resize(torch.from_numpy(lab[:, None].astype(np.float32)), target, mode="nearest").numpy()[:, 0]
    y = y.astype(np.uint8)
    if tile is not None and tuple(tile) != tuple(target):
        fg = np.argwhere(y.max(0) > 0)
        center = ((fg.min(0) + fg.max(0)) // 2) if len(fg) else (np.array(target) // 2)
        x = _crop_or_pad(x, tile, center, x.min(axis=(0, 2, 3))[None, :, None, None])
        y = _crop_or_pad(y, tile, center, 0)
    return x.astype(np.float32), y


def build_cache(spec: str, prep, in_channels: int, tile: Optional[Sequence[int]], out_path: Path,
                encoding: str = "jpeg", progress: bool = True) -> Path:
    """Preprocess every case of a dataset into one compressed ``.npz`` (see module docstring)."""
    from tqdm import tqdm

    cases = find_cases(spec)
    images, labels, slice_case, lo_hi, names, patients, groups = [], [], [], [], [], [], []
    for idx, case in enumerate(tqdm(cases, desc=f"cache {spec}", disable=not progress, unit="case")):
        x, y = preprocess_case(case, prep, in_channels, tile)
        lo, hi = float(x.min()), float(x.max())
        q = np.round((x - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
        for s in range(q.shape[0]):
            images.append(_encode(q[s], encoding))
            labels.append(y[s])
            slice_case.append(idx)
        lo_hi.append((lo, hi))
        names.append(case.case_id)
        patients.append(case_key(case))
        groups.append(case.group)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(
        labels=np.stack(labels), slice_case=np.array(slice_case, dtype=np.int32),
        lo_hi=np.array(lo_hi, dtype=np.float32), case_ids=np.array(names), patients=np.array(patients),
        groups=np.array(groups), encoding=np.array(encoding), in_channels=np.array(in_channels),
    )
    if encoding == "raw":
        payload["images"] = np.stack(images)
    else:
        payload["images_encoded"] = np.array(images, dtype=object)
    # written beside it and then moved in place, so that a stopped build leaves no cut-off cache (nor an earlier
    # cache replaced by one)
    partial = out_path.with_name(f".{out_path.stem}.partial.npz")
    try:
        np.savez_compressed(partial, **payload)
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    return out_path


def cache_datasets(data: "CachedData") -> set:
    """The datasets a loaded cache holds slices of (its patients are ``DATASET:PATIENT``)."""
    return {p.split(":", 1)[0] for p in np.unique(data.patients)}


def spec_datasets(spec: str) -> set:
    """The dataset names of a dataset spec (``acdc+mnms1``, ``acdc=FOLDER``)."""
    return {part.partition("=")[0] for part in spec.split("+")}


def _encode(q: np.ndarray, encoding: str):
    """One quantised slice (C, H, W) uint8 -> stored form."""
    if encoding == "raw":
        return q
    kind, _, quality = encoding.partition(":")
    if kind in ("jpeg", "webp"):  # "jpeg" (quality 95), "webp" (quality 80), or either with ":QUALITY"
        from PIL import Image

        buf = io.BytesIO()
        img = Image.fromarray(np.moveaxis(q, 0, -1) if q.shape[0] == 3 else q[0])
        img.save(buf, format=kind.upper(), quality=int(quality or (95 if kind == "jpeg" else 80)))
        return np.frombuffer(buf.getvalue(), dtype=np.uint8)
    raise ValueError(f"unknown cache encoding {encoding!r} (expected raw, jpeg[:QUALITY] or webp[:QUALITY])")


@dataclass
class CachedData:
    """A loaded cache: float images in normalised units (N, C, H, W), labels (N, H, W), per-slice patient."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray  # per slice
    groups: np.ndarray  # per slice
    case_ids: np.ndarray  # per slice

    def subset(self, patient_ids: Sequence[str]) -> "CachedData":
        keep = np.isin(self.patients, np.asarray(list(patient_ids)))
        return CachedData(self.images[keep], self.labels[keep], self.patients[keep], self.groups[keep],
                          self.case_ids[keep])


def is_cache(path: Path) -> bool:
    """Whether ``path`` is a training cache that :func:`build_cache` wrote (and may therefore replace)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return {"slice_case.npy", "lo_hi.npy", "labels.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_cache(path: Path) -> CachedData:
    with np.load(path, allow_pickle=True) as z:  # object arrays hold the JPEG or WebP bytes build_cache wrote
        slice_case = z["slice_case"]
        lo_hi = z["lo_hi"][slice_case]
        if "images" in z:
            q = z["images"]
        else:
            from PIL import Image

            mode = "L" if int(z["in_channels"]) == 1 else "RGB"  # WebP decodes a grey image as RGB
            decoded = [np.asarray(Image.open(io.BytesIO(b.tobytes())).convert(mode)) for b in z["images_encoded"]]
            q = np.stack([np.moveaxis(d, -1, 0) if d.ndim == 3 else d[None] for d in decoded])
        images = (q.astype(np.float32) / 255.0) * (lo_hi[:, 1] - lo_hi[:, 0])[:, None, None, None] \
            + lo_hi[:, 0][:, None, None, None]
        return CachedData(images.astype(np.float16), z["labels"], z["patients"][slice_case],
                          z["groups"][slice_case], z["case_ids"][slice_case])
