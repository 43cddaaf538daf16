"""A PNG picture of a segmentation over its image: one panel for a 2D image, a montage of slices for a volume."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from . import preprocess as pp
from .imageio import spacing_zyx


def _gray(slice_hw: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(slice_hw, [1, 99])
    return (np.clip((slice_hw - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def render(image: sitk.Image, labels: sitk.Image, label_infos: Sequence, max_panels: int = 6,
           alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture: the slices with the most foreground (in slice order), mask blended in colour."""
    from scipy import ndimage

    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        rgb_like = arr[..., :3]
        arr = rgb_like.mean(-1) if image.GetNumberOfComponentsPerPixel() != 3 else rgb_like
    lab = sitk.GetArrayFromImage(labels)
    if image.GetDimension() == 2:
        arr, lab = arr[None], lab[None]
    spacing = spacing_zyx(image)
    axis = pp.slice_axis(spacing, lab.shape)
    arr, lab = np.moveaxis(arr, axis, 0), np.moveaxis(lab, axis, 0)
    counts = (lab > 0).reshape(lab.shape[0], -1).sum(1)
    order = np.argsort(-counts, kind="stable")[:max_panels]
    picks = sorted(order) if counts.max() > 0 else [lab.shape[0] // 2]
    inplane = [s for i, s in enumerate(spacing) if i != axis]
    colors = {info.value: np.array(info.color, dtype=np.float32) for info in label_infos}
    panels = []
    for s in picks:
        img = arr[s]
        base = np.stack([_gray(img)] * 3, -1) if img.ndim == 2 else _gray(img)
        out = base.astype(np.float32)
        for value, color in colors.items():
            mask = lab[s] == value
            if mask.any():
                out[mask] = (1 - alpha) * out[mask] + alpha * color
                edge = mask & ~ndimage.binary_erosion(mask)
                out[edge] = color
        panel = out.astype(np.uint8)
        # show the slice with its true aspect ratio
        ratio = inplane[0] / inplane[1] if inplane[1] > 0 else 1.0
        if abs(ratio - 1) > 0.01:
            from PIL import Image

            h, w = panel.shape[:2]
            panel = np.asarray(Image.fromarray(panel).resize((w, max(1, round(h * ratio)))))
        panels.append(panel)
    h = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, h - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)


def write_overlay(image: sitk.Image, labels: sitk.Image, label_infos: Sequence, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(render(image, labels, label_infos)).save(path)
    return Path(path)
