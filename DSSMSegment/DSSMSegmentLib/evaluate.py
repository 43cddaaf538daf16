"""``dssm evaluate``: segment a dataset's cases exactly as ``dssm segment`` does and score them.

Cases come from a dataset spec (as for ``dssm train``) and, by default, only those in the model's own
validation split (``training.split.val`` in ``model.json``), so a model is never scored on what it trained
on. Each case is read from its original file at native resolution, segmented by :class:`Segmenter`, and
compared with its ground truth by :mod:`DSSMSegmentLib.metrics` (MedPy; HD95 in mm using the spacing, or in
pixels for picture files, which have no pixel size).
Writes ``metrics.csv`` (one row per case and structure) and ``metrics.json`` (per case and summary, also
per source dataset), and prints Markdown tables.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from . import uncertainty as unc
from .bundle import META_FILE, evaluation_key, evaluation_options, resolve_model
from .datasets import Case, case_key, find_cases, read_label_array
from .errors import DSSMError
from .files import check_writable, refuse_unsafe_outputs
from .imageio import IMAGE_SUFFIXES_2D, read_image, write_image_atomically
from .inference import Segmenter
from .metrics import StructureMetrics, as_dict, case_metrics, hd95_key, markdown_table, mean_dice, summarize


def structures_of(bundle) -> Dict[str, List[int]]:
    """Each label on its own, plus the unions the model card names (e.g. prostate whole gland)."""
    structures = {lab.name: [lab.value] for lab in bundle.labels}
    structures.update({k: list(v) for k, v in bundle.meta.get("structures", {}).items()})
    return structures


def select_cases(cases: List[Case], bundle, split: str) -> List[Case]:
    if split == "all":
        return cases
    keys = set(bundle.meta.get("training", {}).get("split", {}).get(split, []))
    if not keys:
        raise DSSMError(f"model '{bundle.name}' records no '{split}' split in {META_FILE}: it was trained on every "
                        "case it has; --split all scores those training cases, which says little about new images "
                        "(its cross-validated Dice, if any, is in 'dssm models')")
    chosen = [c for c in cases if case_key(c) in keys]
    if not chosen:
        raise DSSMError(f"none of the model's '{split}' cases are in this dataset"
                        + ("; --split all scores every case of it (the note after the table says how many the model "
                           "trained on)" if split != "all" else ""))
    return chosen


def hd95_unit(cases: List[Case]) -> str:
    """The unit of the cases' HD95: ``"px"`` when every image is a picture file (PNG, JPG, BMP, TIFF), which has no
    physical pixel size (at most a print resolution, which SimpleITK reads as a spacing), as ``dssm segment``
    counts a picture's uncertain area in pixels; ``"mm"`` otherwise. A mix is refused: its HD95 could not be
    averaged."""
    pictures = [c for c in cases if Path(c.image).name.lower().endswith(IMAGE_SUFFIXES_2D)]
    if not pictures:
        return "mm"
    if len(pictures) == len(cases):
        return "px"
    other = next(c for c in cases if c not in pictures)
    raise DSSMError(f"the cases mix picture files (e.g. {pictures[0].image}: no pixel size, HD95 in pixels) with "
                    f"images that have one (e.g. {other.image}: HD95 in mm); evaluate them apart")


def _mask_path(out: Path, case: Case, is_2d: bool) -> Path:
    """Where ``-o OUT`` gets a case's mask: ``OUT/masks/CASE.png`` for a 2D image, ``.nii.gz`` for a volume."""
    return out / "masks" / (case.case_id + (".png" if is_2d else ".nii.gz"))


def check_output(out: Path, cases: List[Case], data: str, overwrite: bool) -> None:
    """Before any work, by ``dssm segment``'s rules: ``-o`` is a folder that can be written (created if missing), no
    mask may replace a case's image or label, and an earlier evaluation's files in it (``metrics.csv``,
    ``metrics.json``, anything in ``masks/``) are replaced only with ``overwrite``; with it, earlier masks this
    evaluation does not write again get a note."""
    if out.exists() and not out.is_dir():
        raise DSSMError(f"-o {out} is a file; -o names the folder for metrics.csv, metrics.json and the masks")
    targets = {_mask_path(out, case, is_2d): case.image for case in cases for is_2d in (True, False)}
    refuse_unsafe_outputs(targets, {Path(p).resolve() for c in cases for p in (c.image, c.label)}, True)
    earlier = sorted(p for p in (out / "masks").iterdir() if p.is_file()) if (out / "masks").is_dir() else []
    stale = [p for p in earlier if p not in targets]
    refuse_unsafe_outputs({out / "metrics.csv": data, out / "metrics.json": data, **targets,
                            **{p: data for p in stale}}, set(), overwrite)
    if stale:
        print(f"dssm: note: {len(stale)} file(s) in {out / 'masks'} (e.g. {stale[0].name}) are from an earlier "
              "evaluation of other cases and will not be written again; delete them to keep only this one's",
              file=sys.stderr)
    check_writable(out)


def evaluate(bundle_name: str, data: str, split: str = "val", steps=None, device: str = "auto",
             batch_size: int = 16, output: Path = None, limit: int = 0, progress: bool = True,
             tta: bool = False, postprocess: bool = True, seed: int = 0, samples: int = 1,
             uncertainty: bool = False, uncertainty_chains: int = unc.UNCERTAINTY_SAMPLES,
             overwrite: bool = False) -> dict:
    """Segment and score the cases; with ``uncertainty``, also measure how well each uncertainty measure
    (:data:`uncertainty.MEASURES`) finds the wrong voxels (:class:`uncertainty.ErrorDetection`). With ``output``,
    an earlier evaluation's files there are replaced only with ``overwrite`` (:func:`check_output`)."""
    from tqdm import tqdm

    bundle = resolve_model(bundle_name)
    cases = select_cases(find_cases(data), bundle, split)
    if limit:
        cases = cases[:limit]
    training_cases = set(bundle.meta.get("training", {}).get("split", {}).get("train", []))
    trained_on = [c for c in cases if case_key(c) in training_cases]
    unit = hd95_unit(cases)
    if output is not None:
        check_output(Path(output), cases, data, overwrite)
    segmenter = Segmenter(bundle, device=device, batch_size=batch_size, tta=tta, samples=samples,
                          uncertainty_samples=uncertainty_chains)
    k = segmenter.checked_steps(steps)
    samples = segmenter.samples_at(k)  # what ran (K = 0 has no chain; a baseline has none)
    structures = structures_of(bundle)
    per_case: Dict[str, Dict[str, StructureMetrics]] = {}
    by_dataset: Dict[str, Dict[str, Dict[str, StructureMetrics]]] = defaultdict(dict)
    seconds: Dict[str, float] = {}
    options = evaluation_options(tta, postprocess, seed, samples)
    detection = {measure: unc.ErrorDetection() for measure in unc.MEASURES} if uncertainty else {}
    chains = 0
    for case in tqdm(cases, desc=f"evaluate {bundle.name} K={k}{options}", unit="case",
                     disable=not progress or not sys.stderr.isatty()):  # a log gets no progress bar, as for segment
        image = read_image(case.image)
        t0 = time.perf_counter()
        run = segmenter.run(image, steps=k, seed=seed, name=str(case.image), postprocess=postprocess,
                            uncertainty=uncertainty)
        labels = run.labels
        seconds[case.case_id] = time.perf_counter() - t0
        pred = sitk.GetArrayFromImage(labels)
        gt = read_label_array(case).reshape(pred.shape)
        spacing = (1.0,) * pred.ndim if unit == "px" else tuple(reversed(image.GetSpacing()))
        result = case_metrics(pred, gt, structures, spacing)
        per_case[case.case_id] = result
        by_dataset[case.dataset][case.case_id] = result
        if uncertainty:
            chains = run.uncertainty_chains
            mean_dice = float(np.mean([result[lab.name].dice for lab in bundle.labels]))
            for measure, found in detection.items():
                found.add(case.case_id, run.uncertainty_maps[measure].reshape(pred.shape), pred, gt, mean_dice)
        if output is not None:
            write_image_atomically(labels, _mask_path(Path(output), case, image.GetDimension() == 2))
    report = {
        "model": bundle.name, "kind": bundle.architecture.kind, "data": data, "split": split, "steps": k,
        "tta": bool(tta), "postprocess": bool(postprocess), "seed": int(seed), "samples": samples,
        "device": str(segmenter.device), "n_cases": len(per_case), "hd95_unit": unit,
        "n_trained_on": len(trained_on) if training_cases else None,  # None: the bundle records no split
        "seconds_per_case": {"mean": float(np.mean(list(seconds.values()))),
                             "median": float(np.median(list(seconds.values())))},
        "summary": summarize(per_case, unit),
        "by_dataset": ({name: summarize(cases_, unit) for name, cases_ in by_dataset.items()}
                       if len(by_dataset) > 1 else {}),
        "cases_by_dataset": {name: list(cases_) for name, cases_ in by_dataset.items()} if len(by_dataset) > 1 else {},
        "per_case": {cid: {s: as_dict(m, unit) for s, m in res.items()} for cid, res in per_case.items()},
    }
    if uncertainty:
        passes = len(segmenter.passes())
        # with one chain the first chain's entropy is the entropy, and with one sample in all there is no mutual
        # information to measure
        shown = [m for m in unc.MEASURES if not (m == "entropy_first_chain" and chains == 1)
                 and not (m == "mutual_information" and chains * passes == 1)]
        report["uncertainty"] = {"chains": chains, "passes": passes, "written": unc.MEASURE,
                                 "measures": {m: detection[m].summary() for m in shown}}
    if output is not None:
        _write_outputs(Path(output), report, seconds)
    return report


def _write_outputs(out: Path, report: dict, seconds: Dict[str, float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    hd95 = hd95_key(report["hd95_unit"])
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "structure", "dice", hd95, "iou", "precision", "recall", "seconds"])
        for cid, res in report["per_case"].items():
            for s, m in res.items():
                w.writerow([cid, s, m["dice"], m[hd95], m["iou"], m["precision"], m["recall"],
                            round(seconds[cid], 4)])
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float) + "\n")


def record_in_bundle(bundle_name: str, report: dict) -> None:
    """Store the summary in the bundle's ``model.json`` under ``metrics`` (the weights are untouched)."""
    bundle = resolve_model(bundle_name)
    meta_path = bundle.path / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    metrics = meta.setdefault("metrics", {})
    options = evaluation_options(report.get("tta", False), report.get("postprocess", True), report.get("seed", 0),
                                 report.get("samples", 1))
    metrics.setdefault("evaluations", {})[evaluation_key(report["split"], report["steps"], options)] = {
        "data": report["data"], "n_cases": report["n_cases"], "device": report["device"],
        "seconds_per_case": report["seconds_per_case"], "summary": report["summary"],
        "by_dataset": report["by_dataset"],
        "command": f"dssm evaluate {report['data']} --model {bundle.name} --split {report['split']} "
                   f"--steps {report['steps']}{options}",
    }
    if report["steps"] == bundle.default_steps and report["split"] == "val" and not options:
        _set_headline_metrics(metrics, report["summary"], report.get("hd95_unit", "mm"))
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")


def _set_headline_metrics(metrics: dict, summary: dict, unit: str) -> None:
    """``model.json``'s headline ``metrics.dice`` and HD95 (the default K's validation means), from ``summary``."""
    metrics["dice"] = {s: round(v["dice"]["mean"], 4) for s, v in summary.items()}
    hd95 = hd95_key(unit)
    metrics[hd95] = {s: round(v[hd95]["mean"], 2) for s, v in summary.items()}
    metrics.pop(hd95_key("mm" if unit == "px" else "px"), None)  # an earlier summary's, in the other unit


def record_cross_validation(bundle_name: str, metrics_files: List[Path], method: str, command: str) -> dict:
    """Store in a bundle's ``model.json`` (``metrics.cross_validation``) the Dice of a cross-validation whose folds
    were evaluated with ``dssm evaluate -o`` (one ``metrics.json`` per fold): per structure, the mean and sd over
    all the folds' cases. For a model that trains on every case, so has no validation split of its own."""
    per_case: Dict[str, List[float]] = {}
    cases = 0
    for path in metrics_files:
        fold = json.loads(Path(path).read_text(encoding="utf-8"))
        for result in fold["per_case"].values():
            cases += 1
            for structure, values in result.items():
                per_case.setdefault(structure, []).append(values["dice"])
    if not cases:
        raise DSSMError(f"no fold results to record for {bundle_name}")
    summary = {s: {"dice": {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v)), "n": len(v)}}
               for s, v in per_case.items()}
    bundle = resolve_model(bundle_name)
    meta = json.loads((bundle.path / META_FILE).read_text(encoding="utf-8"))
    meta.setdefault("metrics", {})["cross_validation"] = {"method": method, "n_cases": cases, "summary": summary,
                                                          "command": command}
    (bundle.path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return summary


# A larger K becomes the default only if its mean validation Dice is more than this above that of every smaller K:
# the chain must earn its steps (each costs time), and smaller differences are within the noise of the chain's seed.
STEPS_MARGIN = 0.002


def most_accurate_steps(measured: Dict[int, float], margin: float = STEPS_MARGIN) -> int:
    """The fewest Markov steps K whose mean Dice no larger K beats by more than ``margin``."""
    return min(k for k in measured if all(measured[j] <= measured[k] + margin for j in measured if j > k))


def record_default_steps(bundle_name: str, measured: Dict[int, float], data: str, margin: float = STEPS_MARGIN) -> int:
    """Make :func:`most_accurate_steps` of ``measured`` (mean validation Dice of ``data`` at each K, all recorded in
    ``model.json`` by :func:`record_in_bundle`) the bundle's default K; record the rule (``default_steps_choice``,
    which ``dssm models`` and the Slicer panel show) and the chosen K's Dice as the headline metrics."""
    chosen = most_accurate_steps(measured, margin)
    bundle = resolve_model(bundle_name)
    meta_path = bundle.path / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["default_steps"] = chosen
    grid = ", ".join(str(k) for k in sorted(measured))
    meta["default_steps_choice"] = {
        "steps": chosen, "data": data, "margin": margin,
        "rule": f"the most accurate of K = {grid} on the validation cases (a larger K only where it adds more than "
                f"{margin:g} mean Dice)",
        "mean_dice": {str(k): round(v, 4) for k, v in sorted(measured.items())},
    }
    summary = meta["metrics"]["evaluations"][evaluation_key("val", chosen)]["summary"]
    _set_headline_metrics(meta["metrics"], summary, "px" if "hd95_px" in next(iter(summary.values())) else "mm")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return chosen


def evaluate_command(args, measured: Dict[int, float] = None) -> int:
    """``dssm evaluate``; ``measured``: a dict that gets this evaluation's mean Dice under its K."""
    if getattr(args, "choose_steps", None):
        return _choose_steps_command(args)
    report = evaluate(args.model, args.data, args.split, args.steps, args.device, args.batch_size,
                      Path(args.output) if args.output else None, args.limit, tta=args.tta,
                      postprocess=not args.no_postprocess, seed=args.seed, samples=args.samples,
                      uncertainty=args.uncertainty, uncertainty_chains=args.uncertainty_chains,
                      overwrite=args.overwrite)
    print(f"\n{report['model']} ({report['kind']}), K={report['steps']}{' with TTA' if report['tta'] else ''}"
          f"{', %d Markov samples' % report['samples'] if report['samples'] > 1 else ''}, "
          f"{report['n_cases']} {report['split']} "
          f"cases of {report['data']}, {report['seconds_per_case']['mean']:.2f} s/case on {report['device']}\n")
    print(markdown_table(report["summary"]))
    if report["split"] != "val" and report.get("n_trained_on") != 0:
        trained = "" if report.get("n_trained_on") is None else f" ({report['n_trained_on']} of {report['n_cases']})"
        print(f"\nnote: {report['split']} cases include cases {report['model']} was trained on{trained}; their Dice says "
              "little about new images")
    elif report["split"] != "val":
        print(f"\nnote: none of the {report['n_cases']} case(s) is in {report['model']}'s training split")
    for name, summary in report["by_dataset"].items():
        print(f"\n{name}:\n")
        print(markdown_table(summary))
    if "uncertainty" in report:
        print("\n" + uncertainty_table(report))
    if measured is not None:
        measured[report["steps"]] = mean_dice(report["summary"])
    if args.update_bundle:
        record_in_bundle(args.model, report)
        print(f"\nrecorded in {resolve_model(args.model).path / META_FILE}")
    return 0


def uncertainty_table(report: dict) -> str:
    """Markdown: for each uncertainty measure, the voxel AUROC for finding wrong voxels and the per-case Spearman
    correlation with 1 - Dice (``dssm evaluate --uncertainty``)."""
    info = report["uncertainty"]
    rows = [f"Uncertainty of {report['model']} ({info['chains']} chain(s) x {info['passes']} pass(es) per slice, "
            f"{report['n_cases']} cases):", "",
            "| measure | voxel AUROC (wrong voxels) | AUROC near the structures | Spearman (case uncertainty vs "
            "1 - Dice) | wrong voxels |", "|---|---|---|---|---|"]
    for measure, m in info["measures"].items():
        mark = " (written)" if measure == info["written"] else ""
        rows.append(f"| {measure.replace('_', ' ')}{mark} | {m['auroc']:.3f} | {m['auroc_near']:.3f} | "
                    f"{m['spearman']:.3f} | {m['wrong_voxels']} of {m['voxels']} |")
    return "\n".join(rows)


def _choose_steps_command(args) -> int:
    """``dssm evaluate DATA --model M --choose-steps 0,1,4``: evaluate the validation cases at each K, record each in
    the bundle, and make the most accurate the default (:func:`record_default_steps`)."""
    import copy

    from .sampler import chain_length

    bundle = resolve_model(args.model)
    if bundle.architecture.kind != "dssm":
        raise DSSMError(f"--choose-steps: {bundle.name} is a discriminative baseline, which has no Markov chain")
    others = [option for option, given in (("--steps", args.steps is not None), ("--tta", args.tta),
                                            ("--samples", args.samples > 1), ("--limit", args.limit > 0),
                                            ("--seed", args.seed != 0), ("--no-postprocess", args.no_postprocess),
                                            ("--split", args.split != "val"), ("--uncertainty", args.uncertainty))
              if given]
    if others:
        raise DSSMError(f"--choose-steps chooses the default from plain evaluations of all the validation cases; "
                        f"leave out {', '.join(others)}")
    most = chain_length(bundle.architecture.timesteps, bundle.architecture.markov_start)
    if max(args.choose_steps) > most:
        raise DSSMError(f"--choose-steps {max(args.choose_steps)}: the Markov chain of {bundle.name} has at most "
                        f"{most} steps")
    measured = {}
    for k in args.choose_steps:
        one = copy.copy(args)
        one.choose_steps, one.steps, one.update_bundle = None, k, True
        if args.output:
            one.output = str(Path(args.output) / f"K{k}")
        evaluate_command(one, measured)
    chosen = record_default_steps(args.model, measured, args.data)
    bundle = resolve_model(args.model)
    print(f"\ndefault K of {bundle.name}: {chosen} ({bundle.default_steps_reason()})")
    calibrated = bundle.meta.get("familiarity", {}).get("steps")
    if calibrated is not None and calibrated != chosen:
        print(f"note: its familiarity levels were calibrated at K = {calibrated}; run dssm calibrate --model "
              f"{bundle.name} --update-bundle again")
    return 0
