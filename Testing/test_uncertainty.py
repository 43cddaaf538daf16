"""Where the model is unsure, and whether it knows the image (issue 14), on real data with the bundled models.

* The uncertainty map comes from several Markov chains, leaves the mask as it was, sits on the input's grid,
  and is higher on the voxels the model gets wrong (ACDC patient011, in heart-cine-mri's validation split).
* ``dssm segment --uncertainty`` writes the map (NIfTI float or 16-bit PNG) and its picture, prints the uncertain
  volume of each structure and refuses an existing map file before any work.
* The familiarity warning: a chest X-ray given to the heart model is written anyway with one line that names the
  file and the model, and one for the empty structures; a validation ACDC volume and a validation X-ray with its
  own model get none. Scores and warnings are recorded in ``--timings``.
* ``dssm evaluate --uncertainty``, ``dssm calibrate`` and ``dssm familiarity`` measure what they say.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy.stats import mannwhitneyu

from conftest import (ACDC, CXR, MODELS, ROOT, _need, assert_one_error_line, describe, files_under, run_dssm,
                      same_grid)
from DSSMSegmentLib import uncertainty as unc
from DSSMSegmentLib.bundle import resolve_model
from DSSMSegmentLib.datasets import find_cases
from DSSMSegmentLib.evaluate import select_cases
from DSSMSegmentLib.familiarity import calibration_of

SAMPLE = ROOT / "DSSMSegment" / "Resources" / "SampleData" / "acdc-patient011-ED.nii.gz"  # ACDC patient011 ED
XRAY_VAL = CXR / "images" / "CHNCXR_0002_0.png"  # in lungs-cxr's validation split
DSSM_MODELS = ["heart-cine-mri", "left-atrium-lge-mri", "lungs-cxr", "prostate-t2-mri", "skin-lesion-dermoscopy"]


@pytest.fixture(scope="module")
def heart_runs(heart_segmenter, acdc_p011):
    image, gt = acdc_p011
    plain = heart_segmenter.run(image)
    mapped = heart_segmenter.run(image, uncertainty=True)
    return image, gt, plain, mapped


def test_uncertainty_map_keeps_the_mask_and_sits_on_the_input_grid(heart_runs):
    image, _, plain, mapped = heart_runs
    assert np.array_equal(sitk.GetArrayFromImage(plain.labels), sitk.GetArrayFromImage(mapped.labels))
    assert plain.uncertainty is None and mapped.uncertainty_chains == unc.UNCERTAINTY_SAMPLES
    assert same_grid(mapped.uncertainty, image)
    assert mapped.uncertainty.GetPixelID() == sitk.sitkFloat32
    maps = mapped.uncertainty_maps
    assert set(maps) == set(unc.MEASURES)
    for name, values in maps.items():
        assert values.shape == sitk.GetArrayFromImage(image).shape and 0 <= values.min() and values.max() <= 1, name
    written = sitk.GetArrayFromImage(mapped.uncertainty)
    assert np.array_equal(written, maps[unc.MEASURE])
    # the chains' disagreement is part of the total uncertainty, and the chains do disagree somewhere
    assert (maps["mutual_information"] <= maps["entropy"] + 1e-6).all()
    assert maps["mutual_information"].max() > 0.05


def test_uncertainty_is_higher_where_the_mask_is_wrong(heart_runs):
    _, gt, _, mapped = heart_runs
    pred = sitk.GetArrayFromImage(mapped.labels)
    wrong = pred != gt
    u = mapped.uncertainty_maps[unc.MEASURE]
    assert 100 < wrong.sum() < 0.2 * wrong.size
    assert u[wrong].mean() > 5 * u[~wrong].mean()
    # the binned AUROC agrees with the exact rank statistic on these voxels
    found = unc.ErrorDetection()
    found.add("p011", u, pred, gt, 0.9)
    exact = mannwhitneyu(u[wrong], u[~wrong]).statistic / (wrong.sum() * (~wrong).sum())
    assert found.auroc() == pytest.approx(exact, abs=0.005) and found.auroc() > 0.85


def test_extra_chains_for_the_map_leave_a_several_sample_mask_as_it_was(acdc_p011, heart_bundle):
    from DSSMSegmentLib.inference import Segmenter

    image, _ = acdc_p011
    segmenter = Segmenter(heart_bundle, device="cpu", samples=2)
    segmenter.uncertainty_samples = 3  # the map from 3 chains; the mask from the first 2, as without the map
    plain = sitk.GetArrayFromImage(segmenter.segment(image))
    mapped = segmenter.run(image, uncertainty=True)
    assert mapped.uncertainty_chains == 3
    assert np.array_equal(plain, sitk.GetArrayFromImage(mapped.labels))
    segmenter.uncertainty_samples = 1  # never fewer chains than the mask's
    assert segmenter.run(image, uncertainty=True).uncertainty_chains == 2
    assert segmenter.run(image, steps=0, uncertainty=True).uncertainty_chains == 1  # K = 0: no chain to sample


def test_the_uncertainty_pictures_legend_covers_none_of_the_slices(heart_runs, heart_bundle, tmp_path):
    """The label names and the colour bar stand right of the slices, not in the first one's corners: every slice's
    pixels are the same whatever the legend says, and the bar's colours are drawn pure only beside them."""
    from dataclasses import replace

    from DSSMSegmentLib.overlay import GAP, heat_colors, render_uncertainty, write_uncertainty_overlay

    image, _, _, mapped = heart_runs
    level = unc.threshold(heart_bundle.architecture.num_classes)
    picture = render_uncertainty(image, mapped.uncertainty, mapped.labels, heart_bundle.labels, level)
    renamed = [replace(lab, name=f"structure {lab.value}, named at length") for lab in heart_bundle.labels]
    other = render_uncertainty(image, mapped.uncertainty, mapped.labels, renamed, level)
    u = sitk.GetArrayFromImage(mapped.uncertainty)
    assert (u > level).any() and image.GetSpacing()[0] == image.GetSpacing()[1]  # square pixels: no resizing
    depth, h, w = u.shape
    panels = min(depth, 6)
    slices = panels * w + (panels - 1) * GAP  # the slices side by side, from the left edge
    assert picture.shape[0] >= h and picture.shape[1] > slices + GAP, "no legend beside the slices"
    assert np.array_equal(picture[:h, :slices], other[:h, :slices]), "the legend is drawn over a slice"
    assert picture[:, slices:slices + GAP].max() == 0, "a gap between the slices and the legend"
    legend = picture[:, slices + GAP:]
    assert not np.array_equal(legend, other[:, slices + GAP:]), "the names are in the legend"
    for lab in heart_bundle.labels:  # each label's swatch
        assert (legend == np.array(lab.color, dtype=np.uint8)).all(-1).sum() >= 25, lab.name
    top = heat_colors(np.array([1.0])).astype(np.uint8)[0]  # the bar's top colour: most unsure
    ys, xs = np.nonzero((picture == top).all(-1))
    assert len(xs) >= 6 and xs.min() >= slices + GAP, "the colour bar lies beside the slices"
    path = write_uncertainty_overlay(image, mapped.uncertainty, mapped.labels, heart_bundle.labels, level,
                                     tmp_path / "u.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), picture)


def test_segment_uncertainty_writes_the_map_its_picture_and_the_uncertain_volumes(tmp_path):
    _need(SAMPLE)
    out = tmp_path / "out"
    proc = run_dssm(["segment", "--model", "heart-cine-mri", "--device", "cpu", "--uncertainty", "--overlay",
                     "--timings", tmp_path / "t.json", "-o", out, SAMPLE], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == "", "a validation volume of the model's own data gets no warning\n" + describe(proc)
    stem = "acdc-patient011-ED"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}.nii.gz", f"{stem}_overlay.png", f"{stem}_uncertainty.nii.gz", f"{stem}_uncertainty_overlay.png"])
    written = sitk.ReadImage(str(out / f"{stem}_uncertainty.nii.gz"))
    assert written.GetPixelID() == sitk.sitkFloat32 and same_grid(written, sitk.ReadImage(str(SAMPLE)))
    line = next(ln for ln in proc.stdout.splitlines() if "uncertain (" in ln)
    level = unc.threshold(4)
    assert f"entropy > {level:.3f}" in line and f"{unc.UNCERTAINTY_SAMPLES} chain(s) x 1 pass(es)" in line
    case = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["cases"][0]
    labels = [lab.name for lab in resolve_model("heart-cine-mri").labels]
    assert list(case["uncertain_mL"]) == labels and all(f"{name} " in line for name in labels)
    # the printed volumes are the voxels above the threshold, in mL
    u = sitk.GetArrayFromImage(written)
    voxel_ml = np.prod(written.GetSpacing()) / 1000
    assert sum(case["uncertain_mL"].values()) == pytest.approx((u > level).sum() * voxel_ml, rel=1e-3)
    assert case["familiar"] is True and case["warnings"] == [] and case["familiarity"] >= case["familiarity_threshold"]
    assert "uncertainty" in case["stages"]


def test_an_xray_through_the_heart_model_is_written_with_its_warnings(tmp_path):
    _need(XRAY_VAL)
    out = tmp_path / "out"
    proc = run_dssm(["segment", "--model", "heart-cine-mri", "--device", "cpu", "--uncertainty", "--timings",
                     tmp_path / "t.json", "-o", out, XRAY_VAL], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert (out / XRAY_VAL.name).is_file(), "the mask is written anyway"
    png = sitk.ReadImage(str(out / "CHNCXR_0002_0_uncertainty.png"))
    assert png.GetPixelID() == sitk.sitkUInt16 and png.GetSize() == sitk.ReadImage(str(XRAY_VAL)).GetSize()
    warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 2, describe(proc)
    assert warnings[0].startswith(f"dssm: warning: {XRAY_VAL} does not look like the images heart-cine-mri was "
                                  "trained on (")
    assert "a 2D image, the model was trained on volumes" in warnings[0]
    assert warnings[1].startswith(f"dssm: warning: {XRAY_VAL}: ") and "came out empty" in warnings[1]
    case = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["cases"][0]
    assert case["familiar"] is False and case["familiarity"] is not None
    assert case["warnings"] == [w[len("dssm: warning: "):] for w in warnings]


def test_a_validation_xray_through_its_own_model_gets_no_warning(tmp_path):
    _need(XRAY_VAL)
    proc = run_dssm(["segment", "--model", "lungs-cxr", "--device", "cpu", "--timings", tmp_path / "t.json",
                     "-o", tmp_path / "out", XRAY_VAL], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", describe(proc)
    case = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["cases"][0]
    assert case["familiar"] is True and case["familiarity"] >= case["familiarity_threshold"]


def test_an_existing_uncertainty_map_is_refused_before_any_work(tmp_path):
    _need(XRAY_VAL)
    out = tmp_path / "out"
    out.mkdir()
    (out / "CHNCXR_0002_0_uncertainty.png").write_text("an earlier map")
    proc = run_dssm(["segment", "--model", "lungs-cxr", "--uncertainty", "-o", out, XRAY_VAL], cwd=tmp_path)
    line = assert_one_error_line(proc.returncode, proc.stderr)
    assert "CHNCXR_0002_0_uncertainty.png" in line and "--overwrite" in line
    assert [p.name for p in files_under(out)] == ["CHNCXR_0002_0_uncertainty.png"]
    assert (out / "CHNCXR_0002_0_uncertainty.png").read_text(encoding="utf-8") == "an earlier map"


def test_evaluate_uncertainty_measures_each_map(tmp_path):
    from DSSMSegmentLib.evaluate import evaluate, uncertainty_table

    _need(CXR)
    report = evaluate("lungs-cxr", "cxr_lung", device="cpu", limit=3, progress=False, uncertainty=True)
    info = report["uncertainty"]
    assert info["chains"] == unc.UNCERTAINTY_SAMPLES and set(info["measures"]) == set(unc.MEASURES)
    for measure in info["measures"].values():
        assert measure["n_cases"] == 3 and 0 < measure["wrong_voxels"] < measure["voxels"] == 3 * 256 * 256
        assert 0.5 < measure["auroc"] <= 1
    table = uncertainty_table(report)
    assert "| entropy (written) |" in table and "voxel AUROC" in table


# ---------------------------------------------------------------------------------------------------------
# Calibration


@pytest.mark.parametrize("name", DSSM_MODELS)
def test_every_bundled_dssm_model_has_a_familiarity_calibration_from_its_training_cases(name):
    bundle = resolve_model(name)
    calibration = calibration_of(bundle)
    assert calibration["command"] == f"dssm calibrate --model {name} --update-bundle"
    training = bundle.meta["training"]
    assert calibration["n_cases"] == len(select_cases(find_cases(training["data"]), bundle, "train"))
    assert set(calibration["levels"]) == {str(c) for c in range(bundle.architecture.num_classes)}
    assert calibration["threshold"] < calibration["training_scores"]["min"] <= calibration["training_scores"]["median"]
    assert set(calibration["always_found"]) <= {lab.name for lab in bundle.labels}
    assert calibration["geometry"]["dimension"] == (2 if bundle.preprocessing.is_2d else 3)
    assert not calibration_of(resolve_model(name + "-baseline")), "a baseline has no feature density"


def test_calibrate_runs_on_training_cases_and_refuses_a_baseline(tmp_path):
    from DSSMSegmentLib.familiarity import calibrate

    _need(CXR)
    calibration = calibrate("lungs-cxr", device="cpu", limit=3, progress=False)
    assert calibration["n_cases"] == 3 and calibration["command"] == "dssm calibrate --model lungs-cxr --limit 3"
    assert calibration["always_found"] == ["lungs"] and calibration["geometry"] == {"dimension": 2}
    proc = run_dssm(["calibrate", "--model", "lungs-cxr-baseline"], cwd=tmp_path)
    line = assert_one_error_line(proc.returncode, proc.stderr)
    assert "no Bayesian head" in line
    assert json.loads((MODELS / "lungs-cxr" / "model.json").read_text(encoding="utf-8"))["familiarity"]["n_cases"] == 450


def test_familiarity_table_tells_the_models_own_data_from_the_others(tmp_path):
    _need(ACDC)
    proc = run_dssm(["familiarity", "--models", "heart-cine-mri,lungs-cxr", "--limit", "2", "--device", "cpu",
                     "-o", tmp_path / "f.json"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    result = json.loads((tmp_path / "f.json").read_text(encoding="utf-8"))
    assert result["command"] == "dssm familiarity --models heart-cine-mri,lungs-cxr --limit 2"
    heart, lungs = result["table"]["heart-cine-mri"], result["table"]["lungs-cxr"]
    assert heart["own"] == "acdc" and heart["own_flagged"] == 0 and heart["own_n"] == 2
    assert heart["others"]["cxr_lung"]["flagged"] == 2 and heart["others"]["cxr_lung"]["auroc"] == 1.0
    assert lungs["own_flagged"] == 0 and lungs["others"]["acdc"]["flagged"] == 2
    assert result["markdown"] in proc.stdout and "| heart-cine-mri | 0 of 2 |" in proc.stdout
