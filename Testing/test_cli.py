"""The ``dssm`` command line: batch segmentation of a folder, overlays, timings, and ``dssm models``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import (ACDC, BUNDLED, LV, MODELS, _need, assert_one_error_line, crop_slices, describe, dice,
                      files_under, run_dssm, same_grid)
from DSSMSegmentLib import cli
from DSSMSegmentLib.bundle import ModelBundle
from DSSMSegmentLib.imageio import read_image

PATIENTS = ["patient011", "patient015", "patient017"]  # all in heart-cine-mri's validation split


@pytest.fixture(scope="module")
def acdc_folder(tmp_path_factory):
    """A folder of three real ACDC ED volumes, each cropped to 2 mid-ventricular slices, plus a stray text file."""
    folder = tmp_path_factory.mktemp("acdc-folder")
    truth = {}
    for patient in PATIENTS:
        _need(ACDC / patient)
        image = read_image(ACDC / patient / f"{patient}_frame01.nii.gz")
        gt = read_image(ACDC / patient / f"{patient}_frame01_gt.nii.gz")
        mid = image.GetSize()[2] // 2
        sitk.WriteImage(crop_slices(image, mid - 1, mid + 1), str(folder / f"{patient}.nii.gz"))
        truth[patient] = sitk.GetArrayFromImage(gt)[mid - 1:mid + 1]
    (folder / "README.txt").write_text("not an image; dssm must skip it\n")
    return folder, truth


@pytest.fixture(scope="module")
def folder_run(acdc_folder, tmp_path_factory):
    """``dssm segment --overlay --timings`` on the folder, counting how often a model is loaded."""
    folder, _ = acdc_folder
    out = tmp_path_factory.mktemp("acdc-out")
    timings = out / "timings.json"
    loads = []
    original = ModelBundle.load_network

    def counting(self, device):
        loads.append(self.name)
        return original(self, device)

    mp = pytest.MonkeyPatch()
    mp.setattr(ModelBundle, "load_network", counting)
    try:
        code = cli.main(["segment", "--model", "heart-cine-mri", "--steps", "1", "--overlay", "--timings",
                         str(timings), "-o", str(out / "masks"), str(folder)])
    finally:
        mp.undo()
    assert code == 0
    return out, timings, loads


def test_folder_loads_the_model_once_and_writes_one_mask_per_input(acdc_folder, folder_run) -> None:
    folder, truth = acdc_folder
    out, _, loads = folder_run
    assert loads == ["heart-cine-mri"], f"model loaded {len(loads)} times for {len(PATIENTS)} inputs"
    masks = sorted(p.name for p in (out / "masks").glob("*.nii.gz"))
    assert masks == [f"{p}.nii.gz" for p in PATIENTS]
    for patient in PATIENTS:
        image = sitk.ReadImage(str(folder / f"{patient}.nii.gz"))
        mask = sitk.ReadImage(str(out / "masks" / f"{patient}.nii.gz"))
        assert same_grid(mask, image)
        # each output is that input's segmentation, not another's
        assert dice(sitk.GetArrayFromImage(mask), truth[patient], LV) > 0.85, patient
    assert not [p for p in files_under(out / "masks") if p.name.startswith(".partial-")]


def test_overlay_png_shows_the_mask_in_label_colours(acdc_folder, folder_run, heart_bundle) -> None:
    out, _, _ = folder_run
    colours = {lab.value: tuple(lab.color) for lab in heart_bundle.labels}
    for patient in PATIENTS:
        png = out / "masks" / f"{patient}_overlay.png"
        assert png.is_file(), png
        picture = Image.open(png)
        assert picture.format == "PNG" and picture.mode == "RGB"
        pixels = np.asarray(picture).reshape(-1, 3)
        present = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / f"{patient}.nii.gz")))))
        assert present >= {1, 2, 3}
        for value in present - {0}:  # every structure is outlined in its own colour
            assert (pixels == colours[value]).all(1).any(), (patient, value)
        assert len(np.unique(pixels, axis=0)) > 50  # the image itself is there, not just flat colours


def test_timings_json_has_per_case_stages(folder_run) -> None:
    out, timings, _ = folder_run
    report = json.loads(timings.read_text(encoding="utf-8"))
    assert report["model"] == "heart-cine-mri" and report["device"] == "cpu"
    assert report["model_load_seconds"] > 0
    # the settings the masks were made with (--steps 1; no --seed: 0)
    assert report["tta"] is False and report["samples"] == 1 and report["steps"] == 1 and report["seed"] == 0
    assert [c["input"].rsplit("/", 1)[-1] for c in report["cases"]] == [f"{p}.nii.gz" for p in PATIENTS]
    for case in report["cases"]:
        stages = case["stages"]
        assert {"read", "preprocess", "network", "resample out", "postprocess", "write", "overlay"} <= set(stages)
        assert all(v >= 0 for v in stages.values())
        assert stages["network"] > 0
        assert case["seconds"] == pytest.approx(sum(stages.values()), abs=0.01)
        assert case["output"].endswith(".nii.gz")


def test_two_inputs_with_the_same_name_are_refused(acdc_folder, tmp_path, capfd) -> None:
    """p1/x.nii.gz and p2/x.nii.gz would overwrite each other's mask: an error before any work."""
    folder, _ = acdc_folder
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(folder / "patient011.nii.gz", tmp_path / sub / "scan.nii.gz")
    out = tmp_path / "out"
    code = cli.main(["segment", "--model", "heart-cine-mri", "-o", str(out), str(tmp_path / "a"), str(tmp_path / "b")])
    line = assert_one_error_line(code, capfd.readouterr().err)
    assert "scan" in line and "both" in line, line
    assert files_under(out) == []


def test_dssm_models_lists_the_bundled_models_with_labels(tmp_path) -> None:
    proc = run_dssm(["models"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    text = proc.stdout
    for name in BUNDLED:
        meta = json.loads((MODELS / name / "model.json").read_text(encoding="utf-8"))
        header = [ln for ln in text.splitlines() if ln.startswith(name + "  [")]
        assert len(header) == 1, f"{name} not listed once:\n{text}"
        assert meta["preprocessing"]["modality"] in header[0]
        labels_line = text.splitlines()[text.splitlines().index(header[0]) + 1]
        expected = ", ".join(f"{lab['value']} {lab['name']}" for lab in meta["labels"])
        assert labels_line.strip() == f"labels: {expected}", labels_line
    assert "1 right ventricle cavity, 2 left ventricle myocardium, 3 left ventricle cavity" in text
    # the recorded validation Dice with 4 Markov samples and with test-time flips are listed under the plain one
    heart = json.loads((MODELS / "heart-cine-mri" / "model.json").read_text(encoding="utf-8"))
    lines = text.splitlines()
    first = lines.index(next(ln for ln in lines if ln.startswith("heart-cine-mri  [")))
    assert lines[first + 2].strip().startswith(f"default K = {heart['default_steps']}: ")  # and why (test_campaign)
    for offset, (option, key) in enumerate([("--samples 4", "val@K=4+samples=4"), ("--tta", "val@K=4+tta")], 4):
        lv = heart["metrics"]["evaluations"][key]["summary"]["left ventricle cavity"]["dice"]["mean"]
        line = lines[first + offset]
        assert line.strip().startswith("with ") and f"({option}):" in line, line
        assert f"left ventricle cavity {lv:.3f}" in line, line


def test_dssm_models_json(capfd) -> None:
    assert cli.main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capfd.readouterr().out)}
    assert set(BUNDLED) <= set(listed)
    for name in BUNDLED:
        meta = json.loads((MODELS / name / "model.json").read_text(encoding="utf-8"))
        labels = {int(k): v for k, v in listed[name]["labels"].items()}  # JSON keys are strings
        assert labels == {lab["value"]: lab["name"] for lab in meta["labels"]}
        assert listed[name]["kind"] == "dssm"
    assert listed["skin-lesion-dermoscopy"]["modality"] == "dermoscopy"


def test_evaluate_on_two_datasets_says_which_case_is_from_which(tmp_path) -> None:
    """``dssm evaluate A+B`` scores each dataset on its own and lists each dataset's cases in metrics.json
    (``cases_by_dataset``), so that case-by-case comparisons (scripts/experiments/where_k_helps.py) can keep
    them apart. The skin model's 27 PH2 validation images come first, then 2 of ISIC 2018's."""
    from conftest import DATA, ISIC

    _need(ISIC)
    _need(DATA / "ph2")
    proc = run_dssm(["evaluate", "ph2+isic2018", "--model", "skin-lesion-dermoscopy", "--steps", "0", "--limit", "29",
                     "-o", "out"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    report = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    cases = report["cases_by_dataset"]
    assert {name: len(ids) for name, ids in cases.items()} == {"ph2": 27, "isic2018": 2}
    assert sorted(cases["ph2"] + cases["isic2018"]) == sorted(report["per_case"])
    assert all(c.startswith("IMD") for c in cases["ph2"]) and all(c.startswith("ISIC_") for c in cases["isic2018"])
    for name, ids in cases.items():
        mean = float(np.mean([report["per_case"][c]["skin lesion"]["dice"] for c in ids]))
        assert abs(report["by_dataset"][name]["skin lesion"]["dice"]["mean"] - mean) < 1e-9


# ---------------------------------------------------------------------------------------------------------
# dssm evaluate -o: an earlier evaluation is kept unless --overwrite; one case has no spread; pictures in pixels


@pytest.fixture(scope="module")
def dermoscopy_evaluation(tmp_path_factory):
    """``dssm evaluate`` of one validation photo of skin-lesion-dermoscopy (ISIC_0000007), its JPEG header saying
    300 dpi, as cameras and photo editors write: the same pixels, which SimpleITK reads with a 0.085 mm spacing.
    Returns (dataset spec, the -o folder, the finished process)."""
    from conftest import ISIC

    name = "ISIC_0000007"
    _need(ISIC / "images" / f"{name}.jpg")
    root = tmp_path_factory.mktemp("dermoscopy")
    data = root / "photos"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    jpeg = bytearray((ISIC / "images" / f"{name}.jpg").read_bytes())
    assert jpeg[6:11] == b"JFIF\0"  # APP0: density unit at byte 13, then x and y density
    jpeg[13:18] = bytes([1, 1, 44, 1, 44])  # dots per inch, 300 x 300
    (data / "images" / f"{name}.jpg").write_bytes(bytes(jpeg))
    shutil.copy(ISIC / "masks" / f"{name}_segmentation.png", data / "masks")
    spec = f"isic2018={data}"
    proc = run_dssm(["evaluate", spec, "--model", "skin-lesion-dermoscopy", "--steps", "0", "-o", root / "out"],
                    cwd=root)
    assert proc.returncode == 0, describe(proc)
    return spec, root / "out", proc


def test_evaluate_measures_hd95_of_a_picture_in_pixels(dermoscopy_evaluation) -> None:
    """A photo has no pixel size, only a print resolution: its HD95 is in pixels, as a picture's uncertain area is,
    under hd95_px in metrics.json and metrics.csv and as "HD95 (px)" in the table; it was the print resolution's
    "mm" (300 dpi: 0.085 mm a pixel)."""
    from medpy.metric import binary

    _, out, proc = dermoscopy_evaluation
    image = next((out.parent / "photos" / "images").iterdir())
    assert sitk.ReadImage(str(image)).GetSpacing() == pytest.approx((25.4 / 300, 25.4 / 300))
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert report["hd95_unit"] == "px"
    case = report["per_case"]["ISIC_0000007"]["skin lesion"]
    assert "hd95_mm" not in case and "hd95_mm" not in report["summary"]["skin lesion"]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / "ISIC_0000007.png"))) > 0
    truth = np.asarray(Image.open(next((out.parent / "photos" / "masks").iterdir())).convert("L")) > 127
    assert case["hd95_px"] == pytest.approx(binary.hd95(mask, truth), rel=1e-6) and case["hd95_px"] > 1
    assert report["summary"]["skin lesion"]["hd95_px"]["mean"] == pytest.approx(case["hd95_px"])
    header = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "case,structure,dice,hd95_px,iou,precision,recall,seconds"
    assert "| Structure | Dice | HD95 (px) | IoU | Precision | Recall |" in proc.stdout.splitlines()


def test_evaluate_prints_one_case_without_a_spread(dermoscopy_evaluation) -> None:
    """One case has no sd to give: each cell is its value alone, not "± 0.000"."""
    _, out, proc = dermoscopy_evaluation
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert report["n_cases"] == 1
    stats = report["summary"]["skin lesion"]
    hd95 = next(v for k, v in stats.items() if k.startswith("hd95_"))
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| skin lesion |"))
    assert row == (f"| skin lesion | {stats['dice']['mean']:.3f} | {hd95['mean']:.2f} | "
                   f"{stats['iou']['mean']:.3f} | {stats['precision']['mean']:.3f} | {stats['recall']['mean']:.3f} |")


def test_evaluate_keeps_an_earlier_evaluation_unless_overwrite(dermoscopy_evaluation, tmp_path) -> None:
    """As ``dssm segment`` keeps its outputs: an -o folder that holds an earlier evaluation (its metrics, or only the
    masks of one that was stopped) is refused before any work, with one line, unless --overwrite."""
    spec, first, _ = dermoscopy_evaluation
    out = tmp_path / "out"
    shutil.copytree(first, out)
    command = ["evaluate", spec, "--model", "skin-lesion-dermoscopy", "--steps", "0", "-o", out]
    before = {p: p.read_bytes() for p in files_under(out)}
    proc = run_dssm(command, cwd=tmp_path)
    line = assert_one_error_line(proc.returncode, proc.stderr)
    assert f"{out / 'metrics.csv'}, {out / 'metrics.json'}, {out / 'masks' / 'ISIC_0000007.png'} already exist" \
        in line and "--overwrite" in line, line
    assert proc.stdout == "" and {p: p.read_bytes() for p in files_under(out)} == before
    (out / "metrics.csv").unlink()
    (out / "metrics.json").unlink()
    proc = run_dssm(command, cwd=tmp_path)
    line = assert_one_error_line(proc.returncode, proc.stderr)
    assert f"{out / 'masks' / 'ISIC_0000007.png'} already exists; pass --overwrite" in line, line
    proc = run_dssm(command + ["--overwrite"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["per_case"] == \
        json.loads((first / "metrics.json").read_text(encoding="utf-8"))["per_case"]
