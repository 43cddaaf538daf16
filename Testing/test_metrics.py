"""Tests for DSSMSegmentLib.metrics against hand-computed values."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DSSMSegment"))

from DSSMSegmentLib.metrics import (  # noqa: E402
    StructureMetrics,
    case_metrics,
    markdown_table,
    structure_metrics,
    summarize,
)


def test_overlapping_squares_2d() -> None:
    # pred: 4x4 square at rows/cols 0..3 -> 16 px; gt: 6x6 square at rows/cols 2..7 -> 36 px.
    # Overlap: rows/cols 2..3 -> 4 px. Union 16 + 36 - 4 = 48.
    # Dice = 2*4 / (16+36) = 2/13; IoU = 4/48 = 1/12; precision = 4/16; recall = 4/36 = 1/9.
    pred = np.zeros((10, 10), bool)
    gt = np.zeros((10, 10), bool)
    pred[0:4, 0:4] = True
    gt[2:8, 2:8] = True
    m = structure_metrics(pred, gt, (1.0, 1.0))
    assert m.dice == pytest.approx(2 / 13)
    assert m.iou == pytest.approx(1 / 12)
    assert m.precision == pytest.approx(0.25)
    assert m.recall == pytest.approx(1 / 9)
    # Swapping prediction and ground truth swaps precision and recall only.
    s = structure_metrics(gt, pred, (1.0, 1.0))
    assert (s.dice, s.iou, s.precision, s.recall) == pytest.approx((2 / 13, 1 / 12, 1 / 9, 0.25))


def test_overlapping_cubes_3d() -> None:
    # pred: cube [0:4]^3 -> 64 vox; gt: cube [2:6]^3 -> 64 vox; overlap [2:4]^3 -> 8 vox.
    # Dice = 16/128 = 0.125; IoU = 8/(64+64-8) = 1/15; precision = recall = 8/64 = 0.125.
    pred = np.zeros((8, 8, 8), bool)
    gt = np.zeros((8, 8, 8), bool)
    pred[0:4, 0:4, 0:4] = True
    gt[2:6, 2:6, 2:6] = True
    m = structure_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert m.dice == pytest.approx(0.125)
    assert m.iou == pytest.approx(1 / 15)
    assert m.precision == pytest.approx(0.125)
    assert m.recall == pytest.approx(0.125)


def test_hd95_anisotropic_spacing() -> None:
    # Two one-voxel-thick 6x6 plates, at z=2 and z=4: every voxel of each is a surface voxel whose
    # nearest surface voxel on the other plate is straight along z, 2 voxels away. With z spacing
    # 3.0 mm every surface distance is 2 * 3.0 = 6.0 mm, so HD95 is exactly 6.0 mm.
    pred = np.zeros((8, 10, 10), bool)
    gt = np.zeros((8, 10, 10), bool)
    pred[2, 2:8, 2:8] = True
    gt[4, 2:8, 2:8] = True
    assert structure_metrics(pred, gt, (3.0, 1.0, 1.0)).hd95_mm == pytest.approx(6.0)
    # Spacing is taken in array axis order: putting the 3.0 on x instead gives 2 * 1.0 mm.
    assert structure_metrics(pred, gt, (1.0, 1.0, 3.0)).hd95_mm == pytest.approx(2.0)
    # No overlap at all.
    assert structure_metrics(pred, gt, (3.0, 1.0, 1.0)).dice == 0.0


def test_simpleitk_spacing_must_be_reversed() -> None:
    sitk = pytest.importorskip("SimpleITK")
    array = np.zeros((8, 10, 10), np.uint8)  # (z, y, x)
    array[2, 2:8, 2:8] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))  # (x, y, z): 3 mm slices
    pred = sitk.GetArrayFromImage(image).astype(bool)
    gt = np.roll(pred, 2, axis=0)
    spacing = tuple(reversed(image.GetSpacing()))
    assert structure_metrics(pred, gt, spacing).hd95_mm == pytest.approx(6.0)


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((5, 5, 5), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = structure_metrics(empty, empty, (1.0, 2.0, 3.0))
    assert m == StructureMetrics(dice=1.0, hd95_mm=0.0, iou=1.0, precision=1.0, recall=1.0)


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty_gives_zero_overlap_and_nan_hd95(pred_empty: bool) -> None:
    empty = np.zeros((5, 5, 5), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    pred, gt = (empty, full) if pred_empty else (full, empty)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = structure_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert (m.dice, m.iou, m.precision, m.recall) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(m.hd95_mm)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        structure_metrics(np.zeros((3, 3), bool), np.zeros((3, 4), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="Spacing"):
        structure_metrics(np.zeros((3, 3), bool), np.zeros((3, 3), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="differs from ground-truth label map shape"):
        case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), {"a": [1]}, (1.0, 1.0, 1.0))


def test_case_metrics_multi_label_with_merged_structure() -> None:
    # 6x6 label maps, spacing 2.0 mm along rows (axis 0), 1.0 mm along columns.
    # gt:   rows 0-1 label 1 (12 px), rows 2-3 label 2 (12 px), rows 4-5 background.
    # pred: rows 0-2 label 1 (18 px), row 3 label 2 (6 px), rows 4-5 background.
    gt = np.zeros((6, 6), np.uint8)
    gt[0:2] = 1
    gt[2:4] = 2
    pred = np.zeros((6, 6), np.uint8)
    pred[0:3] = 1
    pred[3] = 2
    labels = {"one": [1], "two": [2], "merged": [1, 2], "absent": [3]}
    result = case_metrics(pred, gt, labels, (2.0, 1.0))
    assert list(result) == ["one", "two", "merged", "absent"]

    # "one": overlap 12, pred 18, gt 12 -> Dice 24/30, IoU 12/18, precision 12/18, recall 1.
    # Surface distances are 0, 1 or 2 mm; the extra pred row 2 is 1 row = 2.0 mm from gt row 1,
    # giving 8 of the 26 distances (> 5 %) equal to the maximum 2.0 mm, so HD95 = 2.0 mm.
    one = result["one"]
    assert (one.dice, one.iou, one.precision, one.recall) == pytest.approx((0.8, 2 / 3, 2 / 3, 1.0))
    assert one.hd95_mm == pytest.approx(2.0)

    # "two": overlap 6, pred 6, gt 12 -> Dice 12/18, IoU 6/12, precision 1, recall 0.5.
    # Distances: 6 + 6 zeros, and gt row 2 is 2.0 mm from pred row 3 (6 of 18) -> HD95 = 2.0 mm.
    two = result["two"]
    assert (two.dice, two.iou, two.precision, two.recall) == pytest.approx((2 / 3, 0.5, 1.0, 0.5))
    assert two.hd95_mm == pytest.approx(2.0)

    # "merged" = labels 1 or 2: rows 0-3 in both -> perfect; "absent": empty in both -> perfect.
    perfect = StructureMetrics(dice=1.0, hd95_mm=0.0, iou=1.0, precision=1.0, recall=1.0)
    assert result["merged"] == perfect
    assert result["absent"] == perfect


def _metrics(dice: float, hd95: float) -> StructureMetrics:
    return StructureMetrics(dice=dice, hd95_mm=hd95, iou=dice, precision=1.0, recall=dice)


def test_summarize_and_markdown_table_with_nan() -> None:
    per_case = {
        "case1": {"LV": _metrics(0.9, 2.0), "RV": _metrics(1.0, 0.0)},
        "case2": {"LV": _metrics(0.8, math.nan), "RV": _metrics(0.0, math.nan)},
        "case3": {"LV": _metrics(0.7, 4.0), "RV": _metrics(0.0, math.nan)},
    }
    summary = summarize(per_case)
    assert list(summary) == ["LV", "RV"]

    # LV Dice: mean 0.8; population sd = sqrt((0.1^2 + 0 + 0.1^2) / 3) = sqrt(0.02/3) ~= 0.0816.
    lv_dice = summary["LV"]["dice"]
    assert lv_dice["mean"] == pytest.approx(0.8)
    assert lv_dice["sd"] == pytest.approx(math.sqrt(0.02 / 3))
    assert (lv_dice["n"], lv_dice["n_undefined"]) == (3, 0)
    # LV HD95: the NaN is skipped -> values 2, 4: mean 3.0, population sd 1.0, n 2, 1 undefined.
    assert summary["LV"]["hd95_mm"] == {"mean": 3.0, "sd": 1.0, "n": 2, "n_undefined": 1}
    # RV HD95: one defined value 0.0 and two NaN.
    assert summary["RV"]["hd95_mm"] == {"mean": 0.0, "sd": 0.0, "n": 1, "n_undefined": 2}
    # RV Dice: 1, 0, 0 -> mean 1/3, sd sqrt(((2/3)^2 + 2*(1/3)^2) / 3) = sqrt(2)/3 ~= 0.471.
    assert summary["RV"]["dice"]["mean"] == pytest.approx(1 / 3)
    assert summary["RV"]["dice"]["sd"] == pytest.approx(math.sqrt(2) / 3)

    table = markdown_table(summary)
    lines = table.strip().splitlines()
    assert lines[0] == "| Structure | Dice | HD95 (mm) | IoU | Precision | Recall |"
    assert len(lines) == 4
    assert lines[2].startswith("| LV | 0.800 ± 0.082 | 3.00 ± 1.00 (1 of 3 undefined) | 0.800 ± 0.082 |")
    assert "| 1.000 ± 0.000 |" in lines[2]  # precision
    # one defined value has no spread: shown alone
    assert lines[3].startswith("| RV | 0.333 ± 0.471 | 0.00 (2 of 3 undefined) |")


def test_summarize_all_undefined_gives_nan_and_na_cell() -> None:
    per_case = {"a": {"LV": _metrics(0.0, math.nan)}, "b": {"LV": _metrics(0.0, math.nan)}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = summarize(per_case)
    hd = summary["LV"]["hd95_mm"]
    assert math.isnan(hd["mean"]) and math.isnan(hd["sd"])
    assert (hd["n"], hd["n_undefined"]) == (0, 2)
    assert "| n/a (2 of 2 undefined) |" in markdown_table(summary)
