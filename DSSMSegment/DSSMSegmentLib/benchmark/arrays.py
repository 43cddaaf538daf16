"""Running without SimpleITK (e.g. a bare GPU host): a minimal in-memory image with the few methods the
pipeline uses, and a stand-in ``SimpleITK`` module that handles it (arrays only, no files)."""

from __future__ import annotations

import sys

import numpy as np


class ArrayImage:
    """A stand-in for ``SimpleITK.Image`` built from a numpy array (z, y, x[, c]) or (y, x[, c])."""

    def __init__(self, array: np.ndarray, spacing=None, origin=None, direction=None, vector: bool = False) -> None:
        self.array = np.asarray(array)
        self.vector = vector
        dim = self.array.ndim - (1 if vector else 0)
        self._dim = dim
        self.spacing = tuple(spacing) if spacing is not None else (1.0,) * dim
        self.origin = tuple(origin) if origin is not None else (0.0,) * dim
        self.direction = tuple(direction) if direction is not None else tuple(np.eye(dim).ravel())

    def GetDimension(self) -> int:  # noqa: N802 - SimpleITK's names
        return self._dim

    def GetSize(self):  # noqa: N802
        shape = self.array.shape[:self._dim]
        return tuple(reversed(shape))

    def GetSpacing(self):  # noqa: N802
        return self.spacing

    def GetOrigin(self):  # noqa: N802
        return self.origin

    def GetDirection(self):  # noqa: N802
        return self.direction

    def GetNumberOfComponentsPerPixel(self) -> int:  # noqa: N802
        return int(self.array.shape[-1]) if self.vector else 1

    def SetSpacing(self, v):  # noqa: N802
        self.spacing = tuple(v)

    def SetOrigin(self, v):  # noqa: N802
        self.origin = tuple(v)

    def SetDirection(self, v):  # noqa: N802
        self.direction = tuple(v)


def install_sitk_shim() -> None:
    """Make ``import SimpleITK`` give a tiny module that handles :class:`ArrayImage` (arrays only, no files)."""
    import types

    shim = types.ModuleType("SimpleITK")
    shim.__dssm_shim__ = True
    shim.Image = ArrayImage
    shim.ProcessObject = types.SimpleNamespace(SetGlobalWarningDisplay=lambda flag: None)
    shim.ImageSeriesReader = types.SimpleNamespace(GetGDCMSeriesIDs=lambda path: [])
    shim.GetArrayViewFromImage = lambda image: image.array
    shim.GetArrayFromImage = lambda image: np.array(image.array)
    shim.GetImageFromArray = lambda array, isVector=False: ArrayImage(array, vector=isVector)

    def _no_files(*args, **kwargs):
        raise RuntimeError("SimpleITK is not installed: the benchmark runs from arrays only (--cases FILE.npz)")

    shim.ReadImage = shim.WriteImage = _no_files
    sys.modules["SimpleITK"] = shim


def have_simpleitk() -> bool:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return False
    return not getattr(sys.modules.get("SimpleITK"), "__dssm_shim__", False)

