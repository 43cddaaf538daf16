"""A PNG picture of a segmentation over its image: one panel for a 2D image, a montage of slices for a volume."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import preprocess as pp
from .imageio import spacing_zyx


def _gray(slice_hw: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(slice_hw, [1, 99])
    return (np.clip((slice_hw - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


GAP = 4  # black pixels between two panels of a montage (none around the picture)


def _font_size(h: int, w: int) -> int:
    """The legend's text size for a panel of ``h`` x ``w`` pixels."""
    return int(np.clip(min(h, w) / 22, 9, 28))


def _draw_legend(panel: np.ndarray, label_infos: Sequence, caption: str = "") -> np.ndarray:
    """Write the label names beside their colours in the panel's top-left corner (none: no box), and ``caption``
    (the slice number) in its bottom-left corner, each on a dark translucent box; the panel keeps its size."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = panel.shape[:2]
    size = _font_size(h, w)
    font = ImageFont.load_default(size=size)
    picture = Image.fromarray(panel).convert("RGBA")
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pad, line = max(2, size // 4), size + max(2, size // 4)
    names = [info.name for info in label_infos]
    text_w = max((draw.textlength(n, font=font) for n in names), default=0)
    if names:
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


def _slices(image: sitk.Image, labels: sitk.Image, extra: Optional[np.ndarray] = None) -> tuple:
    """The image (grey or RGB), the labels and ``extra`` (an array on the labels' grid) as stacks of slices along
    the axis the volume was segmented on, and the slices' in-plane spacing."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        rgb_like = arr[..., :3]
        arr = rgb_like.mean(-1) if image.GetNumberOfComponentsPerPixel() != 3 else rgb_like
    lab = sitk.GetArrayFromImage(labels)
    if image.GetDimension() == 2:
        arr, lab = arr[None], lab[None]
        extra = None if extra is None else extra.reshape(lab.shape)
    spacing = spacing_zyx(image)
    axis = pp.slice_axis(spacing, lab.shape)
    moved = [np.moveaxis(a, axis, 0) if a is not None else None for a in (arr, lab, extra)]
    return (*moved, [s for i, s in enumerate(spacing) if i != axis])


def _base(img: np.ndarray) -> np.ndarray:
    """A slice as float RGB in 0-255."""
    return (np.stack([_gray(img)] * 3, -1) if img.ndim == 2 else _gray(img)).astype(np.float32)


def _outline(out: np.ndarray, lab: np.ndarray, colors: dict, alpha: float) -> None:
    """Blend each label into ``out`` with ``alpha`` (0: outline only) and draw its outline in its colour."""
    from scipy import ndimage

    for value, color in colors.items():
        mask = lab == value
        if mask.any():
            if alpha:
                out[mask] = (1 - alpha) * out[mask] + alpha * color
            out[mask & ~ndimage.binary_erosion(mask)] = color


def _montage(panels: list, inplane, n_slices: int, picks: list, legend) -> np.ndarray:
    """Panels side by side with :data:`GAP` pixels between them, each at its true aspect ratio and captioned
    with its slice number; ``legend(panel, first)`` draws the legend into a panel."""
    from PIL import Image

    out = []
    ratio = inplane[0] / inplane[1] if inplane[1] > 0 else 1.0
    for k, (s, panel) in enumerate(zip(picks, panels)):
        panel = panel.astype(np.uint8)
        if abs(ratio - 1) > 0.01:  # show the slice with its true aspect ratio
            h, w = panel.shape[:2]
            panel = np.asarray(Image.fromarray(panel).resize((w, max(1, round(h * ratio)))))
        out.append(legend(panel, k == 0, f"slice {s + 1}/{n_slices}" if n_slices > 1 else ""))
    h = max(p.shape[0] for p in out)
    gap = np.zeros((h, GAP, 3), dtype=np.uint8)
    row = []
    for i, p in enumerate(out):
        row += ([gap] if i else []) + [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)))]
    return np.concatenate(row, axis=1)


def _pick(counts: np.ndarray, max_panels: int) -> list:
    """The slices with the largest ``counts``, in slice order; the middle slice when all are zero."""
    order = np.argsort(-counts, kind="stable")[:max_panels]
    return sorted(order) if counts.max() > 0 else [len(counts) // 2]


def render(image: sitk.Image, labels: sitk.Image, label_infos: Sequence, max_panels: int = 6,
           alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture: the slices with the most foreground (in slice order), mask blended in colour, each
    volume slice captioned with its number (1-based, along the axis it was segmented on), the label names and
    colours in the first panel's corner. A 2D image's picture has the image's own size; a montage puts
    :data:`GAP` pixels between panels only."""
    arr, lab, _, inplane = _slices(image, labels)
    picks = _pick((lab > 0).reshape(lab.shape[0], -1).sum(1), max_panels)
    colors = {info.value: np.array(info.color, dtype=np.float32) for info in label_infos}
    panels = []
    for s in picks:
        out = _base(arr[s])
        _outline(out, lab[s], colors, alpha)
        panels.append(out)
    return _montage(panels, inplane, lab.shape[0], picks,
                    lambda panel, first, caption: _draw_legend(panel, label_infos if first else [], caption))


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Uncertainty 0..1 -> RGB 0..255 (matplotlib's 'inferno': dark purple through red to yellow)."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.clip(values, 0, 1))[..., :3].astype(np.float32) * 255


def render_uncertainty(image: sitk.Image, uncertainty: sitk.Image, labels: sitk.Image, label_infos: Sequence,
                       level: float, max_panels: int = 6) -> np.ndarray:
    """RGB uint8 picture of the uncertainty map: the slices with the most voxels above ``level`` (in slice
    order), the map in colour over the grey image wherever it exceeds a tenth of ``level`` (its opacity grows
    with it), the mask's outlines in the labels' colours; the label names and a colour bar stand beside the
    slices, :data:`GAP` pixels to their right, so that they cover none of the image."""
    u = sitk.GetArrayFromImage(uncertainty).astype(np.float32)
    arr, lab, u, inplane = _slices(image, labels, u)
    picks = _pick((u > level).reshape(u.shape[0], -1).sum(1), max_panels)
    colors = {info.value: np.array(info.color, dtype=np.float32) for info in label_infos}
    panels = []
    for s in picks:
        out = _base(arr[s])
        shown = u[s] > 0.1 * level
        opacity = np.clip(u[s] / max(level, 1e-6), 0, 1)[..., None] * 0.85
        out[shown] = ((1 - opacity) * out + opacity * heat_colors(u[s]))[shown]
        _outline(out, lab[s], colors, 0.0)
        panels.append(out)

    montage = _montage(panels, inplane, lab.shape[0], picks,
                       lambda panel, first, caption: _draw_legend(panel, [], caption))
    strip = _legend_strip(label_infos, level, montage.shape[0], _font_size(*panels[0].shape[:2]))
    h = max(montage.shape[0], strip.shape[0])
    return np.concatenate([np.pad(montage, ((0, h - montage.shape[0]), (0, 0), (0, 0))),
                           np.zeros((h, GAP, 3), dtype=np.uint8),
                           np.pad(strip, ((0, h - strip.shape[0]), (0, 0), (0, 0)))], axis=1)


def _legend_strip(label_infos: Sequence, level: float, height: int, size: int) -> np.ndarray:
    """The uncertainty picture's legend, on black, to stand beside the slices: the label names beside their
    colours, then a bar of the uncertainty colours from 1 (top) to 0 with the threshold ``level`` marked. As tall
    as the slices (``height``), or taller where the legend needs it; text of ``size`` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, line = max(2, size // 4), size + max(2, size // 4)
    bar_w, bar_h = max(6, size // 2), max(40, height // 3)
    names = [info.name for info in label_infos]
    title = "uncertainty"
    width = int(np.ceil(pad * 2 + max(max((size + pad + measure.textlength(n, font=font) for n in names), default=0),
                                      measure.textlength(title, font=font),
                                      bar_w + pad + measure.textlength("1", font=font))))
    title_top = pad + line * len(names) + (line if names else 0)  # a blank line between the names and the bar
    bar_top = title_top + line + size // 2  # room for the "1" beside the bar's top
    picture = Image.new("RGB", (width, max(height, bar_top + bar_h + size // 2 + pad)), (0, 0, 0))
    draw = ImageDraw.Draw(picture)
    for i, info in enumerate(label_infos):
        top = pad + i * line
        draw.rectangle([pad, top + 1, pad + size - 2, top + size - 1], fill=tuple(info.color))
        draw.text((pad * 2 + size, top), info.name, fill=(255, 255, 255), font=font)
    draw.text((pad, title_top), title, fill=(255, 255, 255), font=font)
    ramp = heat_colors(np.linspace(1, 0, bar_h))[:, None, :].repeat(bar_w, 1).astype(np.uint8)
    picture.paste(Image.fromarray(ramp), (pad, bar_top))
    mark = bar_top + int(round((1 - level) * (bar_h - 1)))
    draw.line([pad // 2, mark, pad + bar_w + pad // 2, mark], fill=(255, 255, 255), width=max(1, size // 8))
    draw.text((pad * 2 + bar_w, bar_top - size // 2), "1", fill=(255, 255, 255), font=font)
    draw.text((pad * 2 + bar_w, bar_top + bar_h - size // 2), "0", fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def write_overlay(image: sitk.Image, labels: sitk.Image, label_infos: Sequence, path: Path) -> Path:
    """Write :func:`render`'s picture as a PNG, atomically (never a partial file at ``path``)."""
    return _write_png(render(image, labels, label_infos), path)


def write_uncertainty_overlay(image: sitk.Image, uncertainty: sitk.Image, labels: sitk.Image,
                              label_infos: Sequence, level: float, path: Path) -> Path:
    """Write :func:`render_uncertainty`'s picture as a PNG, atomically."""
    return _write_png(render_uncertainty(image, uncertainty, labels, label_infos, level), path)


def _write_png(picture: np.ndarray, path: Path) -> Path:
    from PIL import Image

    from .imageio import atomic_output

    with atomic_output(Path(path), ".png") as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)
