"""Is this image what the model knows? The familiarity score, its calibration, and the warnings.

DSSM's Bayesian head models the pixel features of each class ``c`` as a Gaussian mixture, ``p(f|c)``. On an
image like the training images, the features of a pixel are typical of the class the model gives it; on an image
from elsewhere (another modality, another organ) many pixels get features that their class's mixture has rarely
seen, with a low ``log p(f|c)`` (:meth:`BayesianHead.class_log_likelihood`).

**Score** (:func:`image_score`): for each class the model gives to at least :data:`MIN_PIXELS` pixels of the
image (network grid), the share of those pixels whose ``log p(f|c)`` is above that class's level, the
:data:`PIXEL_PERCENTILE` th percentile of ``log p(f|c)`` over the training pixels given class ``c``; the score is
the mean of these shares over the classes, in percent (each structure counts as much as the background). About
98 on a typical training image; lower the more of the image is unlike what the model learnt.

The unconditional density ``p(f) = sum_c p(f|c) / C`` was tried first and does not work here: images of other
datasets often get features in the dense part of the background's mixture, so ``p(f)`` rated them as familiar
as the training images or more (docs/uncertainty.md).

**Cheap signals** beside the score, each also computed from the training cases:

* the number of channels: an image with other channels than the model's is refused outright (an error);
* the geometry: a 2D image for a model trained on volumes or the reverse, or, for volumes, a slice spacing or
  in-plane spacing more than :data:`SPACING_FACTOR` times outside the training cases' range;
* a structure the model found in every training case coming out empty.

An image is flagged when its score is below the calibrated threshold or a cheap signal fires. For ranking
(the AUROC of docs/uncertainty.md), :func:`combined_score` puts every image with a cheap signal below every image
without one.

Calibration (``dssm calibrate --model M``, :func:`calibrate`) runs the model on its own TRAINING cases, as
``dssm segment`` does, and records all of it in ``model.json`` under ``familiarity`` with the command that made
it. The threshold lies below the lowest training score by a margin (:func:`threshold_from`). Nothing is tuned
on the validation cases: docs/uncertainty.md reports the score on them. A model without a Bayesian head (the
discriminative baseline) has no score; a model without calibration gets no familiarity warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .errors import DSSMError

PIXEL_PERCENTILE = 2.0  # percent of the training pixels of a class below its level
MIN_PIXELS = 64  # a class given to fewer pixels (an 8 x 8 patch) has too few for a share
MARGIN = 0.5  # the threshold lies this many training spreads (median - lowest score) below the lowest score
SPACING_FACTOR = 1.5  # a voxel spacing up to this factor outside the training range still counts as familiar


def image_score(likelihood: np.ndarray, classes: np.ndarray, levels: Dict[int, float]) -> float:
    """The familiarity score in percent (module docstring): ``likelihood`` is each pixel's ``log p(f|c*)`` and
    ``classes`` its class ``c*``; ``levels`` the per-class pixel levels from the calibration."""
    counts = np.bincount(classes.ravel(), minlength=max(levels) + 1 if levels else 1)
    shares = []
    for c in np.flatnonzero(counts >= MIN_PIXELS):
        level = levels.get(int(c), np.inf)  # a class never given in training: none of its pixels is typical
        shares.append(np.count_nonzero(likelihood[classes == c] > level) / counts[c])
    return 100.0 * float(np.mean(shares)) if shares else float("nan")


def threshold_from(scores) -> float:
    """The warning threshold from the training scores: below the lowest by :data:`MARGIN` times the distance
    from the median to the lowest (at least one point of percent)."""
    scores = np.asarray(scores, dtype=np.float64)
    low, median = float(scores.min()), float(np.median(scores))
    return low - max(1.0, MARGIN * (median - low))


def geometry_of(image) -> dict:
    """Dimension, and for a volume its slice spacing (the largest) and in-plane spacings (the others), in mm.
    A volume of one slice (how Slicer holds a 2D image) counts as a 2D image."""
    spacing = sorted(float(s) for s in image.GetSpacing())
    if image.GetDimension() == 2 or 1 in image.GetSize():
        return {"dimension": 2}
    return {"dimension": 3, "slice_mm": spacing[-1], "inplane_mm": spacing[:2]}


def geometry_reason(geometry: dict, trained: dict) -> Optional[str]:
    """Why an image's geometry is unlike the training cases' (``trained``: the calibration's ranges), or None."""
    if not trained:
        return None
    kinds = {2: "a 2D image", 3: "a volume"}
    if geometry["dimension"] != trained["dimension"]:
        return (f"{kinds[geometry['dimension']]}, the model was trained on "
                f"{'2D images' if trained['dimension'] == 2 else 'volumes'}")
    if geometry["dimension"] == 2:
        return None
    for what, values, (lo, hi) in (("slice spacing", [geometry["slice_mm"]], trained["slice_mm"]),
                                   ("in-plane spacing", geometry["inplane_mm"], trained["inplane_mm"])):
        if any(v < lo / SPACING_FACTOR or v > hi * SPACING_FACTOR for v in values):
            shown = " x ".join(f"{v:.3g}" for v in values)
            return f"{what} {shown} mm, the model was trained on {lo:.3g}-{hi:.3g} mm"
    return None


def combined_score(score: float, reasons: int) -> float:
    """The score for ranking images: each cheap signal that fired takes 100 points off, so that such an image
    ranks below every image without one."""
    return (score if np.isfinite(score) else 0.0) - 100.0 * reasons


@dataclass
class Assessment:
    """What ``dssm segment`` and the Slicer panel say about one image beside its mask."""

    score: Optional[float] = None  # familiarity, percent (None: the model has no feature density)
    threshold: Optional[float] = None  # None: the model is not calibrated
    reasons: List[str] = field(default_factory=list)  # the cheap signals that fired
    empty: List[str] = field(default_factory=list)  # structures the model always found, empty here
    warnings: List[str] = field(default_factory=list)

    @property
    def familiar(self) -> Optional[bool]:
        """False when the image is flagged; None when the model has no calibration to judge it by."""
        if self.threshold is None:
            return None
        low = self.score is not None and (not np.isfinite(self.score) or self.score < self.threshold)
        return not (low or self.reasons or self.empty)

    def record(self) -> dict:
        """For ``--timings`` and the Slicer worker's findings file."""
        score = None if self.score is None or not np.isfinite(self.score) else round(self.score, 3)
        return {"familiarity": score, "familiarity_threshold": self.threshold, "familiar": self.familiar,
                "unfamiliar_because": self.reasons, "empty_structures": self.empty, "warnings": self.warnings}


def calibration_of(bundle) -> dict:
    """The bundle's recorded calibration (``model.json`` ``familiarity``), {} without one."""
    block = bundle.meta.get("familiarity")
    return block if isinstance(block, dict) else {}


def assess(bundle, result, name: str) -> Assessment:
    """Judge one segmentation (:class:`~DSSMSegmentLib.inference.SegmentationResult`) by the bundle's calibration.
    The warnings are at most two lines, each naming ``name`` and the model: one when the image looks unlike the
    training images (a low score or a cheap signal), one for structures that came out empty."""
    import SimpleITK as sitk

    calibration = calibration_of(bundle)
    assessment = Assessment()
    if not calibration:
        return assessment
    assessment.threshold = float(calibration["threshold"])
    if result.typicality is not None:
        levels = {int(c): float(v) for c, v in calibration["levels"].items()}
        assessment.score = image_score(*result.typicality, levels)
    reason = geometry_reason(geometry_of(result.labels), calibration.get("geometry", {}))
    if reason:
        assessment.reasons.append(reason)
    labels = sitk.GetArrayViewFromImage(result.labels)
    present = set(np.unique(labels).tolist())
    always = calibration.get("always_found", [])
    assessment.empty = [lab.name for lab in bundle.labels if lab.name in always and lab.value not in present]
    low = assessment.score is not None and not assessment.score >= assessment.threshold
    if low or assessment.reasons:
        why = ([f"familiarity {assessment.score:.1f}, below {assessment.threshold:.1f}"] if low else []) + \
            assessment.reasons
        assessment.warnings.append(
            f"{name} does not look like the images {bundle.name} was trained on ({'; '.join(why)}): check the mask "
            f"with care, or choose a model made for this kind of image ({bundle.modality})")
    if assessment.empty:
        n = calibration.get("n_cases")
        assessment.warnings.append(
            f"{name}: {', '.join(assessment.empty)} came out empty, though {bundle.name} found "
            f"{'it' if len(assessment.empty) == 1 else 'them'} in every one of its {n} training cases")
    return assessment


# ------------------------------------------------------------------------------------------------------
# Calibration on the training cases


def calibrate(bundle_name: str, data: Optional[str] = None, device: str = "auto", batch_size: int = 16,
              limit: int = 0, progress: bool = True) -> dict:
    """Run a model on its training cases and compute its familiarity calibration (not yet recorded)."""
    import SimpleITK as sitk
    from tqdm import tqdm

    from .bundle import resolve_model
    from .datasets import find_cases
    from .evaluate import select_cases
    from .imageio import read_image
    from .inference import Segmenter

    bundle = resolve_model(bundle_name)
    if bundle.architecture.kind != "dssm":
        raise DSSMError(f"model '{bundle.name}' is a {bundle.architecture.kind}: it has no Bayesian head, so no "
                        "feature density to calibrate")
    data = data or bundle.meta.get("training", {}).get("data")
    if not data:
        raise DSSMError(f"model '{bundle.name}' records no training data; name the dataset with --data")
    cases = select_cases(find_cases(data), bundle, "train")
    if limit:
        cases = cases[:limit]
    segmenter = Segmenter(bundle, device=device, batch_size=batch_size)
    num_classes = bundle.architecture.num_classes
    rng = np.random.default_rng(0)
    pixels: Dict[int, list] = {c: [] for c in range(num_classes)}
    typicality, found, geometries = [], [], []
    for case in tqdm(cases, desc=f"calibrate {bundle.name}", unit="case", disable=not progress):
        image = read_image(case.image)
        result = segmenter.run(image, name=str(case.image))
        likelihood, classes = result.typicality
        for c in range(num_classes):  # up to 20000 pixels of each class from each case: every case counts
            values = likelihood[classes == c]
            pixels[c].append(values if values.size <= 20_000 else rng.choice(values, 20_000, replace=False))
        typicality.append(result.typicality)
        found.append(set(np.unique(sitk.GetArrayViewFromImage(result.labels)).tolist()))
        geometries.append(geometry_of(image))
    levels = {c: float(np.percentile(np.concatenate(v), PIXEL_PERCENTILE)) for c, v in pixels.items()
              if sum(a.size for a in v)}
    scores = [image_score(lik, cls, levels) for lik, cls in typicality]
    return {
        "score": f"mean over the classes given to >= {MIN_PIXELS} pixels of the percent of those pixels whose "
                 f"log p(f|c) is above the class's level (percentile {PIXEL_PERCENTILE:g} over the training "
                 "pixels given that class)",
        "levels": {str(c): round(v, 5) for c, v in levels.items()},
        "threshold": round(threshold_from(scores), 3),
        "training_scores": {"min": round(min(scores), 3), "median": round(float(np.median(scores)), 3),
                            "n": len(scores)},
        "geometry": _geometry_range(geometries),
        "always_found": [lab.name for lab in bundle.labels if all(lab.value in f for f in found)],
        "n_cases": len(cases),
        "steps": bundle.default_steps,
        "command": f"dssm calibrate --model {bundle.name}" + (f" --limit {limit}" if limit else ""),
    }


def _geometry_range(geometries: List[dict]) -> dict:
    dimensions = {g["dimension"] for g in geometries}
    if len(dimensions) != 1:
        return {}  # mixed training data: no geometry signal
    if dimensions == {2}:
        return {"dimension": 2}
    slices = [g["slice_mm"] for g in geometries]
    inplane = [v for g in geometries for v in g["inplane_mm"]]
    return {"dimension": 3, "slice_mm": [round(min(slices), 4), round(max(slices), 4)],
            "inplane_mm": [round(min(inplane), 4), round(max(inplane), 4)]}


def record_calibration(bundle_name: str, calibration: dict) -> None:
    """Store the calibration in the bundle's ``model.json`` (the weights are untouched)."""
    from .bundle import META_FILE, resolve_model

    bundle = resolve_model(bundle_name)
    meta_path = bundle.path / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["familiarity"] = calibration
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------------
# Measuring: own validation images against every other model's data


def auroc(familiar_scores, other_scores) -> float:
    """P(a score of the model's own data > a score of other data), ties counting half (-inf for a refused image)."""
    own = np.asarray(familiar_scores, dtype=np.float64)
    other = np.asarray(other_scores, dtype=np.float64)
    if not own.size or not other.size:
        return float("nan")
    greater = (own[:, None] > other[None, :]).sum()
    ties = (own[:, None] == other[None, :]).sum()
    return float((greater + 0.5 * ties) / (own.size * other.size))


def test_sets(bundles) -> Dict[str, tuple]:
    """Each model's own data, as ``dataset -> (cases, split)``: its validation cases, or all its cases when it
    trained on all of them (no validation split)."""
    from .datasets import find_cases
    from .evaluate import select_cases

    sets = {}
    for bundle in bundles:
        training = bundle.meta.get("training", {})
        split = "val" if training.get("split", {}).get("val") else "all"
        sets[training["data"]] = (select_cases(find_cases(training["data"]), bundle, split), split)
    return sets


def score_cases(bundle, cases, device: str = "auto", batch_size: int = 16, progress: bool = True) -> dict:
    """Run a model on cases and judge each as ``dssm segment`` does: ``case -> {"score", "signals"}``, the
    signals being those that flag it (``score``: below the threshold, ``geometry``, ``empty``), or
    ``{"refused": "channels"}`` for an image the model does not take at all (other channels)."""
    from tqdm import tqdm

    from .imageio import read_image
    from .inference import Segmenter

    segmenter = Segmenter(bundle, device=device, batch_size=batch_size)
    records = {}
    for case in tqdm(cases, desc=f"familiarity {bundle.name}", unit="case", disable=not progress, leave=False):
        try:
            result = segmenter.run(read_image(case.image), name=case.case_id)
        except DSSMError as exc:
            if "channel" not in str(exc):
                raise
            records[case.case_id] = {"refused": "channels"}
            continue
        judged = assess(bundle, result, case.case_id)
        low = not judged.score >= judged.threshold
        records[case.case_id] = {"score": round(judged.score, 3) if np.isfinite(judged.score) else None,
                                 "signals": ["score"] * low + ["geometry"] * bool(judged.reasons)
                                 + ["empty"] * bool(judged.empty)}
    return records


def _ranking(record: dict) -> float:
    """The combined score of a judged case (-inf when refused)."""
    if "refused" in record:
        return float("-inf")
    return combined_score(record["score"] if record["score"] is not None else float("nan"),
                          len([s for s in record["signals"] if s != "score"]))


def summarize(scores: Dict[str, Dict[str, dict]], own_data: Dict[str, tuple]) -> dict:
    """Per model (``own_data``: model -> (its dataset, that dataset's split)), its own images flagged, and per
    other dataset the AUROCs, the images flagged, flagged by the score alone, and refused."""
    table = {}
    for model, by_data in scores.items():
        own, split = own_data[model]
        mine = list(by_data[own].values())
        row = {"own": own, "own_split": split, "own_flagged": sum(bool(r["signals"]) for r in mine),
               "own_n": len(mine), "others": {}}
        for data, records in by_data.items():
            if data == own:
                continue
            theirs = list(records.values())
            taken = [r for r in theirs if "refused" not in r]
            score = lambda r: r["score"] if r["score"] is not None else float("-inf")  # noqa: E731
            row["others"][data] = {
                "auroc": auroc([_ranking(r) for r in mine], [_ranking(r) for r in theirs]),
                "auroc_score_alone": auroc([score(r) for r in mine], [score(r) for r in taken]) if taken else None,
                "flagged": sum("refused" in r or bool(r["signals"]) for r in theirs),
                "flagged_by_score": sum("score" in r["signals"] for r in taken),
                "refused": len(theirs) - len(taken), "n": len(theirs)}
        table[model] = row
    return table


def familiarity_table(models: List[str], device: str = "auto", batch_size: int = 16, limit: int = 0,
                      progress: bool = True) -> dict:
    """Every model against every model's data; ``{"scores": ..., "table": ...}``."""
    from .bundle import resolve_model

    bundles = [resolve_model(m) for m in models]
    for bundle in bundles:
        if bundle.architecture.kind != "dssm" or not calibration_of(bundle):
            raise DSSMError(f"model '{bundle.name}' has no familiarity calibration; run dssm calibrate --model "
                            f"{bundle.name} --update-bundle first")
    sets = test_sets(bundles)
    scores = {bundle.name: {data: score_cases(bundle, cases[:limit] if limit else cases, device, batch_size, progress)
                            for data, (cases, _) in sets.items()} for bundle in bundles}
    own = {b.name: (b.meta["training"]["data"], sets[b.meta["training"]["data"]][1]) for b in bundles}
    return {"scores": scores, "table": summarize(scores, own)}


def markdown(table: dict) -> str:
    """The table of :func:`familiarity_table`: per model, its own images flagged, and per other dataset the AUROC
    (score with the cheap signals; the score alone in brackets) and how many images are flagged (by the score
    alone in brackets) or refused."""
    datasets = list(dict.fromkeys(row["own"] for row in table.values()))
    lines = ["| model | own images flagged | " + " | ".join(datasets) + " |",
             "|---|---|" + "---|" * len(datasets)]
    for name, row in table.items():
        cells = []
        for data in datasets:
            if data == row["own"]:
                cells.append("(own data)")
                continue
            o = row["others"][data]
            if o["refused"] == o["n"]:
                cells.append(f"{o['auroc']:.3f}; all {o['n']} refused")
                continue
            cells.append(f"{o['auroc']:.3f} ({o['auroc_score_alone']:.3f}); {o['flagged']} of {o['n']} flagged "
                         f"({o['flagged_by_score']} by the score)")
        own = f"{row['own_flagged']} of {row['own_n']}" + (" (training cases)" if row["own_split"] == "all" else "")
        lines.append(f"| {name} | {own} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def familiarity_command(args) -> int:
    from .bundle import BUNDLED_MODELS_DIR, available_models
    from .imageio import atomic_output

    models = (args.models.split(",") if args.models else
              [b.name for b in available_models() if b.path.parent == BUNDLED_MODELS_DIR])
    measured = familiarity_table(models, args.device, args.batch_size, args.limit)
    text = markdown(measured["table"])
    print(text)
    if args.output:
        command = "dssm familiarity" + (f" --models {args.models}" if args.models else "") + (
            f" --limit {args.limit}" if args.limit else "")
        with atomic_output(Path(args.output)) as tmp:
            tmp.write_text(document(command, text, measured))
    return 0


def document(command: str, markdown_table: str, measured: dict) -> str:
    """The JSON file of ``dssm familiarity -o``: the command, the table (as Markdown and as numbers), and the
    per-case scores, compact: per model and dataset one line, with the number of refused images and, for each
    other image, ``[score, signal, ...]``."""
    head = _finite_or_none({"command": command, "markdown": markdown_table, "table": measured["table"]})
    lines = json.dumps(head, indent=1)[:-2] + ',\n "scores": {'
    rows = [f'\n  {json.dumps(f"{model} on {data}")}: ' + json.dumps(_finite_or_none(
                {"refused": sum("refused" in r for r in records.values()),
                 "cases": {case: [r["score"], *r["signals"]] for case, r in records.items() if "refused" not in r}}))
            for model, by_data in measured["scores"].items() for data, records in by_data.items()]
    return lines + ",".join(rows) + "\n }\n}\n"


def _finite_or_none(value):
    """``value`` with every NaN or infinite float replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
