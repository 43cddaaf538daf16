"""Test-time flips, per-slice Markov noise, and reading bundles without PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BUNDLED, CXR, ROOT, _need, dice, subprocess_env


def test_test_time_flips_follow_the_recorded_augmentation(tmp_path) -> None:
    from DSSMSegmentLib.bundle import ModelBundle, resolve_model

    assert resolve_model("heart-cine-mri").test_time_flips == [(), (-1,), (-2,), (-2, -1)]
    # chest X-rays and prostate MRI were never flipped up-down in training, so neither is their TTA
    assert resolve_model("lungs-cxr").test_time_flips == [(), (-1,)]
    assert resolve_model("prostate-t2-mri").test_time_flips == [(), (-1,)]
    # a bundle that records no augmentation gets no flips (TTA is then plain inference)
    src = resolve_model("lungs-cxr")
    meta = dict(src.meta)
    meta.pop("training")
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert ModelBundle(tmp_path).test_time_flips == [()]


@pytest.fixture(scope="module")
def xray():
    path = CXR / "images" / "MCUCXR_0006_0.png"  # in lungs-cxr's validation split
    _need(path)
    image = sitk.ReadImage(str(path))
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(CXR / "masks" / "MCUCXR_0006_0.png"))) > 127
    return image, gt


def _flipped_lr(image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[..., ::-1].copy())
    out.CopyInformation(image)
    return out


def test_tta_averages_over_flips_so_the_mask_of_a_mirrored_xray_is_the_mirrored_mask(xray) -> None:
    """With the flips {identity, left-right} averaged, segmenting the mirrored image must give exactly the
    mirrored mask (the deterministic baseline network; the lungs model's input is a fixed 256 x 256)."""
    from DSSMSegmentLib.bundle import resolve_model
    from DSSMSegmentLib.inference import Segmenter

    image, gt = xray
    segmenter = Segmenter(resolve_model("lungs-cxr-baseline"), device="cpu", tta=True)
    mask = sitk.GetArrayFromImage(segmenter.segment(image))
    mirrored = sitk.GetArrayFromImage(segmenter.segment(_flipped_lr(image)))
    assert np.array_equal(mirrored[..., ::-1], mask)
    assert dice(mask.astype(bool), gt, True) > 0.95
    # without TTA the network alone is not mirror-symmetric (207 pixels differ on this X-ray)
    plain = sitk.GetArrayFromImage(segmenter.segment(image, tta=False))
    plain_mirrored = sitk.GetArrayFromImage(segmenter.segment(_flipped_lr(image), tta=False))
    assert (plain_mirrored[..., ::-1] != plain).sum() > 50


def test_dssm_with_tta_on_a_validation_xray(xray) -> None:
    from DSSMSegmentLib.bundle import resolve_model
    from DSSMSegmentLib.inference import Segmenter

    image, gt = xray
    segmenter = Segmenter(resolve_model("lungs-cxr"), device="cpu")
    stages = []
    mask = sitk.GetArrayFromImage(segmenter.segment(image, tta=True, progress=lambda s, f: stages.append((s, f))))
    assert dice(mask.astype(bool), gt, True) > 0.95
    fractions = [f for s, f in stages if s == "network"]
    # progress inside the batch: one report per Markov step of each of the two passes, never going back
    assert len(fractions) >= 2 * segmenter.bundle.default_steps
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(0.95)


def test_markov_noise_does_not_depend_on_how_slices_are_batched(acdc_p011, heart_bundle) -> None:
    from DSSMSegmentLib.inference import Segmenter

    image, _ = acdc_p011
    masks = [sitk.GetArrayFromImage(Segmenter(heart_bundle, device="cpu", batch_size=b).segment(image, steps=8))
             for b in (3, 1)]
    differing = int((masks[0] != masks[1]).sum())
    assert differing <= 1e-4 * masks[0].size, f"{differing} voxels differ between batch sizes 3 and 1"


def test_bundles_are_listed_without_pytorch() -> None:
    """The Slicer panel lists models before PyTorch is installed: reading bundles must not import torch."""
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'safetensors'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from DSSMSegmentLib.bundle import available_models, resolve_model\n"
        "names = [b.name for b in available_models()]\n"
        "print(','.join(names)); print(resolve_model('heart-cine-mri').test_time_flips)\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.splitlines()[0].split(",")
    assert listed[:len(BUNDLED)] == BUNDLED


def test_recorded_validation_dice_with_and_without_flips() -> None:
    """``dssm evaluate --tta --update-bundle`` records under a key that the bundle (and so ``dssm models`` and
    the panel) reads back; a model without a validation split has neither."""
    from DSSMSegmentLib.bundle import resolve_model

    heart = resolve_model("heart-cine-mri")
    report = json.loads((ROOT / "results" / "heart-cine-mri" / "K4-tta" / "metrics.json").read_text())
    assert report["tta"] is True and report["steps"] == heart.default_steps
    assert heart.validation_dice(tta=True) == {s: v["dice"]["mean"] for s, v in report["summary"].items()}
    assert set(heart.validation_dice()) == set(heart.validation_dice(tta=True)) == {
        "right ventricle cavity", "left ventricle myocardium", "left ventricle cavity"}
    prostate = resolve_model("prostate-t2-mri")
    assert prostate.validation_dice() == {} and prostate.validation_dice(tta=True) == {}
