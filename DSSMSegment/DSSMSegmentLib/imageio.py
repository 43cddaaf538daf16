"""Reading, checking and writing images with SimpleITK.

Everything that reaches the network passes :func:`read_image` and :func:`check_image`, so that bad input
gets one clear :class:`~DSSMSegmentLib.errors.DSSMError` instead of a traceback from deep inside a library.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import sys
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterable, List, Optional

import numpy as np
import SimpleITK as sitk

from .errors import DSSMError
from .files import follow_umask

IMAGE_SUFFIXES_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES_3D = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
IMAGE_SUFFIXES = IMAGE_SUFFIXES_2D + IMAGE_SUFFIXES_3D

# ITK prints a warning on every read of many real files (ACDC's NIfTI headers: "unexpected scales in sform").
# They are harmless for us and would flood the user, so they are switched off once, here.
sitk.ProcessObject.SetGlobalWarningDisplay(False)


def has_image_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def stem_of(path: Path) -> str:
    """The input's name without its image suffix (``x.nii.gz`` -> ``x``; a DICOM folder keeps its name)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_name(path: Path, is_2d: Optional[bool] = None) -> str:
    """``X.png`` for a 2D picture file (PNG, JPG, BMP, TIFF) and ``X.nii.gz`` for anything else, ``X`` being the
    input's name without suffix: a 2D NIfTI, NRRD or MHA image keeps its origin, spacing and direction, which a
    PNG cannot hold. ``is_2d=False`` (a picture file type that held a volume, e.g. a 3D TIFF) gives ``X.nii.gz``."""
    picture = Path(path).name.lower().endswith(IMAGE_SUFFIXES_2D)
    return stem_of(path) + (".png" if picture and is_2d is not False else ".nii.gz")


# What ``dssm segment`` writes beside a mask (X_overlay.png, X_uncertainty.*): never an input of a later run.
OUTPUT_SUFFIXES = ("_overlay", "_uncertainty")
# Names that mark a label map (a ground truth or an earlier mask), e.g. ACDC's patient001_frame01_gt.nii.gz,
# ISIC's ISIC_0000000_segmentation.png
LABEL_MAP_NAME = re.compile(r"(^|[_.-])(gt|seg|segmentation|labels?|labelmap|masks?)$", re.IGNORECASE)
# A label map holds a few integer values; a real image (even 8-bit) holds many
LABEL_MAP_MAX_VALUES = 8


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and bool(dicom_series(path))


def dicom_series(folder: Path) -> tuple:
    """Each DICOM series in a folder, as a tuple of its files (GDCM's order). GDCM reads every file's header, so
    the answer is kept while the folder is unchanged (same modification time): the folder expansion, the read and
    the one-slice note then scan it once."""
    folder = Path(folder).resolve()
    return _scan_dicom_folder(str(folder), folder.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _scan_dicom_folder(folder: str, mtime_ns: int) -> tuple:
    with _quiet_native_stderr():
        return tuple(tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
                     for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))


def skip_reason(path: Path) -> Optional[str]:
    """Why a file found in a folder is not an image to segment (its name marks a label map or an output of
    ``dssm segment``), or None."""
    stem = stem_of(path)
    if stem.startswith("."):
        return "a hidden file (its name starts with '.', as the ._X copies macOS leaves)"
    if stem.lower().endswith(OUTPUT_SUFFIXES):
        return "an output of dssm segment"
    if LABEL_MAP_NAME.search(stem):
        return "a label map, by its name"
    return None


def label_map_values(image: sitk.Image) -> Optional[list]:
    """The values of an image that holds only a few non-negative integers (a label map), else None."""
    if image.GetNumberOfComponentsPerPixel() != 1 or not np.issubdtype(
            sitk.GetArrayViewFromImage(image).dtype, np.integer):
        return None
    array = sitk.GetArrayViewFromImage(image)
    if array.min() < 0 or array.max() > 65535:
        return None
    counts = np.bincount(np.asarray(array, dtype=np.int64).ravel())
    values = np.flatnonzero(counts)
    return [int(v) for v in values] if len(values) <= LABEL_MAP_MAX_VALUES else None


def may_be_label_map(path: Path) -> bool:
    """Whether an input may be a label map, from what is cheap to read: a file's header (a float or colour image is
    none), one slice of a DICOM series (one with more than :data:`LABEL_MAP_MAX_VALUES` values is none). True when
    unsure, e.g. a header that cannot be read (the full read then says why)."""
    try:
        with _quiet_native_stderr():
            if Path(path).is_dir():
                series = dicom_series(path)
                return not series or label_map_values(sitk.ReadImage(series[0][0])) is not None
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
    except RuntimeError:
        return True
    return reader.GetNumberOfComponents() == 1 and reader.GetPixelID() in (
        sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
        sitk.sitkUInt64, sitk.sitkInt64)


def expand_inputs(inputs: Iterable[str]) -> tuple:
    """``(images, skipped)``. Files named on the command line are always inputs; a DICOM series folder is one
    input; another folder gives its image files, less those :func:`skip_reason` names, which come back in
    ``skipped`` as ``(path, reason)``."""
    found: List[Path] = []
    skipped: List[tuple] = []
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
            for child in children:
                reason = skip_reason(child)
                if reason:
                    skipped.append((child, reason))
                else:
                    found.append(child)
            if not children:
                subfolders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
                hint = (f"; its {len(subfolders)} subfolder(s) are not searched: name them, e.g. {path / '*'}"
                        if subfolders else "")
                raise DSSMError(f"no images found in folder {path} (looked for NIfTI, NRRD, MHA, DICOM, PNG, JPG, "
                                f"BMP){hint}")
    # a file named and also found in a named folder (or named twice) is segmented once
    return list(dict.fromkeys(found)), list(dict.fromkeys(skipped))


@contextmanager
def _quiet_native_stderr():
    """Silence what C/C++ libraries print straight to file descriptor 2 while the block runs.

    ITK's own warnings are switched off above, but the NIfTI C library prints ``** ERROR: ...`` lines for
    malformed headers (e.g. a zero dimension) with plain ``fprintf(stderr)``, outside ITK's control. The
    user gets our one-line DSSMError instead. Python's own ``sys.stderr`` is flushed first and is unaffected.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (e.g. a GUI process): nothing to silence
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _sitk_reason(exc: Exception) -> str:
    """The informative part of a SimpleITK exception (not the 'Exception thrown in ... .cxx:99:' line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in")]
    lines = [re.sub(r"^(sitk::ERROR|itk::ERROR|ITK ERROR):\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", ln) for ln in lines]
    if not lines:
        return ""
    reason = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return reason[:200]


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32 and FLOAT64


def _nifti_header(path: Path) -> Optional[dict]:
    """The few NIfTI-1/-2 header fields we check ourselves, or None if ``path`` is not a readable NIfTI file."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")) or not path.is_file():
        return None
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            version = 1
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = int(struct.unpack(endian + "q", head[168:176])[0])
            version = 2
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        return None
    return {"endian": endian, "size": list(dims[1:ndim + 1]), "datatype": datatype, "bitpix": bitpix,
            "offset": offset, "gzip": opener is gzip.open, "version": version}


def _nifti_check_data(path: Path, header: dict) -> None:
    """Check a NIfTI file's voxel data ourselves, because the NIfTI reader hides two problems: a truncated
    file is read without an error (the missing part comes back as 0), and NaN/inf voxels of float images are
    silently replaced by 0. Either would give a confident mask of a corrupted image."""
    code = _NIFTI_FLOAT_TYPES.get(header["datatype"])
    dtype = np.dtype(header["endian"] + code) if code else None
    expected = int(np.prod(header["size"], dtype=np.int64)) * max(1, header["bitpix"] // 8)
    if not header["gzip"] and dtype is None:  # size check only; no need to read the data
        got = max(0, path.stat().st_size - header["offset"])
    else:
        got, bad, carry = 0, 0, b""
        try:
            with (gzip.open if header["gzip"] else open)(path, "rb") as f:
                f.seek(header["offset"])
                while got < expected:
                    block = f.read(min(1 << 24, expected - got))
                    if not block:
                        break
                    got += len(block)
                    if dtype is not None:
                        block = carry + block
                        usable = len(block) - len(block) % dtype.itemsize
                        bad += int((~np.isfinite(np.frombuffer(block[:usable], dtype=dtype))).sum())
                        carry = block[usable:]
        except (OSError, EOFError, ValueError):  # a cut-off or damaged gzip stream
            pass
        if got >= expected and bad:
            raise DSSMError(f"{path} contains {bad} NaN or infinite voxel(s); fix or mask them before segmenting.")
    if got < expected:
        raise DSSMError(f"{path} is truncated or corrupt: it holds less voxel data than the {expected} bytes its "
                        "header announces; copy or export the file again.")


# How far a NIfTI sform's rotation may be from orthonormal and still be read (as its nearest rotation): scanner
# software writes float32 direction cosines that are off by about 1e-4 (an M&Ms GE cine), which ITK refuses.
DIRECTION_TOLERANCE = 1e-2
_NIFTI1_GEOMETRY = (("pixdim", 76, "8f"), ("xyzt_units", 123, "b"), ("codes", 252, "2h"),
                    ("quatern", 256, "6f"), ("srow", 280, "12f"))


def _nifti1_fields(head: bytes, endian: str) -> dict:
    return {name: struct.unpack_from(endian + fmt, head, offset) for name, offset, fmt in _NIFTI1_GEOMETRY}


def _read_nifti_bytes(path: Path, size: int = -1) -> bytes:
    """The (decompressed) bytes of a NIfTI file, ``.nii`` or ``.nii.gz``: all of them, or the first ``size``."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if gz else open)(path, "rb") as f:
        return f.read(size)


def _nearest_orthonormal_sform(path: Path, header: Optional[dict]) -> Optional[tuple]:
    """For a NIfTI-1 file with an sform: ``(file bytes, sform with its rotation replaced by the nearest
    orthonormal one (same spacing and origin), deviation of the original rotation from orthonormal)``."""
    if header is None or header.get("version") != 1:
        return None
    data = bytearray(_read_nifti_bytes(path))
    fields = _nifti1_fields(bytes(data[:348]), header["endian"])
    if fields["codes"][1] <= 0:  # no sform: ITK reads the qform (always orthonormal), so nothing to repair
        return None
    srow = np.array(fields["srow"], dtype=np.float64).reshape(3, 4)
    spacing = np.linalg.norm(srow[:, :3], axis=0)
    if not (spacing > 0).all():
        return None
    rotation = srow[:, :3] / spacing
    u, _, vt = np.linalg.svd(rotation)
    srow[:, :3] = (u @ vt) * spacing  # the nearest rotation (polar decomposition), each axis its own spacing
    return data, srow, _off_orthonormal(rotation)


def _read_repaired_nifti(path: Path, header: dict, notes: Optional[list]) -> Optional[sitk.Image]:
    """Read a NIfTI-1 file that ITK refused for non-orthonormal direction cosines, if they are off by at most
    :data:`DIRECTION_TOLERANCE`: from a temporary copy whose sform holds the nearest orthonormal rotation."""
    found = _nearest_orthonormal_sform(path, header)
    if found is None:
        return None
    data, srow, deviation = found
    if deviation > DIRECTION_TOLERANCE:
        raise DSSMError(f"cannot read {path}: its direction cosines are off orthonormal by {deviation:.1e}, more than "
                        f"the {DIRECTION_TOLERANCE:g} that DSSMSegment corrects; the header's orientation (sform) is "
                        "broken: fix it, or re-export the image from the scanner or a converter (dcm2niix)")
    struct.pack_into(header["endian"] + "12f", data, 280, *srow.ravel())
    fd, tmp = tempfile.mkstemp(prefix="dssm-repaired-", suffix=".nii")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        image = sitk.ReadImage(tmp)
    finally:
        os.remove(tmp)
    if notes is not None:
        notes.append(f"{path}: direction cosines off orthonormal by {deviation:.1e}; read with the nearest "
                     "orthonormal direction (the mask keeps the input's own header geometry)")
    return image


def slices_in_its_series(path: Path) -> int:
    """How many files the DICOM series that the file ``path`` belongs to has in its folder (1: on its own)."""
    if not path.is_file() or path.suffix.lower() != ".dcm":
        return 1
    me = path.resolve()
    return max((len(files) for files in dicom_series(path.parent) if any(Path(f).resolve() == me for f in files)),
               default=1)


def _dicom_tags(file: str, keys: Iterable[str]) -> dict:
    """The values of those of ``keys`` that the DICOM file's header holds (its header only is read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {k: reader.GetMetaData(k).strip() for k in keys if reader.HasMetaDataKey(k)}


def _describe_series(series: tuple) -> str:
    """``series 5 'cine SAX' (30 files), ...``: each series by its number and description, as a scanner lists
    them (its UID where it has neither)."""
    parts = []
    for files in series:
        tags = _dicom_tags(files[0], ("0020|0011", "0008|103e", "0020|000e"))
        name = " ".join(filter(None, [tags.get("0020|0011", ""), repr(tags["0008|103e"]) if tags.get("0008|103e")
                                      else ""])) or tags.get("0020|000e", Path(files[0]).name)
        parts.append(f"series {name} ({len(files)} file{'s' if len(files) > 1 else ''})")
    return ", ".join(parts)


def _check_slice_positions(folder: Path, files: List[str]) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along their normal: a slice file missing or
    unreadable (left out of the series, so the slices after it would be placed one gap off), or several time
    frames at the same positions. ITK would stack them as an even volume, and the mask would be misplaced."""
    if len(files) < 3:
        return
    offsets = []
    for name in files:
        tags = _dicom_tags(name, ("0020|0032", "0020|0037"))
        try:
            position = [float(v) for v in tags["0020|0032"].split("\\")]
            cosines = [float(v) for v in tags["0020|0037"].split("\\")]
        except (KeyError, ValueError):  # no position or orientation: nothing to check against
            return
        offsets.append(float(np.dot(np.cross(cosines[:3], cosines[3:6]), position)))
    gaps = np.diff(np.sort(offsets))
    typical = float(np.median(gaps))
    if typical <= 0 or np.abs(gaps - typical).max() > 0.05 * typical + 1e-3:
        raise DSSMError(f"{folder}: the {len(files)} slices of its DICOM series are not evenly spaced (gaps "
                        f"{gaps.min():.2f} to {gaps.max():.2f} mm): a slice file missing or unreadable, or several "
                        "time frames in one series; copy the series again, or export one frame per folder")


def _jpeg_check(path: Path) -> None:
    """Refuse a cut-off JPEG file, which libjpeg (in ITK) decodes anyway, with its missing part grey, after a
    warning on stderr. Pillow decodes it strictly and says so (data after the image's end, e.g. a phone's motion
    photo, is no error)."""
    if not path.name.lower().endswith((".jpg", ".jpeg")) or not path.is_file():
        return
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        if "truncated" in str(exc):
            raise DSSMError(f"{path} is truncated or corrupt: its JPEG data stops before the end of the image (a "
                            "cut-off download or copy); copy or export the file again.") from None
        # anything else Pillow dislikes is left to ITK's reader, whose message the user then gets


def read_image(path: Path, notes: Optional[list] = None) -> sitk.Image:
    """Read a file or a DICOM series folder; raise a DSSMError if it is not an image.

    Library chatter on stderr is silenced. NIfTI files get checks of our own (see :func:`_nifti_check_data`),
    because the NIfTI reader hides a zero-sized dimension (it prints a C-level error and reports an
    unrecognised file), truncated data and NaN/inf voxels (it silently reads both as 0). A NIfTI-1 file whose
    direction cosines are off orthonormal by at most :data:`DIRECTION_TOLERANCE` (refused by ITK) is read with
    its nearest orthonormal direction; a line saying so is appended to ``notes``.
    """
    path = Path(path)
    header = _nifti_header(path)
    if header is not None and any(n <= 0 for n in header["size"]):
        raise DSSMError(f"{path} is empty (size {'x'.join(map(str, header['size']))}); there is nothing to segment.")
    _jpeg_check(path)
    try:
        with _quiet_native_stderr():
            if path.is_dir():
                series = dicom_series(path)
                if not series:
                    raise DSSMError(f"{path} is a folder without a DICOM series")
                if len(series) > 1:
                    raise DSSMError(f"{path} holds {len(series)} DICOM series ({_describe_series(series)}); dssm "
                                    "segments one series per folder: put each series in a folder of its own (Slicer's "
                                    "DICOM module or dcm2niix can export them) and give the one to segment")
                _check_slice_positions(path, series[0])
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(list(series[0]))
                image = reader.Execute()
            else:
                try:
                    image = sitk.ReadImage(str(path))
                except RuntimeError as exc:
                    image = _read_repaired_nifti(path, header, notes) if "orthonormal" in str(exc) else None
                    if image is None:
                        raise
    except RuntimeError as exc:
        reason = _sitk_reason(exc)
        # ITK's stale errno for a cut-off MHA or NRRD (one file; a .mhd or .nhdr may really miss its data file)
        if path.is_file() and path.suffix.lower() in (".mha", ".nrrd") and "No such file or directory" in reason:
            reason = "its data could not be read (a truncated or corrupt file, or not the format its name says)"
        raise DSSMError(
            f"cannot read {path}: not an image that SimpleITK can read (NIfTI, NRRD, MHA, DICOM series, "
            f"PNG/JPG/BMP): {reason}"
        ) from None
    if header is not None:
        _nifti_check_data(path, header)
    _check_direction(image, path, notes)
    return image


def _off_orthonormal(matrix: np.ndarray) -> float:
    """How far a direction matrix is from orthonormal: the largest entry of ``M^T M - I``."""
    return float(np.abs(matrix.T @ matrix - np.eye(len(matrix))).max())


def _check_direction(image: sitk.Image, path: Path, notes: Optional[list]) -> None:
    """A sheared grid (direction cosines not orthonormal; NRRD and MHA can hold one, e.g. a CT with gantry tilt)
    has no NIfTI mask that lies on it: refused beyond :data:`DIRECTION_TOLERANCE`, a note below it (the mask gets
    the nearest orthonormal direction), as for NIfTI headers."""
    dim = image.GetDimension()
    deviation = _off_orthonormal(np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim))
    if deviation > DIRECTION_TOLERANCE:
        raise DSSMError(f"cannot segment {path}: its voxel grid is sheared (direction cosines off orthonormal by "
                        f"{deviation:.1e}, more than the {DIRECTION_TOLERANCE:g} DSSMSegment corrects), as after a CT "
                        "gantry tilt, and a NIfTI mask cannot lie on it. Resample it onto an orthogonal grid first "
                        "(e.g. Slicer's Resample Scalar Volume module), or fix its header")
    if deviation > 1e-5 and notes is not None:
        notes.append(f"{path}: direction cosines off orthonormal by {deviation:.1e}; the mask gets the nearest "
                     "orthonormal direction")


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
    return image_like(labels, reference, np.uint8)


def image_like(array: np.ndarray, reference: sitk.Image, dtype=np.float32) -> sitk.Image:
    """A scalar image of ``dtype`` on exactly the reference's grid (size, origin, spacing, direction); ``array``
    is (Z, Y, X), or (1, Y, X) for a 2D reference."""
    if reference.GetDimension() == 2:
        array = array.reshape(array.shape[-2:])
    out = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=dtype))
    out.SetOrigin(reference.GetOrigin())
    out.SetSpacing(reference.GetSpacing())
    out.SetDirection(reference.GetDirection())
    return out


@contextmanager
def atomic_output(path: Path, suffix: str = ""):
    """Yield a temporary path in ``path``'s folder to write to; on success it replaces ``path`` (with the mode
    the user's umask gives new files), on any failure it is removed: never a partial file at ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=suffix or "".join(path.suffixes[-2:]), dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        follow_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, (OSError, RuntimeError)):  # disk full, no permission, a folder in the way, ...
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _sitk_reason(exc)
            raise DSSMError(f"cannot write {path}: {reason}; nothing was written there") from None
        raise


def _copy_nifti_geometry(source: Path, target: Path) -> None:
    """Give the NIfTI-1 file ``target`` the header geometry (pixdim, units, qform and sform) of ``source``, a
    NIfTI-1 file of the same size: the mask then overlays its image in any viewer exactly as the image's own
    header places it (ITK rewrites both transforms from its orthonormal direction)."""
    src, dst = _nifti_header(source), _nifti_header(target)
    if not src or not dst or src.get("version") != 1 or dst.get("version") != 1 or src["size"][:3] != dst["size"][:3]:
        return
    fields = _nifti1_fields(_read_nifti_bytes(source, 348), src["endian"])
    data = bytearray(_read_nifti_bytes(target))
    for name, offset, fmt in _NIFTI1_GEOMETRY:
        values = list(fields[name])
        if name == "pixdim":  # keep the target's own time step and the rest; the spatial part is the source's
            values = values[:4] + list(struct.unpack_from(dst["endian"] + "4f", data, 92))
        struct.pack_into(dst["endian"] + fmt, data, offset, *values)
    with (gzip.open(target, "wb", compresslevel=6) if dst["gzip"] else open(target, "wb")) as f:
        f.write(data)


def write_image_atomically(image: sitk.Image, path: Path, geometry_from: Optional[Path] = None) -> None:
    """Write to a temporary file in the same folder, then rename: a failure never leaves a partial file. The
    file gets the mode that the user's umask gives new files. With ``geometry_from`` (the input's path), a NIfTI
    output of a NIfTI input keeps the input's own header geometry (:func:`_copy_nifti_geometry`)."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    with atomic_output(path, suffix) as tmp:
        sitk.WriteImage(image, str(tmp), True)
        if geometry_from is not None and path.name.endswith((".nii", ".nii.gz")):
            _copy_nifti_geometry(Path(geometry_from), tmp)
