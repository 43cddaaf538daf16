"""A model's recorded plan: the ``architecture`` and ``preprocessing`` blocks of ``model.json``.

Plain dataclasses without PyTorch, so that reading a bundle (``dssm models``, the Slicer panel's model list)
works before PyTorch is installed. :mod:`.networks` builds the network from :class:`ArchitectureConfig`;
:mod:`.preprocess` applies :class:`Preprocessing`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Tuple


@dataclass
class ArchitectureConfig:
    """Hyperparameters stored in ``model.json`` under ``architecture``."""

    kind: str = "dssm"  # "dssm" or "baseline"
    in_channels: int = 1
    num_classes: int = 2  # including background
    widths: tuple = (16, 32, 64, 128, 256)
    feature_channels: int = 32
    latent_channels: int = 4
    gmm_components: int = 3
    denoiser_width: int = 32
    timesteps: int = 1000
    markov_start: float = 0.5  # noise level (fraction of T) at which the stable chain starts
    # How DSSM's output is formed: "bayes" (the first models): the Bayesian head's posterior with the decoded
    # latent as its prior; "residual" (two-stage DSSM): the frozen first stage's logits (its discriminative
    # baseline) plus a zero-initialised correction from the chain, so that K = 0 is exactly the baseline.
    refiner: str = "bayes"
    extra: dict = field(default_factory=dict)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArchitectureConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.widths = tuple(cfg.widths)
        return cfg


@dataclass
class Preprocessing:
    modality: str = "MRI"
    channels: list = field(default_factory=lambda: ["image"])
    spacing_mm: Optional[list] = None  # in-plane target spacing (row, column) for volumes
    size: Optional[list] = None  # fixed in-plane size (rows, columns) for 2D images
    # pad slices smaller than this (rows, columns, in the network's pixels) to it, centred: the field of view
    # the model was trained on when its training tiles were larger than the images
    min_size: Optional[list] = None
    percentiles: list = field(default_factory=lambda: [0.5, 99.5])
    is_2d: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def target_shape(self, shape_hw: Sequence[int], spacing_hw: Sequence[float]) -> Tuple[int, int]:
        if self.size:
            return int(self.size[0]), int(self.size[1])
        if self.spacing_mm:
            return tuple(max(8, int(round(n * s / t))) for n, s, t in zip(shape_hw, spacing_hw, self.spacing_mm))
        return int(shape_hw[0]), int(shape_hw[1])
