"""First-use dependencies of the Slicer module: what is missing, what the user is asked, what pip may not touch.

The installation itself needs Slicer (PyTorchUtils, ``slicer.util.pip_install``); everything up to it is
plain Python and is tested here against this environment's real packages.
"""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement

from DSSMSegmentSlicerLib import InstallLogic as install


def test_this_environment_has_everything_the_engine_needs():
    assert install.missingPackages() == []


def test_installed_simpleitk_and_numpy_are_pinned_to_their_exact_versions():
    pins = {Requirement(line).name: Requirement(line) for line in install.protectedConstraints()}
    for name in ("SimpleITK", "numpy"):
        installed = importlib.metadata.version(name)
        assert str(pins[name].specifier) == f"=={installed}"
    assert set(pins) <= set(install.PROTECTED_PACKAGES)


def test_the_question_names_every_missing_package_and_the_offline_help_installs_the_same():
    missing = ["torch", "safetensors", "scipy"]
    question = install.describeMissing(missing)
    assert "PyTorch" in question and "safetensors>=0.4" in question and "scipy>=1.9" in question
    assert "psutil" not in question and "SimpleITK, numpy and requests are not changed" in question
    offline = install.offlineHelp(missing)
    assert "pip download torch safetensors>=0.4 scipy>=1.9 -d dssm-wheels" in offline
    assert "--no-index --find-links" in offline


def test_nothing_is_installed_unless_the_user_agrees(monkeypatch):
    asked = []
    logic = install.InstallLogic()
    assert logic.install(confirm=lambda question: asked.append(question) or False) is True
    assert asked == [], "with nothing missing, the user is not asked"
    monkeypatch.setattr(install, "missingPackages", lambda: ["psutil"])
    assert logic.install(confirm=lambda question: asked.append(question) or False) is False
    assert len(asked) == 1 and "psutil>=5.9" in asked[0]
