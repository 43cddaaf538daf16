"""Preprocessing as recorded decisions (the ``preprocessing`` block of ``model.json``).

Training-cache building and inference call the same functions, so a model always sees its inputs exactly
as it was trained on them. Volumes are segmented slice by slice along the acquisition's through-plane
axis (the index axis with the largest spacing); each slice is resampled in-plane to the model's spacing
(MRI) or size (2D images), intensities are clipped to percentiles and z-scored per channel over the whole
image, and slices are padded to a multiple of the network's stride.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .plan import Preprocessing  # noqa: F401  (re-exported: the recorded preprocessing decisions)


def slice_axis(spacing_zyx: Sequence[float], shape_zyx: Sequence[int]) -> int:
    """Array axis (0 = Z, 1 = Y, 2 = X) to cut slices along: the largest spacing; Z on ties or for 2D."""
    if shape_zyx[0] == 1:
        return 0
    largest = max(spacing_zyx)
    for axis in (0, 1, 2):
        if spacing_zyx[axis] >= largest * 0.999 and shape_zyx[axis] > 1:
            return axis
    return 0


def to_slices(array_czyx: np.ndarray, spacing_zyx: Sequence[float], axis: int) -> tuple:
    """(C, Z, Y, X) -> slices (S, C, H, W) and their in-plane spacing (row, column)."""
    moved = np.moveaxis(array_czyx, axis + 1, 1)  # (C, S, H, W)
    inplane = [s for i, s in enumerate(spacing_zyx) if i != axis]
    return np.ascontiguousarray(np.moveaxis(moved, 1, 0)), tuple(inplane)


def from_slices(labels_shw: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_slices` for a label stack (S, H, W) -> (Z, Y, X)."""
    return np.ascontiguousarray(np.moveaxis(labels_shw, 0, axis))


def normalize(array_czyx: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Per channel: clip to the given percentiles of the whole image, then z-score."""
    out = np.empty_like(array_czyx, dtype=np.float32)
    for c in range(array_czyx.shape[0]):
        ch = array_czyx[c]
        sample = ch if ch.size <= 2_000_000 else ch.reshape(-1)[:: ch.size // 2_000_000 + 1]
        lo, hi = np.percentile(sample, percentiles)
        if hi <= lo:
            lo, hi = float(ch.min()), float(ch.max())
        clipped = np.clip(ch, lo, hi)
        mean, std = float(clipped.mean()), float(clipped.std())
        out[c] = (clipped - mean) / max(std, 1e-6)
    return out


def prepare_slices(image, prep: Preprocessing, in_channels: int, name: str = "image") -> tuple:
    """Check an image (SimpleITK) and cut it into normalised slices as the model expects, for inference and for
    the training cache alike: (slices (S, C, H, W) float32, the slice axis, the in-plane size the network
    works at)."""
    from .imageio import spacing_zyx, to_channels  # SimpleITK, which training from a cache does not need

    array = to_channels(image, in_channels, name)
    spacing = spacing_zyx(image)
    axis = slice_axis(spacing, array.shape[1:])
    slices, inplane = to_slices(normalize(array, prep.percentiles), spacing, axis)
    return slices, axis, prep.target_shape(slices.shape[-2:], inplane)


def resize(slices: torch.Tensor, shape_hw: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resample a batch (S, C, H, W) in-plane; anti-aliased when shrinking."""
    if tuple(slices.shape[-2:]) == tuple(shape_hw):
        return slices
    if mode == "nearest":
        return F.interpolate(slices, size=tuple(shape_hw), mode="nearest-exact")
    shrink = shape_hw[0] < slices.shape[-2] or shape_hw[1] < slices.shape[-1]
    return F.interpolate(slices, size=tuple(shape_hw), mode="bilinear", align_corners=False, antialias=shrink)


def pad_to_multiple(slices: torch.Tensor, multiple: int, min_hw=None) -> tuple:
    """Pad (S, C, H, W) with each channel's minimum to a multiple of ``multiple`` (bottom/right), or, with
    ``min_hw``, to at least that size with the slice in the middle. Returns (padded, (top, left, H, W))."""
    h, w = slices.shape[-2:]
    th, tw = max(h, int(min_hw[0])) if min_hw else h, max(w, int(min_hw[1])) if min_hw else w
    th, tw = th + (-th) % multiple, tw + (-tw) % multiple
    if (th, tw) == (h, w):
        return slices, (0, 0, h, w)
    top, left = ((th - h) // 2, (tw - w) // 2) if min_hw else (0, 0)
    fill = slices.amin(dim=(0, 2, 3), keepdim=True)
    padded = fill.expand(slices.shape[0], -1, th, tw).clone()
    padded[..., top:top + h, left:left + w] = slices
    return padded, (top, left, h, w)