"""Model bundles: a folder with ``model.safetensors`` (fp16 weights) and ``model.json`` (the plan).

``model.json`` holds the architecture, the labels (value, name, colour, SNOMED CT terminology), the
preprocessing, the default number of Markov steps, the training data and split, the measured metrics and
the weights' sha256, which is checked on every load. Weights are never unpickled: safetensors only.
Reading ``model.json`` needs no PyTorch (the Slicer panel lists models before PyTorch is installed).

Bundled models live in ``DSSMSegment/Resources/Models/<name>/`` so that they install with the Slicer
module; local ones in ``~/.dssm/models/<name>/`` or any folder listed in ``DSSM_MODELS_PATH``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

from .errors import DSSMError
from .plan import ArchitectureConfig, Preprocessing

if TYPE_CHECKING:  # PyTorch is imported only to load or save weights, so listing models works without it
    import torch

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
# The discriminative baselines ship in the source repository (for reproducing the comparison), not with
# the Slicer extension.
BASELINE_MODELS_DIR = Path(__file__).resolve().parents[2] / "Baselines"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_VERSION = 1


def model_search_paths() -> List[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get("DSSM_MODELS_PATH", "").split(os.pathsep) if p]
    return [BUNDLED_MODELS_DIR, *extra, Path("~/.dssm/models").expanduser(), BASELINE_MODELS_DIR]


def evaluation_options(tta: bool = False, postprocess: bool = True, seed: int = 0, samples: int = 1) -> str:
    """The ``dssm evaluate`` options of an evaluation other than the plain one, e.g. ``" --tta --samples 4"``."""
    return ((" --tta" if tta else "") + (f" --samples {samples}" if samples > 1 else "")
            + ("" if postprocess else " --no-postprocess") + (f" --seed {seed}" if seed else ""))


def evaluation_key(split: str, steps: int, options: str = "") -> str:
    """Where ``model.json`` keeps an evaluation under ``metrics.evaluations``, e.g. ``val@K=4+tta``."""
    return f"{split}@K={steps}" + options.replace(" --", "+").replace(" ", "=")


@dataclass
class LabelInfo:
    value: int
    name: str
    color: list  # [r, g, b], 0-255
    terminology: dict  # {"category": [scheme, code, meaning], "type": [scheme, code, meaning]}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelInfo":
        return cls(int(d["value"]), str(d["name"]), list(d["color"]), dict(d.get("terminology", {})))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelBundle:
    """A model bundle on disk. Reading it checks ``model.json``; :meth:`load_network` checks the weights."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise DSSMError(f"{self.path} is not a DSSM model bundle: {META_FILE} is missing")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(self.meta, dict):
                raise TypeError(f"expected a JSON object, found {type(self.meta).__name__}")
            self.name = str(self.meta.get("name", self.path.name))
            self.architecture = ArchitectureConfig.from_dict(self.meta["architecture"])
            self.preprocessing = Preprocessing.from_dict(self.meta["preprocessing"])
            self.labels = [LabelInfo.from_dict(d) for d in self.meta["labels"]]
            self.default_steps = int(self.meta.get("default_steps", 4))
            self.postprocessing = dict(self.meta.get("postprocessing", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DSSMError(f"{meta_path} is corrupt or incomplete ({type(exc).__name__}: {exc}); "
                            "reinstall or retrain the model") from None
        if len(self.labels) != self.architecture.num_classes - 1:
            raise DSSMError(f"{meta_path} lists {len(self.labels)} labels but the network has "
                            f"{self.architecture.num_classes - 1} foreground classes")

    @property
    def modality(self) -> str:
        return self.preprocessing.modality

    @property
    def test_time_flips(self) -> List[tuple]:
        """The flips (tensor dims of a slice batch) that test-time augmentation averages over: the identity,
        and each flip the model was trained with (its recorded ``training.augment``), so never a flip the
        anatomy does not allow (chest X-rays are flipped left-right only, prostate MRI never up-down)."""
        augment = self.meta.get("training", {}).get("augment", {}) or {}
        flips = [()]
        if augment.get("flip_x"):
            flips.append((-1,))
        if augment.get("flip_y"):
            flips.append((-2,))
        if augment.get("flip_x") and augment.get("flip_y"):
            flips.append((-2, -1))
        return flips

    @property
    def test_time_zooms(self) -> List[float]:
        """The in-plane zooms that test-time augmentation runs at: the model's own scale (1), and 1.2 (or the
        largest scale the model was trained with, if smaller; none below 1.1). Zoom 1.2 means 1.25 mm pixels for
        a 1.5 mm model: small structures (end-systolic ventricles) get more pixels."""
        augment = self.meta.get("training", {}).get("augment", {}) or {}
        largest = float((augment.get("scale") or [1.0, 1.0])[1])
        return [1.0] + ([round(min(1.2, largest), 3)] if largest >= 1.1 else [])

    @property
    def test_time_passes(self) -> List[tuple]:
        """``(zoom, flip dims)`` of each test-time pass: every test-time flip at every test-time zoom, grouped by
        zoom (the Segmenter resamples once per zoom)."""
        return [(zoom, dims) for zoom in self.test_time_zooms for dims in self.test_time_flips]

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    def validation_dice(self, tta: bool = False, samples: int = 1) -> dict:
        """Mean validation Dice per structure at the default K as ``dssm evaluate --update-bundle`` recorded it
        (empty if it was not); ``tta``: the evaluation with test-time augmentation; ``samples``: with that many
        Markov samples per slice. Read from the full-precision evaluation (``metrics.evaluations``), so that a
        value rounded for display agrees with the README's tables; ``metrics.dice`` (4 decimals) otherwise."""
        metrics = self.metrics if isinstance(self.metrics, dict) else {}
        key = evaluation_key("val", self.default_steps, evaluation_options(tta=tta, samples=samples))
        entry = metrics.get("evaluations", {}).get(key)
        if entry:
            return {name: stats["dice"]["mean"] for name, stats in entry["summary"].items()}
        return dict(metrics.get("dice", {})) if not tta and samples == 1 else {}

    def steps_dice(self, data: Optional[str] = None) -> Dict[int, float]:
        """Mean validation Dice (over the structures) at each Markov step count K that ``dssm evaluate
        --update-bundle`` recorded without other options (of ``data`` only, when given), e.g. ``{0: 0.901, 4: 0.900}``."""
        from .metrics import mean_dice

        metrics = self.metrics if isinstance(self.metrics, dict) else {}
        measured = {}
        for key, entry in (metrics.get("evaluations") or {}).items():
            match = re.fullmatch(r"val@K=(\d+)", key)
            if match and entry.get("summary") and (data is None or entry.get("data") == data):
                measured[int(match.group(1))] = mean_dice(entry["summary"])
        return dict(sorted(measured.items()))

    def default_steps_reason(self) -> str:
        """Why the model runs at its default K, in words, with the validation Dice of each K measured."""
        if self.architecture.kind != "dssm":
            return "a discriminative baseline has no Markov chain"

        evaluations = (self.metrics.get("evaluations") or {}) if isinstance(self.metrics, dict) else {}
        datasets = next((list(e["by_dataset"]) for e in evaluations.values() if len(e.get("by_dataset") or {}) > 1), [])
        pooled = f" ({' and '.join(datasets)} pooled)" if datasets else ""

        def listing(measured: dict) -> str:
            return f"mean validation Dice{pooled} " + ", ".join(f"K = {k} {v:.3f}" for k, v in sorted(measured.items()))

        choice = self.meta.get("default_steps_choice")
        if isinstance(choice, dict) and choice.get("steps") == self.default_steps and choice.get("mean_dice"):
            return f"{choice['rule']}; {listing({int(k): v for k, v in choice['mean_dice'].items()})}"
        measured = self.steps_dice()
        split = self.meta.get("training", {}).get("split", {})
        if not measured and split.get("train") and not split.get("val"):
            return "set at training; the model trained on all its cases, so no validation split measures K"
        if self.default_steps not in measured:
            return "set at training; not measured at this K on the validation cases" + (
                f" ({listing(measured)})" if measured else "")
        if len(measured) < 2:
            return "set at training; no validation Dice recorded at another K"
        best = max(measured, key=measured.get)
        if measured[self.default_steps] == measured[best]:
            return f"the most accurate K measured; {listing(measured)}"
        return f"set at training, not chosen on validation cases (K = {best} scored higher); {listing(measured)}"

    # the other settings whose validation Dice is shown beside the default's: command-line option, in words
    OTHER_SETTINGS = (("--samples 4", "4 Markov samples", dict(samples=4)),
                      ("--tta", "test-time augmentation", dict(tta=True)))

    def other_settings_dice(self) -> list:
        """``(option, setting in words, Dice per structure)`` for each of :attr:`OTHER_SETTINGS` that has a
        recorded validation evaluation (``dssm models`` and the Slicer panel list these)."""
        return [(option, words, dice) for option, words, kwargs in self.OTHER_SETTINGS
                if (dice := self.validation_dice(**kwargs))]

    def dice_rows(self) -> List[tuple]:
        """``(what was measured, {structure: mean Dice})`` rows that ``dssm models`` and the Slicer panel show:
        the validation Dice at the default K, per dataset when the model was validated on several; with each of
        :attr:`OTHER_SETTINGS`; and the cross-validation Dice (``metrics.cross_validation``) of a model that
        trained on every case. Without any, one row that says why, with an empty dict."""
        metrics = self.metrics if isinstance(self.metrics, dict) else {}
        entry = metrics.get("evaluations", {}).get(evaluation_key("val", self.default_steps)) or {}
        by_dataset = entry.get("by_dataset") or {}
        rows = []
        if len(by_dataset) > 1:
            for dataset, summary in by_dataset.items():
                n = next(iter(summary.values()))["dice"]["n"]
                rows.append((f"validation Dice on {dataset} ({n} cases)",
                             {name: stats["dice"]["mean"] for name, stats in summary.items()}))
        elif self.validation_dice():
            n = entry.get("n_cases")
            rows.append(("validation Dice" + (f" ({n} cases)" if n else ""), self.validation_dice()))
        pooled = f", {' and '.join(by_dataset)} pooled" if len(by_dataset) > 1 else ""
        rows += [(f"with {words} ({option}{pooled})", dice) for option, words, dice in self.other_settings_dice()]
        cv = metrics.get("cross_validation")
        if cv:
            rows.append((f"{cv['method']} Dice ({cv['n_cases']} cases)",
                         {name: stats["dice"]["mean"] for name, stats in cv["summary"].items()}))
        if not rows:
            split = self.meta.get("training", {}).get("split", {})
            reason = (f"trained on all {len(split['train'])} cases, no validation split" if split.get("train")
                      and not split.get("val") else "not evaluated yet")
            rows.append((f"no validation Dice recorded ({reason})", {}))
        return rows

    def load_network(self, device: "torch.device") -> "torch.nn.Module":
        """Build the network and load its weights after checking the file's sha256."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from .networks import build_model

        weights = self.path / WEIGHTS_FILE
        if not weights.is_file():
            raise DSSMError(f"model '{self.name}': {weights} is missing; reinstall or retrain the model")
        expected = self.meta.get("sha256")
        if not expected:
            raise DSSMError(f"model '{self.name}': {META_FILE} records no sha256 for {weights.name}, so the weights "
                            "cannot be checked; reinstall the model or re-save it with save_bundle")
        if sha256_of(weights) != expected:
            raise DSSMError(f"model '{self.name}': {weights.name} does not match the sha256 in {META_FILE} "
                            "(corrupt or replaced file); reinstall the model")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DSSMError(f"model '{self.name}': {weights.name} is not a valid safetensors file ({exc})") from None
        network = build_model(self.architecture)
        own = network.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
        if missing or unexpected or wrong:
            raise DSSMError(
                f"model '{self.name}': weights do not fit the architecture in {META_FILE} "
                f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shaped tensors, "
                f"e.g. {(missing + unexpected + wrong)[:2]}); the bundle is mismatched")
        network.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        return network.to(device).eval()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.architecture.kind,
            "modality": self.modality,
            "labels": {lab.value: lab.name for lab in self.labels},
            "default_steps": self.default_steps,
            "default_steps_reason": self.default_steps_reason(),
            "metrics": self.metrics,
        }


def save_bundle(network: "torch.nn.Module", folder: Path, meta: dict) -> ModelBundle:
    """Write fp16 weights and ``model.json`` (with the weights' sha256); returns the reloaded bundle."""
    from safetensors.torch import save_file

    from .files import follow_umask

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "dssm", "version": str(FORMAT_VERSION)})
    follow_umask(folder / WEIGHTS_FILE)  # safetensors writes 0600: a shared models folder must stay readable
    meta = dict(meta)
    meta["format_version"] = FORMAT_VERSION
    meta["sha256"] = sha256_of(folder / WEIGHTS_FILE)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return ModelBundle(folder)


def available_models(problems: Optional[List[str]] = None) -> List[ModelBundle]:
    """Every readable bundle in the search paths (bundled first), one per model name. A folder that is left out
    (unreadable, without weights, or its name taken by a bundle earlier in the search path) gets a line in
    ``problems``."""
    found, seen = [], {}
    for root in model_search_paths():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / META_FILE).is_file()):
            try:
                bundle = ModelBundle(folder)
            except DSSMError as exc:
                if problems is not None:
                    problems.append(f"{folder} is left out: {exc}")
                continue
            if not (folder / WEIGHTS_FILE).is_file():
                if problems is not None:
                    problems.append(f"{folder} is left out: its weights, {WEIGHTS_FILE}, are missing; reinstall or "
                                    "retrain the model")
                continue
            if bundle.name in seen:
                if problems is not None:
                    problems.append(f"{folder} is left out: its model name '{bundle.name}' is taken by "
                                    f"{seen[bundle.name]}, which comes first in the search path; rename one in its model.json")
                continue
            seen[bundle.name] = folder
            found.append(bundle)
    return found


def resolve_model(name_or_path: str) -> ModelBundle:
    """A bundle folder (or a file in one: its model.json or weights), or the name of a bundled or local model,
    as ``dssm models`` lists it (or its folder's name)."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name in (META_FILE, WEIGHTS_FILE):
        path = path.parent
    if path.is_dir():
        return ModelBundle(path)
    models = available_models()
    for bundle in models:  # the name 'dssm models' and the Slicer panel list first, then a folder's name
        if bundle.name == name_or_path:
            return bundle
    for root in model_search_paths():
        if (root / name_or_path / META_FILE).is_file():
            return ModelBundle(root / name_or_path)
    names = ", ".join(b.name for b in models) or "none"
    close = difflib.get_close_matches(name_or_path.split()[0].lower() if name_or_path.split() else name_or_path,
                                      [b.name for b in models], n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise DSSMError(f"model '{name_or_path}' not found ({hint}available: {names}); "
                    "pass a model name from 'dssm models' or the path of a bundle folder")


def default_model_name() -> Optional[str]:
    models = available_models()
    return models[0].name if models else None
