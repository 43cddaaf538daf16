"""First-use dependencies: find what the engine needs that Slicer lacks, ask the user, then install it.

* PyTorch comes through the PyTorch extension's ``PyTorchUtils`` (declared in ``EXTENSION_DEPENDS``), which
  picks the CUDA build that fits the computer's NVIDIA driver, or the CPU build.
* The other packages come through Slicer's own ``slicer.util.pip_install``, with a pip constraints file that
  pins the installed SimpleITK, numpy and requests: pip may then choose versions that fit them, but never
  replaces them (Slicer's SimpleITK has Slicer-specific IO; numpy and requests are used by Slicer itself).
* When pip fails, the message says how to install from a folder of wheels on a computer with no internet.

The package checks and the constraints are plain Python; only :meth:`InstallLogic.install` needs Slicer.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import tempfile
from pathlib import Path
from typing import Callable, List, Protocol

TORCH_REQUIREMENT = ">=2.1"
# Import name -> pip requirement, for what the engine and the background process need besides PyTorch.
PIP_REQUIREMENTS = {"safetensors": "safetensors>=0.4", "scipy": "scipy>=1.9", "psutil": "psutil>=5.9"}
PROTECTED_PACKAGES = ("SimpleITK", "numpy", "requests")


class InstallError(Exception):
    """Installing failed; ``str(error)`` tells the user what to do."""


def missingPackages() -> List[str]:
    """Import names of the required packages that cannot be imported (PyTorch first)."""
    importlib.invalidate_caches()
    return [name for name in ["torch", *PIP_REQUIREMENTS] if importlib.util.find_spec(name) is None]


def protectedConstraints() -> List[str]:
    """``name==version`` for each protected package that is installed: pip must keep these as they are."""
    pins = []
    for name in PROTECTED_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def pipRequirements(missing: List[str]) -> List[str]:
    return [PIP_REQUIREMENTS[name] for name in missing if name in PIP_REQUIREMENTS]


def describeMissing(missing: List[str]) -> str:
    """The question put to the user before anything is installed."""
    lines = ["DSSM Segment needs Python packages that are not installed yet:"]
    if "torch" in missing:
        lines.append(f"  - PyTorch ({TORCH_REQUIREMENT}), installed by the PyTorch extension: a large download, "
                     "up to a few GB for a build with NVIDIA GPU support")
    lines += [f"  - {requirement}" for requirement in pipRequirements(missing)]
    lines.append("They are downloaded from the internet and installed into Slicer's own Python. Slicer's "
                 "SimpleITK, numpy and requests are not changed. This may take several minutes. Install now?")
    return "\n".join(lines)


def offlineHelp(missing: List[str]) -> str:
    """How to install the same packages on a computer without internet access."""
    names = " ".join(("torch" if name == "torch" else PIP_REQUIREMENTS[name]) for name in missing)
    return ("If this computer has no internet access: on a computer that has it (same operating system and "
            f"Slicer version) run\n    PythonSlicer -m pip download {names} -d dssm-wheels\ncopy the "
            "dssm-wheels folder over, and in Slicer's Python console run\n"
            f"    slicer.util.pip_install('--no-index --find-links=/path/to/dssm-wheels {names}')\n"
            "then restart Slicer.")


class InstallLogicProtocol(Protocol):
    """What the panel needs of the installer (tests give it a fake)."""

    def missingPackages(self) -> List[str]: ...

    def install(self, confirm: Callable[[str], bool]) -> bool: ...


class InstallLogic:
    """Installs what :func:`missingPackages` reports, after ``confirm(question)`` returns True."""

    def missingPackages(self) -> List[str]:
        return missingPackages()

    def install(self, confirm: Callable[[str], bool]) -> bool:
        """True when everything is installed; False when the user declined. Raises :class:`InstallError`."""
        missing = missingPackages()
        if not missing:
            return True
        if not confirm(describeMissing(missing)):
            return False
        try:
            if "torch" in missing:
                self._installTorch()
            if pipRequirements(missing):
                self._pipInstall(pipRequirements(missing))
        except InstallError:
            raise
        except Exception as exc:  # pip and PyTorchUtils raise many kinds; all mean "not installed"
            raise InstallError(f"Installing the packages failed: {exc}\n\n{offlineHelp(missing)}") from exc
        still = missingPackages()
        if still:
            raise InstallError(f"These packages are still missing after installing: {', '.join(still)}. "
                               f"Restart Slicer and try again.\n\n{offlineHelp(still)}")
        return True

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise InstallError("DSSM Segment needs the PyTorch extension to install PyTorch. Install 'PyTorch' "
                               "from the Extensions Manager, restart Slicer, and click Segment again.") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise InstallError("PyTorch was not installed. Install it from the PyTorch Utils module and try again.")

    @staticmethod
    def _pipInstall(requirements: List[str]) -> None:
        import slicer

        with tempfile.TemporaryDirectory(prefix="DSSMSegment-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text("\n".join(protectedConstraints()) + "\n")
            slicer.util.pip_install(["-c", str(constraints), *requirements])
