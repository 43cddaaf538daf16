"""Reading, checking and writing images with SimpleITK.

Everything that reaches the network passes :func:`read_image` and :func:`check_image`, so that bad input
gets one clear :class:`~DSSMSegmentLib.errors.DSSMError` instead of a traceback from deep inside a library.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, List

import numpy as np
import SimpleITK as sitk

from .errors import DSSMError

IMAGE_SUFFIXES_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES_3D = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
IMAGE_SUFFIXES = IMAGE_SUFFIXES_2D + IMAGE_SUFFIXES_3D

# ITK prints a warning on every read of many real files (ACDC's NIfTI headers: "unexpected scales in sform").
# They are harmless for us and would flood the user, so they are switched off once, here.
sitk.ProcessObject.SetGlobalWarningDisplay(False)


def has_image_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def output_name(path: Path, is_2d: bool) -> str:
    """``X.nii.gz`` for a volume and ``X.png`` for a 2D image, ``X`` being the input's name without suffix."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name + (".png" if is_2d else ".nii.gz")


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def expand_inputs(inputs: Iterable[str]) -> List[Path]:
    """Files stay files; a DICOM series folder is one input; another folder gives its image files."""
    found: List[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DSSMError(f"input not found: {path}")
        if path.is_file():
            found.append(path)
        elif is_dicom_folder(path):
            found.append(path)
        else:
            children = sorted(p for p in path.iterdir() if (p.is_file() and has_image_suffix(p)) or is_dicom_folder(p))
            if not children:
                raise DSSMError(f"no images found in folder {path} (looked for NIfTI, NRRD, MHA, DICOM, PNG, JPG, BMP)")
            found.extend(children)
    return found


def read_image(path: Path) -> sitk.Image:
    """Read a file or a DICOM series folder; raise a DSSMError if it is not an image."""
    path = Path(path)
    try:
        if path.is_dir():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not ids:
                raise DSSMError(f"{path} is a folder without a DICOM series")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DSSMError(
            f"cannot read {path}: not an image that SimpleITK can read (NIfTI, NRRD, MHA, DICOM series, "
            f"PNG/JPG/BMP). {first[:160]}"
        ) from None


def image_channels(image: sitk.Image) -> int:
    return image.GetNumberOfComponentsPerPixel()


def to_channels(image: sitk.Image, in_channels: int, name: str = "image") -> np.ndarray:
    """Check an image and return it as a float32 array (C, Z, Y, X); a 2D image has Z = 1.

    Grayscale stored as RGB(A) (all colour channels equal) is accepted by a one-channel model; any other
    mismatch in channels is an error, as are 4D images, empty or constant images and NaN/inf values.
    """
    dim = image.GetDimension()
    if dim == 4:
        raise DSSMError(
            f"{name} is 4D ({'x'.join(map(str, image.GetSize()))}); DSSM segments one 2D image or 3D volume "
            "at a time. Extract one time frame first (e.g. in Slicer's Sequences module, or sitk.Extract).")
    if dim not in (2, 3):
        raise DSSMError(f"{name} has {dim} dimensions; expected a 2D image or a 3D volume")
    if any(s == 0 for s in image.GetSize()):
        raise DSSMError(f"{name} is empty (size {image.GetSize()})")
    array = sitk.GetArrayViewFromImage(image)
    channels = image_channels(image)
    array = np.asarray(array, dtype=np.float32)
    if channels == 1:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    if dim == 2:
        array = array[:, None]
    if channels == 4 and in_channels in (1, 3):  # RGBA: drop the alpha channel
        array = array[:3]
        channels = 3
    if channels == 3 and in_channels == 1:
        if np.array_equal(array[0], array[1]) and np.array_equal(array[0], array[2]):
            array, channels = array[:1], 1
    if channels != in_channels:
        raise DSSMError(
            f"{name} has {channels} channel(s) but the model expects {in_channels} "
            f"({'RGB colour' if in_channels == 3 else 'grayscale' if in_channels == 1 else 'multi-channel'}); "
            "choose a model made for this kind of image.")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DSSMError(f"{name} contains {bad} NaN or infinite voxel(s); fix or mask them before segmenting.")
    if float(array.max()) == float(array.min()):
        raise DSSMError(f"{name} is constant (every voxel is {float(array.min()):g}); there is nothing to segment.")
    return np.ascontiguousarray(array)


def spacing_zyx(image: sitk.Image) -> tuple:
    """Spacing in array order (Z, Y, X); a 2D image gets Z = 1."""
    sp = image.GetSpacing()
    return (1.0, sp[1], sp[0]) if image.GetDimension() == 2 else (sp[2], sp[1], sp[0])


def label_image_like(labels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label image on exactly the reference's grid (size, origin, spacing, direction)."""
    if reference.GetDimension() == 2:
        labels = labels.reshape(labels.shape[-2:])
    out = sitk.GetImageFromArray(labels.astype(np.uint8))
    out.SetOrigin(reference.GetOrigin())
    out.SetSpacing(reference.GetSpacing())
    out.SetDirection(reference.GetDirection())
    return out


def write_image_atomically(image: sitk.Image, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a failure never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
