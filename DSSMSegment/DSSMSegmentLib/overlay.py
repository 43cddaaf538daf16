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


GAP = 4  # black pixels between two panels of a montage (none around the picture)


def _draw_legend(panel: np.ndarray, label_infos: Sequence, caption: str = "") -> np.ndarray:
    """Write the label names beside their colours in the panel's top-left corner, and ``caption`` (the slice
    number) in its bottom-left corner, each on a dark translucent box; the panel keeps its size."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = panel.shape[:2]
    size = int(np.clip(min(h, w) / 22, 9, 28))
    font = ImageFont.load_default(size=size)
    picture = Image.fromarray(panel).convert("RGBA")
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pad, line = max(2, size // 4), size + max(2, size // 4)
    names = [info.name for info in label_infos]
    text_w = max((draw.textlength(n, font=font) for n in names), default=0)
    draw.rectangle([0, 0, pad * 3 + size + text_w, pad * 2 + line * len(names)], fill=(0, 0, 0, 150))
    for i, info in enumerate(label_infos):
        top = pad + i * line
        draw.rectangle([pad, top + 1, pad + size - 2, top + size - 1], fill=tuple(info.color) + (255,))
        draw.text((pad * 2 + size, top), info.name, fill=(255, 255, 255, 255), font=font)
    if caption:
        cw = draw.textlength(caption, font=font)
        draw.rectangle([0, h - line - pad, cw + pad * 2, h], fill=(0, 0, 0, 150))
        draw.text((pad, h - line - pad // 2), caption, fill=(255, 255, 255, 255), font=font)
    return np.asarray(Image.alpha_composite(picture, layer).convert("RGB"))


def render(image: sitk.Image, labels: sitk.Image, label_infos: Sequence, max_panels: int = 6,
           alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture: the slices with the most foreground (in slice order), mask blended in colour, each
    volume slice captioned with its number (1-based, along the axis it was segmented on), the label names and
    colours in the first panel's corner. A 2D image's picture has the image's own size; a montage puts
    :data:`GAP` pixels between panels only."""
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
    for k, s in enumerate(picks):
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
        caption = f"slice {s + 1}/{lab.shape[0]}" if lab.shape[0] > 1 else ""
        panels.append(_draw_legend(panel, label_infos if k == 0 else [], caption))
    h = max(p.shape[0] for p in panels)
    gap = np.zeros((h, GAP, 3), dtype=np.uint8)
    row = []
    for i, p in enumerate(panels):
        row += ([gap] if i else []) + [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)))]
    return np.concatenate(row, axis=1)


def write_overlay(image: sitk.Image, labels: sitk.Image, label_infos: Sequence, path: Path) -> Path:
    """Write :func:`render`'s picture as a PNG, atomically (never a partial file at ``path``)."""
    from PIL import Image

    from .imageio import atomic_output

    with atomic_output(Path(path), ".png") as tmp:
        Image.fromarray(render(image, labels, label_infos)).save(tmp, format="PNG")
    return Path(path)
