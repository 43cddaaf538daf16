"""Shared fixtures and helpers for the engine tests.

The tests run the real bundled models on real data from ``../shared/data`` (ACDC, Prostate158, chest X-rays,
ISIC dermoscopy). To stay within a 2-core CPU budget they crop volumes to a few slices and share the loaded
models and the small training cache across tests (session fixtures).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DSSMSegment"))

from DSSMSegmentLib import datasets  # noqa: E402
from DSSMSegmentLib.imageio import read_image  # noqa: E402

DATA = datasets.SHARED_DATA
ACDC = DATA / "acdc" / "training"
PROSTATE = DATA / "prostate158"
CXR = DATA / "cxr_lung"
ISIC = DATA / "isic2018"
MODELS = ROOT / "DSSMSegment" / "Resources" / "Models"
BUNDLED = ["heart-cine-mri", "left-atrium-lge-mri", "lungs-cxr", "prostate-t2-mri", "skin-lesion-dermoscopy"]

# Heart model labels (ACDC): 1 RV cavity, 2 LV myocardium, 3 LV cavity.
RV, MYO, LV = 1, 2, 3


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set DSSM_DATA to the shared/data folder)")


# ---------------------------------------------------------------------------------------------------------
# Running the command line


def dssm_command() -> List[str]:
    """The installed ``dssm`` entry point next to this interpreter, else ``python -m DSSMSegmentLib.cli``."""
    script = Path(sys.executable).with_name("dssm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "DSSMSegmentLib.cli"]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "DSSMSegment"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("DSSM_MODELS_PATH", None)
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def run_dssm(args: Sequence[str], cwd: Path, timeout: float = 400, env: dict = None) -> subprocess.CompletedProcess:
    """Run ``dssm ARGS`` as a user would, in its own process (``env``: more environment variables); returns the
    completed process (text)."""
    return subprocess.run(dssm_command() + [str(a) for a in args], cwd=str(cwd), env={**subprocess_env(), **(env or {})},
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)


def run_module(args: Sequence[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (e.g. ``-m torch.distributed.run ...``) with the test environment."""
    return subprocess.run([sys.executable] + [str(a) for a in args], cwd=str(cwd), env=subprocess_env(),
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def assert_one_error_line(returncode: int, stderr: str) -> str:
    """The contract for user errors: non-zero exit and exactly one line ``dssm: error: ...``, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert returncode != 0, f"expected a non-zero exit, got {returncode}; stderr: {stderr!r}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("dssm: error: "), lines[0]
    assert len(lines[0]) > len("dssm: error: ") + 15, lines[0]
    return lines[0]


def files_under(folder: Path) -> List[Path]:
    """Every file below ``folder`` (hidden and partial files included); [] if it does not exist."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------------
# Metrics and images


def dice(pred: np.ndarray, gt: np.ndarray, label: int) -> float:
    a, b = pred == label, gt == label
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def crop_slices(image: sitk.Image, z0: int, z1: int) -> sitk.Image:
    """Index-space crop to slices z0..z1-1 of a 3D image; SimpleITK keeps the physical geometry."""
    return image[:, :, z0:z1]


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-5) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def grid_report(a: sitk.Image, b: sitk.Image) -> str:
    return (f"size {a.GetSize()} vs {b.GetSize()}, origin {a.GetOrigin()} vs {b.GetOrigin()}, "
            f"spacing {a.GetSpacing()} vs {b.GetSpacing()}, direction {a.GetDirection()} vs {b.GetDirection()}")


# ---------------------------------------------------------------------------------------------------------
# Session fixtures: real data and loaded models


@pytest.fixture(scope="session")
def acdc_p011():
    """patient011 ED (frame01) - in heart-cine-mri's validation split - cropped to 3 mid-ventricular slices.

    Returns (image, ground truth array (Z, Y, X)). The crop keeps ACDC's real geometry (1.48 x 1.48 x 10 mm).
    """
    folder = ACDC / "patient011"
    _need(folder)
    image = read_image(folder / "patient011_frame01.nii.gz")
    gt = sitk.GetArrayFromImage(read_image(folder / "patient011_frame01_gt.nii.gz"))
    return crop_slices(image, 3, 6), gt[3:6]


@pytest.fixture(scope="session")
def heart_bundle():
    from DSSMSegmentLib.bundle import resolve_model

    return resolve_model("heart-cine-mri")


@pytest.fixture(scope="session")
def heart_segmenter(heart_bundle):
    from DSSMSegmentLib.inference import Segmenter

    return Segmenter(heart_bundle, device="cpu")


@pytest.fixture(scope="session")
def prostate_cache(tmp_path_factory):
    """The prostate-t2-mri training cache built from the 4 real Prostate158 cases (shared by train tests)."""
    from DSSMSegmentLib.preprocess import Preprocessing
    from DSSMSegmentLib.recipes import get_recipe

    _need(PROSTATE)
    recipe = get_recipe("prostate-t2-mri")
    out = tmp_path_factory.mktemp("prostate-cache") / "prostate.npz"
    datasets.build_cache(recipe["data"], Preprocessing.from_dict(recipe["preprocessing"]), 1, recipe["tile"], out,
                         recipe.get("encoding", "jpeg"), progress=False)
    return out
