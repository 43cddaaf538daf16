"""Where the model is unsure: the per-voxel uncertainty map, and how well it finds wrong voxels.

A run with the uncertainty map (``dssm segment --uncertainty``, :meth:`Segmenter.run`) collects the class
probabilities of every Markov chain of every test-time pass, ``p_1 .. p_N`` for each voxel (N = chains x passes;
DSSM draws :data:`UNCERTAINTY_SAMPLES` chains per slice unless ``--samples`` asks for more). Two measures come from
them, both in nats and divided by ``log C`` (C classes with the background), so that 0 is certain and 1 is the
most unsure any model can be:

* ``entropy``: the entropy of the mean probabilities, ``H(mean_i p_i)`` - the total predictive uncertainty;
* ``mutual_information``: ``H(mean_i p_i) - mean_i H(p_i)``, the part of it that comes from the chains
  disagreeing (the epistemic part, BALD);
* ``entropy_first_chain``: the entropy of the first chain's probabilities (averaged over the test-time passes),
  what a run without extra chains gives - the measure to beat for the chains to be worth their time.

The map ``dssm segment`` writes is :data:`MEASURE`; docs/uncertainty.md says which measure finds wrong voxels
best on the validation cases, and why it was chosen. ``dssm evaluate --uncertainty`` measures both (and the
discriminative baseline's softmax entropy) with :class:`ErrorDetection`: the voxel-level AUROC of the map for
finding wrong voxels, and the per-case Spearman correlation between the case's uncertainty and 1 - Dice.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

MEASURES = ("entropy", "mutual_information", "entropy_first_chain")
MEASURE = "entropy"  # the map dssm segment writes (docs/uncertainty.md: why)
UNCERTAINTY_SAMPLES = 2  # Markov chains per slice for the map, unless --samples asks for more (docs/uncertainty.md: cost)
# A voxel is "uncertain" above this normalised entropy. For two classes it is the entropy of p = 0.9 / 0.1
# (0.469 bits): one chance in ten or more that the voxel belongs elsewhere. With more classes the same split
# between two of them gives a smaller normalised value, so the threshold is that entropy in nats over log C.
BINARY_P = 0.9


def threshold(num_classes: int) -> float:
    """The normalised-entropy threshold of an uncertain voxel for a model with ``num_classes`` classes: the
    entropy of a 90/10 split between two classes, over ``log C``."""
    h = -(BINARY_P * math.log(BINARY_P) + (1 - BINARY_P) * math.log(1 - BINARY_P))
    return h / math.log(max(2, num_classes))


def entropy(p, dim: int = 1):
    """Entropy in nats of probabilities ``p`` (a torch tensor) along ``dim``; ``0 log 0 = 0``."""
    import torch

    return -torch.special.xlogy(p, p).sum(dim)


def write_map(result, image, target, geometry_from=None) -> None:
    """Write a run's uncertainty map (:meth:`Segmenter.run` with ``uncertainty``) as ``dssm segment`` does, on the
    input's exact grid: float for a volume or a 2D NIfTI, NRRD or MHA image (with ``geometry_from``'s NIfTI header, as
    the mask); a 2D picture's as a 16-bit PNG, since a PNG holds no floats (value / 65535 is the uncertainty)."""
    from .imageio import image_like, write_image_atomically

    if str(target).lower().endswith(".png"):
        scaled = np.round(result.uncertainty_maps[MEASURE] * 65535).clip(0, 65535)
        write_image_atomically(image_like(scaled, image, np.uint16), target)
    else:
        write_image_atomically(result.uncertainty, target, geometry_from=geometry_from)


def uncertain_volumes(uncertainty: np.ndarray, likely_structure: np.ndarray, spacing_zyx: Sequence[float],
                      labels, level: float, is_2d: bool) -> Dict[str, float]:
    """Per structure, the volume in mL (area in mm^2 for a 2D image) of voxels whose uncertainty is above
    ``level``; each such voxel counts for the structure most likely there (``likely_structure``: the label value
    with the highest mean probability among the structures, whatever the voxel's own label)."""
    voxel = float(np.prod(spacing_zyx[-2:] if is_2d else spacing_zyx)) / (1.0 if is_2d else 1000.0)
    above = uncertainty > level
    counts = np.bincount(likely_structure[above].ravel(), minlength=max(lab.value for lab in labels) + 1)
    return {lab.name: float(counts[lab.value]) * voxel for lab in labels}


def most_uncertain_slices(uncertainty: np.ndarray, axis: int, level: float, count: int = 5) -> List[tuple]:
    """``(slice index along axis, uncertain voxels)`` of the ``count`` slices with the most voxels above
    ``level``, most first; slices with none are left out."""
    per_slice = (np.moveaxis(uncertainty, axis, 0) > level).reshape(uncertainty.shape[axis], -1).sum(1)
    order = np.argsort(-per_slice, kind="stable")[:count]
    return [(int(i), int(per_slice[i])) for i in order if per_slice[i] > 0]


# ------------------------------------------------------------------------------------------------------
# Measuring: does the map find the wrong voxels, and does a case's uncertainty follow its error?

NEAR = 5  # voxels, in-plane: "near the structures" for the second AUROC of ErrorDetection


def near_structures(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Voxels within :data:`NEAR` voxels in-plane (each slice along axis 0 on its own) of a structure in either
    label map."""
    from scipy import ndimage

    foreground = (pred > 0) | (gt > 0)
    footprint = ndimage.generate_binary_structure(2, 1)
    if foreground.ndim == 3:
        footprint = footprint[None]
    return ndimage.binary_dilation(foreground, footprint, iterations=NEAR)


BINS = 4096  # log-spaced bins from 1e-12 to 1 (and one for exact zeros): voxel AUROC without keeping voxels
_LOG_LO = -12.0


def _bin(values: np.ndarray) -> np.ndarray:
    """Bin index of each value: 0 for values up to 1e-12, then :data:`BINS` log-spaced bins up to 1."""
    v = np.asarray(values, dtype=np.float64).ravel()
    idx = np.zeros(v.shape, np.int64)
    above = v > 10 ** _LOG_LO
    idx[above] = np.floor((np.log10(v[above]) - _LOG_LO) / (-_LOG_LO) * (BINS - 1)).astype(np.int64) + 1
    return np.clip(idx, 0, BINS)


class ErrorDetection:
    """Accumulates, case by case, how an uncertainty measure separates wrong voxels from right ones.

    * voxel AUROC: over all voxels of all cases pooled, the probability that a wrong voxel is more uncertain
      than a right one (ties count half). Values are binned on a log scale (:data:`BINS` bins down to 1e-12),
      so no voxel list is kept; ties inside a bin count half too.
    * the same AUROC near the structures only: the voxels within :data:`NEAR` voxels (in-plane) of a structure
      in the mask or the ground truth. Most voxels of an image are plain background, certain and right, which
      lifts the AUROC over all voxels; this one asks where the errors are among the voxels that matter.
    * per case: the case's uncertainty, the sum of the map over the image divided by the number of voxels the
      model labelled as a structure (an expected error per labelled voxel: the mean over the whole image would
      mostly measure the field of view), and 1 - mean Dice over the structures; :meth:`spearman` correlates them.
    """

    def __init__(self) -> None:
        self.wrong = np.zeros(BINS + 1, np.int64)
        self.right = np.zeros(BINS + 1, np.int64)
        self.near_wrong = np.zeros(BINS + 1, np.int64)
        self.near_right = np.zeros(BINS + 1, np.int64)
        self.cases: Dict[str, tuple] = {}

    def add(self, case: str, uncertainty: np.ndarray, pred: np.ndarray, gt: np.ndarray, mean_dice: float) -> None:
        """One case: its map, mask and ground truth (the same shape; a volume's slices along axis 0)."""
        bins = _bin(uncertainty)
        wrong = (pred != gt).ravel()
        near = near_structures(pred, gt).ravel()
        for counts, kind in ((self.wrong, wrong), (self.right, ~wrong), (self.near_wrong, wrong & near),
                             (self.near_right, ~wrong & near)):
            counts += np.bincount(bins[kind], minlength=BINS + 1)
        labelled = int(np.count_nonzero(pred))
        self.cases[case] = (float(np.sum(uncertainty, dtype=np.float64)) / max(1, labelled), 1.0 - float(mean_dice))

    def auroc(self, near: bool = False) -> float:
        """P(uncertainty of a wrong voxel > that of a right voxel) + half the ties; NaN without both kinds.
        ``near``: among the voxels near the structures only."""
        wrong, right = (self.near_wrong, self.near_right) if near else (self.wrong, self.right)
        n_wrong, n_right = wrong.sum(), right.sum()
        if not n_wrong or not n_right:
            return float("nan")
        right_below = np.concatenate([[0], np.cumsum(right)[:-1]])  # right voxels in lower bins
        return float((wrong * (right_below + 0.5 * right)).sum() / (n_wrong * n_right))

    def spearman(self) -> float:
        """Spearman rank correlation between the per-case uncertainty and 1 - Dice (NaN with < 3 cases)."""
        if len(self.cases) < 3:
            return float("nan")
        from scipy.stats import spearmanr

        u, err = zip(*self.cases.values())
        if len(set(u)) < 2 or len(set(err)) < 2:
            return float("nan")
        return float(spearmanr(u, err).statistic)

    def summary(self) -> dict:
        return {"auroc": self.auroc(), "auroc_near": self.auroc(near=True), "spearman": self.spearman(),
                "n_cases": len(self.cases), "wrong_voxels": int(self.wrong.sum()),
                "voxels": int(self.wrong.sum() + self.right.sum()),
                "near_wrong_voxels": int(self.near_wrong.sum()),
                "near_voxels": int(self.near_wrong.sum() + self.near_right.sum()),
                "per_case": {c: {"uncertainty": u, "one_minus_dice": e} for c, (u, e) in self.cases.items()}}
