"""Segmentation accuracy metrics: Dice, HD95, IoU, precision and recall per structure.

The per-structure numbers come from MedPy (:mod:`medpy.metric.binary`); this module adds the
conventions MedPy leaves open for empty masks, the mapping from label maps to structures, and the
aggregation over cases.

Conventions for empty masks (per structure, per case):

* prediction and ground truth both empty: a perfect answer. Dice = IoU = precision = recall = 1.0,
  HD95 = 0.0 mm.
* exactly one of them empty: Dice = IoU = 0.0; precision and recall are 0.0 (they are either
  0 / n or undefined 0 / 0 with the other side non-empty, which counts as 0.0); HD95 is undefined
  and reported as NaN. :func:`summarize` leaves NaN out of mean and sd and counts it in
  ``n_undefined``.

Spacing: arrays and spacing must be in the same axis order. ``SimpleITK.GetArrayFromImage`` returns
arrays indexed (z, y, x) while ``image.GetSpacing()`` is (x, y, z), so the caller must pass
``tuple(reversed(image.GetSpacing()))``. The spacing is used as given; HD95 is in the unit of the
spacing (mm for medical images). A picture file (PNG, JPG, ...) has no physical pixel size, at most a print
resolution: it is measured with spacing 1, in pixels, and its summary and table say so (``hd95_px``,
"HD95 (px)") where a volume's say ``hd95_mm``, "HD95 (mm)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from medpy.metric import binary

__all__ = [
    "StructureMetrics",
    "structure_metrics",
    "case_metrics",
    "summarize",
    "markdown_table",
    "as_dict",
    "hd95_key",
]


@dataclass
class StructureMetrics:
    """Accuracy of one structure in one case.

    ``hd95_mm`` is NaN when exactly one of prediction and ground truth is empty (see the module
    docstring for the full convention).
    """

    dice: float
    hd95_mm: float
    iou: float
    precision: float
    recall: float


# Metric field name -> (column header, decimals) for markdown_table, in column order.
_COLUMNS: dict[str, tuple[str, int]] = {
    "dice": ("Dice", 3),
    "hd95_mm": ("HD95 (mm)", 2),
    "iou": ("IoU", 3),
    "precision": ("Precision", 3),
    "recall": ("Recall", 3),
}


def hd95_key(unit: str = "mm") -> str:
    """The name HD95 goes by in summaries and files: ``hd95_mm`` (a volume, or any image with a physical spacing)
    or ``hd95_px`` (a picture file, measured in pixels)."""
    if unit not in ("mm", "px"):
        raise ValueError(f"HD95 is in mm or px, not {unit!r}")
    return f"hd95_{unit}"


def _key(name: str, unit: str) -> str:
    return hd95_key(unit) if name == "hd95_mm" else name


def as_dict(metrics: StructureMetrics, unit: str = "mm") -> dict:
    """One structure's metrics as a dict, HD95 under :func:`hd95_key` of ``unit``."""
    return {_key(name, unit): value for name, value in vars(metrics).items()}


def structure_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> StructureMetrics:
    """Compare a predicted and a ground-truth mask of one structure.

    Args:
        pred: prediction mask, 2D or 3D; any non-zero value counts as foreground.
        gt: ground-truth mask of the same shape.
        spacing: voxel size along each array axis, in the array's axis order (for an array from
            ``SimpleITK.GetArrayFromImage`` that is the reverse of ``image.GetSpacing()``).

    Returns:
        The metrics; empty masks follow the convention in the module docstring.

    Raises:
        ValueError: if the shapes differ or ``spacing`` does not have one positive value per axis.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"Prediction shape {pred.shape} differs from ground-truth shape {gt.shape}.")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim or not all(s > 0 for s in spacing):
        raise ValueError(
            f"Spacing {spacing} must have one positive value per array axis ({pred.ndim} axes, "
            f"shape {pred.shape})."
        )

    pred_empty = not pred.any()
    gt_empty = not gt.any()
    if pred_empty and gt_empty:
        return StructureMetrics(dice=1.0, hd95_mm=0.0, iou=1.0, precision=1.0, recall=1.0)
    if pred_empty or gt_empty:
        # No overlap is possible; HD95 has no surface to measure from on one side.
        return StructureMetrics(dice=0.0, hd95_mm=math.nan, iou=0.0, precision=0.0, recall=0.0)
    return StructureMetrics(
        dice=float(binary.dc(pred, gt)),
        hd95_mm=float(binary.hd95(pred, gt, voxelspacing=spacing)),
        iou=float(binary.jc(pred, gt)),
        precision=float(binary.precision(pred, gt)),
        recall=float(binary.recall(pred, gt)),
    )


def case_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    labels: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
) -> dict[str, StructureMetrics]:
    """Compare a predicted and a ground-truth label map, structure by structure.

    Args:
        pred_labels: predicted label map (integer array, 2D or 3D).
        gt_labels: ground-truth label map of the same shape.
        labels: structure name -> the label values that make it up, e.g.
            ``{"LV cavity": [3], "whole gland": [1, 2]}``; a structure with several values is
            the union of those labels.
        spacing: voxel size per array axis, in the array's axis order (see :func:`structure_metrics`).

    Returns:
        Structure name -> its metrics, in the order of ``labels``.

    Raises:
        ValueError: if the label maps' shapes differ or a structure has no label values.
    """
    pred_labels = np.asarray(pred_labels)
    gt_labels = np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(
            f"Predicted label map shape {pred_labels.shape} differs from ground-truth label map "
            f"shape {gt_labels.shape}; resample the prediction onto the ground-truth grid first."
        )
    result: dict[str, StructureMetrics] = {}
    for name, values in labels.items():
        values = list(values)
        if not values:
            raise ValueError(f"Structure {name!r} has no label values.")
        result[name] = structure_metrics(
            np.isin(pred_labels, values), np.isin(gt_labels, values), spacing
        )
    return result


def summarize(per_case: Mapping[str, Mapping[str, StructureMetrics]], unit: str = "mm") -> dict:
    """Aggregate metrics over cases.

    Args:
        per_case: case id -> (structure name -> metrics), e.g. one :func:`case_metrics` result per
            case. A structure missing from a case is simply not counted for that case.
        unit: the unit HD95 was measured in: ``"mm"``, or ``"px"`` for picture files; its key is
            ``hd95_mm`` or ``hd95_px`` (:func:`hd95_key`).

    Returns:
        ``{structure: {metric: {"mean": float, "sd": float, "n": int, "n_undefined": int}}}`` with
        metrics ``dice``, ``hd95_mm`` (or ``hd95_px``), ``iou``, ``precision``, ``recall``. NaN values (undefined
        HD95) are left out: ``mean`` and ``sd`` (population sd, ddof=0) are over the ``n``
        defined values, and ``n_undefined`` counts the NaNs. With no defined value, mean and sd
        are NaN. Structures appear in the order first seen.
    """
    collected: dict[str, dict[str, list[float]]] = {}
    for case in per_case.values():
        for structure, metrics in case.items():
            per_metric = collected.setdefault(structure, {name: [] for name in _COLUMNS})
            for name in _COLUMNS:
                per_metric[name].append(float(getattr(metrics, name)))

    summary: dict[str, dict[str, dict[str, float | int]]] = {}
    for structure, per_metric in collected.items():
        summary[structure] = {}
        for name, values in per_metric.items():
            array = np.asarray(values, dtype=float)
            defined = array[~np.isnan(array)]
            summary[structure][_key(name, unit)] = {
                "mean": float(defined.mean()) if defined.size else math.nan,
                "sd": float(defined.std(ddof=0)) if defined.size else math.nan,
                "n": int(defined.size),
                "n_undefined": int(array.size - defined.size),
            }
    return summary


def mean_dice(summary: Mapping[str, dict]) -> float:
    """One number for a :func:`summarize` summary: the mean over its structures of their mean Dice (NaN if none)."""
    values = [stats["dice"]["mean"] for stats in summary.values() if math.isfinite(stats["dice"]["mean"])]
    return float(np.mean(values)) if values else float("nan")


def markdown_table(summary: dict) -> str:
    """Render a :func:`summarize` result as a Markdown table.

    Rows are structures; columns Dice, HD95 (mm, or px for a summary with ``hd95_px``), IoU,
    Precision, Recall, each as ``mean ± sd`` (HD95 with 2 decimals, the others with 3), e.g.
    ``0.912 ± 0.031``; a single defined value has no spread and is shown alone. A cell with
    undefined cases gets a note such as ``(2 of 10 undefined)``; a cell with no defined value reads
    ``n/a``.
    """
    pixels = any(hd95_key("px") in per_metric for per_metric in summary.values())
    unit = "px" if pixels else "mm"
    header = "| Structure | " + " | ".join(title.replace("(mm)", f"({unit})") for title, _ in _COLUMNS.values()) + " |"
    rule = "|---|" + "---:|" * len(_COLUMNS)
    rows = [header, rule]
    for structure, per_metric in summary.items():
        cells = [str(structure)]
        for name, (_, decimals) in _COLUMNS.items():
            stats = per_metric[_key(name, unit)]
            if stats["n"] == 0:
                cell = "n/a"
            elif stats["n"] == 1:
                cell = f"{stats['mean']:.{decimals}f}"
            else:
                cell = f"{stats['mean']:.{decimals}f} ± {stats['sd']:.{decimals}f}"
            if stats["n_undefined"]:
                total = stats["n"] + stats["n_undefined"]
                cell += f" ({stats['n_undefined']} of {total} undefined)"
            cells.append(cell)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
