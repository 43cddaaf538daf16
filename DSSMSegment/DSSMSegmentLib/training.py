"""``dssm train``: end-to-end training from the compact cache, on one device or under ``torchrun`` (DDP).

The loop is iteration-based with a budget given either in iterations or in minutes of training time; the
learning rate follows warm-up and cosine decay over the *fraction of the budget done*. A run checkpoints at
each validation and every ``checkpoint_minutes`` of training, with its random number generators, so a run
stopped at any moment (``--stop-after`` for a slot on a lent GPU, Ctrl-C, a lost session) resumes from its last
checkpoint exactly as if it had not stopped: with an iteration budget, the same weights to the last bit on the
CPU. Each validation writes a row to ``log.csv`` (with the training speed in samples per second) and redraws
``curves.png``; the end writes a model bundle with EMA weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .augment import AugmentConfig, intensity, spatial
from .bundle import ModelBundle, save_bundle
from .datasets import CachedData, Case, build_cache, cache_datasets, load_cache, spec_datasets, split_cases
from .errors import DSSMError
from .networks import ArchitectureConfig, build_model, load_semantic_state, semantic_state
from .preprocess import Preprocessing, pad_to_multiple
from .recipes import get_recipe


@dataclass
class TrainConfig:
    recipe: str
    out: Path
    kind: str = "dssm"
    data: Optional[str] = None  # overrides the recipe's dataset spec
    augment: Optional[str] = None  # a named augmentation (recipes.AUGMENT_PRESETS) in place of the recipe's own
    cache: Optional[Path] = None
    iterations: int = 0
    minutes: float = 0.0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0  # weights and augmentation
    split_seed: int = 0  # the validation split of a fresh training (a fine-tune keeps its source's split)
    widths: Optional[List[int]] = None
    val_patients: Optional[List[str]] = None  # explicit validation split (e.g. one fold of leave-one-out)
    val_every: float = 0.1  # fraction of the budget between validations
    device: str = "auto"
    default_steps: int = 4
    name: Optional[str] = None
    init: Optional[Path] = None  # warm start from a bundle's weights (fine-tuning)
    init_semantic: Optional[Path] = None  # semantic module + pixel classifier from this bundle (e.g. the baseline)
    likelihood_weight: float = 0.0  # weight of a loss term on the Bayesian head's likelihood alone (DSSM)
    refiner: str = "bayes"  # DSSM's output: "bayes" (end to end) or "residual" (two-stage, on a frozen baseline)
    stage1_dropout: float = 0.0  # two-stage: channel dropout in the frozen first stage for half of each batch
    compile: bool = False  # torch.compile the training step (scripts/experiments/train_speedups.py measures it)
    checkpoint_minutes: float = 5.0  # also checkpoint every this many minutes of training (besides validations)
    stop_after_minutes: float = 0.0  # this call stops (checkpointed, to be resumed) after this many minutes; 0: never
    extra: dict = field(default_factory=dict)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes (batch-pooled)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1.0 - dice[1:].mean())


class TrainStep(nn.Module):
    """Wraps the network so that DDP sees the whole loss computation in ``forward``."""

    def __init__(self, network: nn.Module, likelihood_weight: float = 0.0) -> None:
        super().__init__()
        self.network = network
        self.likelihood_weight = likelihood_weight

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        net = self.network
        if net.cfg.kind == "baseline":
            return dice_ce_loss(net(x), target)
        onehot = F.one_hot(target, net.cfg.num_classes).permute(0, 3, 1, 2).to(x.dtype)
        o = net.training_forward(x, onehot)
        if net.two_stage:  # the first stage is frozen: only the generative half and the heads learn
            return (dice_ce_loss(o.final, target) + 0.5 * dice_ce_loss(o.decoded, target)
                    + dice_ce_loss(o.reconstructed, target) + F.mse_loss(o.z0_pred.float(), o.z0_target.float())
                    + max(self.likelihood_weight, 0.5) * dice_ce_loss(o.likelihood, target))
        loss = (dice_ce_loss(o.final, target) + 0.5 * dice_ce_loss(o.final_no_markov, target)
                + 0.5 * dice_ce_loss(o.first, target) + 0.5 * dice_ce_loss(o.decoded, target)
                + dice_ce_loss(o.reconstructed, target) + F.mse_loss(o.z0_pred.float(), o.z0_target.float()))
        if self.likelihood_weight:
            # the Bayesian head's likelihood on its own: without this term the posterior can lean on its prior
            # alone, and the Gaussian mixtures stay uninformative (scripts/experiments/dssm_parts.py measures it)
            loss = loss + self.likelihood_weight * dice_ce_loss(o.likelihood, target)
        return loss


class EMA:
    """Exponential moving average of the weights (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.is_floating_point() and k in self.shadow and "running" not in k:
                self.shadow[k].lerp_(v.float(), 1 - decay)
            else:
                self.shadow[k].copy_(v)


def lr_factor(fraction: float, warmup: float = 0.03) -> float:
    if fraction < warmup:
        return max(fraction / warmup, 0.01)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (fraction - warmup) / (1 - warmup))))


def pooled_dice(network: nn.Module, data: CachedData, num_classes: int, device: torch.device, steps: int,
                batch: int = 64) -> List[float]:
    """Per-class Dice pooled over all validation slices, at cache resolution."""
    inter = np.zeros(num_classes)
    total = np.zeros(num_classes)
    network.eval()
    multiple = network.cfg.size_multiple
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    gen = torch.Generator(device=device)
    with torch.inference_mode(), autocast:
        for s in range(0, len(data.images), batch):
            gen.manual_seed(s)
            x = torch.from_numpy(data.images[s:s + batch].astype(np.float32)).to(device)
            x, (_, _, h, w) = pad_to_multiple(x, multiple)
            pred = network(x, steps=steps, generator=gen)[..., :h, :w].argmax(1).cpu().numpy()
            y = data.labels[s:s + batch]
            for c in range(1, num_classes):
                inter[c] += np.logical_and(pred == c, y == c).sum()
                total[c] += (pred == c).sum() + (y == c).sum()
    network.train()
    return [float(2 * inter[c] / total[c]) if total[c] > 0 else 1.0 for c in range(1, num_classes)]


def _plot(log_path: Path, png_path: Path, label_names: List[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(log_path)))
    if not rows:
        return
    it = [int(r["iteration"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(it, [float(r["loss"]) for r in rows])
    a.set_xlabel("iteration"), a.set_ylabel("training loss"), a.set_yscale("log")
    for name in label_names:
        b.plot(it, [float(r[f"val_dice_{name}"]) for r in rows], label=name)
    b.set_xlabel("iteration"), b.set_ylabel("validation Dice"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def _watch_for_pauses():
    """A function that says whether the process was continued (SIGCONT, after a SIGSTOP: the training campaign's
    pause) since it was last asked, so that the time a step spent stopped is not counted as training time."""
    import signal
    import threading

    continued = [False]
    if hasattr(signal, "SIGCONT") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCONT, lambda signum, frame: continued.__setitem__(0, True))

    def ask() -> bool:
        was, continued[0] = continued[0], False
        return was

    return ask


def _setup_distributed(device_request: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device_request != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    request = (device_request or "auto").lower()
    if request not in ("auto", "cpu", "gpu") and not request.startswith("cuda"):
        raise DSSMError(f"unknown device '{device_request}' (expected auto, cpu or cuda)")
    if request == "cpu" or not torch.cuda.is_available():
        if request not in ("auto", "cpu"):  # cuda, cuda:N or gpu: never fall back to the CPU silently
            raise DSSMError("--device cuda was requested but no CUDA GPU is available")
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return world, rank, device


def training_split(cfg: TrainConfig, recipe: dict, patients: List[str], groups: dict,
                   source_training: Optional[dict] = None) -> tuple:
    """``({"train": [...], "val": [...]}, split seed)`` of the cached ``patients``.

    ``--val-patients`` names the validation cases. A fine-tune (``--init``; ``source_training`` is the
    ``training`` record of its source bundle) keeps the split its source bundle was trained with, and so does a
    run on another bundle's semantic module (``--init-semantic``: ``source_training`` is that bundle's record),
    so that the source's validation cases are never trained on (a new split would put some of them into training, and
    their Dice would then be inflated). Otherwise the recipe's stratified split by ``--split-seed``,
    independent of ``--seed``, which seeds only the weights and the augmentation."""
    if cfg.val_patients:
        val = sorted(p for p in patients if p in cfg.val_patients or p.split(":")[-1] in cfg.val_patients)
        return {"train": [p for p in patients if p not in val], "val": val}, None
    if source_training and source_training.get("split"):
        held_out = set(source_training["split"].get("val", []))
        return ({"train": [p for p in patients if p not in held_out],
                 "val": [p for p in patients if p in held_out]}, source_training.get("split_seed"))
    cases = [Case("", p.split(":", 1)[1], groups[p], Path(), Path(), p.split(":", 1)[0]) for p in patients]
    return split_cases(cases, recipe["val_fraction"], seed=cfg.split_seed), cfg.split_seed


def train(cfg: TrainConfig, progress: bool = True) -> Optional[Path]:
    """Train (or resume) a model; returns the bundle folder when the budget is done, else None."""
    if cfg.iterations <= 0 and cfg.minutes <= 0:
        raise DSSMError("give a training budget: --iterations N or --minutes M")
    source = ModelBundle(Path(cfg.init)) if cfg.init is not None else None  # a fine-tune's starting bundle
    # the bundle whose semantic module this run starts from (--init-semantic; a two-stage DSSM's frozen baseline)
    semantic_bundle = ModelBundle(Path(cfg.init_semantic)) if cfg.init_semantic else None
    if cfg.stage1_dropout:  # checked before the cache is built: a two-stage run's option only
        refiner = source.architecture.refiner if source is not None else cfg.refiner
        if cfg.kind != "dssm" or refiner != "residual":
            raise DSSMError("--stage1-dropout is for a two-stage DSSM (--refiner residual) only")
        if not 0.0 <= cfg.stage1_dropout < 1.0:
            raise DSSMError(f"--stage1-dropout must be in [0, 1), not {cfg.stage1_dropout:g}")
    recipe = get_recipe(cfg.recipe)
    if cfg.augment:
        from .recipes import AUGMENT_PRESETS

        if cfg.augment not in AUGMENT_PRESETS:
            raise DSSMError(f"unknown augmentation '{cfg.augment}' (known: {', '.join(AUGMENT_PRESETS)})")
        recipe["augment"] = dict(AUGMENT_PRESETS[cfg.augment])
    world, rank, device = _setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + rank)
    np_rng = np.random.default_rng(cfg.seed + 1000 * rank)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prep = Preprocessing.from_dict(recipe["preprocessing"])
    in_channels = int(recipe.get("in_channels", 1))
    data_spec = cfg.data or recipe["data"]
    cache_path = Path(cfg.cache) if cfg.cache else Path("cache") / f"{cfg.recipe}.npz"
    data = load_cache(cache_path) if cache_path.exists() else None
    if data is not None and cache_datasets(data) != spec_datasets(data_spec):
        # the default cache of a recipe whose data changed (the heart's gained M&Ms-1) is built again; a cache the
        # user named is theirs, and is refused
        held = "+".join(sorted(cache_datasets(data)))
        if cfg.cache:
            raise DSSMError(f"--cache {cache_path} holds {held}, but this run trains on {data_spec}; build it with "
                            f"dssm cache --recipe {cfg.recipe} --out {cache_path}, or name another cache")
        if rank == 0 and progress:
            print(f"{cache_path} holds {held}, not {data_spec}: building it again")
        data = None
    if data is None:
        if rank == 0:
            build_cache(data_spec, prep, in_channels, recipe["tile"], cache_path, recipe.get("encoding", "jpeg"),
                        progress=progress)
        if world > 1:
            dist.barrier()
        data = load_cache(cache_path)
    patients = sorted(set(data.patients.tolist()))
    groups = {p: g for p, g in zip(data.patients.tolist(), data.groups.tolist())}
    source_training = source.meta.get("training", {}) if source is not None else {}
    # a fine-tune keeps its source's split, and a run on another bundle's semantic module keeps that bundle's, so
    # that no case it trained on is validated on
    split_source = source_training or (semantic_bundle.meta.get("training", {}) if semantic_bundle else {})
    split, split_seed = training_split(cfg, recipe, patients, groups, split_source)
    train_data, val_data = data.subset(split["train"]), data.subset(split["val"])
    if len(train_data.images) == 0:
        raise DSSMError("the training split is empty")
    labels = recipe["labels"]
    arch = ArchitectureConfig(kind=cfg.kind, in_channels=in_channels, num_classes=len(labels) + 1,
                              refiner=source.architecture.refiner if source is not None else cfg.refiner)
    two_stage = cfg.kind == "dssm" and arch.refiner == "residual"
    if two_stage and source is None and not cfg.init_semantic:
        raise DSSMError("a two-stage DSSM (--refiner residual) trains on top of a trained discriminative baseline: "
                        "pass --init-semantic BASELINE_BUNDLE (e.g. Baselines/RECIPE-baseline)")
    if cfg.widths:
        arch.widths = tuple(cfg.widths)
    network = build_model(arch).to(device)
    if two_stage:
        network.stage1_dropout = float(cfg.stage1_dropout)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # channels-last on every device: on this CPU a training step is 1.3-1.6x faster than NCHW
    # (results/train-cost/speedups.md); the saved weights are made contiguous (save_bundle)
    network = network.to(memory_format=torch.channels_last)
    if source is not None:
        network.load_state_dict(source.load_network(device).state_dict())
    semantic_source = _load_semantic_source(cfg, semantic_bundle, network, split, device) if semantic_bundle else None
    step_module = TrainStep(network, cfg.likelihood_weight)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device] if device.type == "cuda" else None)
    # --compile: compiled on the first step (a minute or two, again at each resume); if compiling fails (no C++
    # compiler, an unsupported operation), the run goes on uncompiled, with a note
    forward = torch.compile(step_module) if cfg.compile else step_module
    compile_tried = False
    if two_stage:  # stage 2: the first stage (the baseline's semantic module and head) stays as it is
        for module in (network.semantic, network.first_head):
            module.requires_grad_(False)
    trainable = [p for p in network.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(network)
    state = {"iteration": 0, "train_seconds": 0.0, "samples": 0}
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        network.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        ema.shadow = {k: v.to(device) for k, v in ckpt["ema"].items()}
        state = {"iteration": int(ckpt["iteration"]), "train_seconds": float(ckpt["train_seconds"]),
                 "samples": int(ckpt.get("samples", int(ckpt["iteration"]) * cfg.batch_size * world))}
        if "rng" in ckpt:  # the batches and augmentations go on exactly as without the stop
            np_rng.bit_generator.state = ckpt["rng"]["numpy"]
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())
            if device.type == "cuda" and "cuda" in ckpt["rng"]:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        if rank == 0 and progress:
            print(f"resuming {out} at iteration {state['iteration']} ({state['train_seconds'] / 60:.1f} min trained)")
    aug = AugmentConfig.from_dict(recipe["augment"])
    crop = tuple(recipe["crop"])
    label_names = [lab["name"] for lab in labels]
    log_path = out / "log.csv"
    if rank == 0 and not log_path.exists():
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["iteration", "train_minutes", "lr", "loss", "val_mean_dice"]
                                   + [f"val_dice_{n}" for n in label_names] + ["samples_per_second"])

    def fraction_done() -> float:
        """Progress through the budget; with both budgets given, whichever runs out first."""
        by_iterations = state["iteration"] / cfg.iterations if cfg.iterations > 0 else 0.0
        by_time = state["train_seconds"] / (60 * cfg.minutes) if cfg.minutes > 0 else 0.0
        return max(by_iterations, by_time)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    images_t = torch.from_numpy(train_data.images)  # float16, stays on the host; batches are copied over
    labels_t = torch.from_numpy(train_data.labels.astype(np.int64))
    next_val = (math.floor(fraction_done() / cfg.val_every) + 1) * cfg.val_every
    losses: List[float] = []
    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        bar = tqdm(total=1000, desc=f"train {cfg.recipe} ({cfg.kind})", unit="‰", initial=int(1000 * fraction_done()))
    network.train()
    stop_flag = torch.zeros(1, device=device)
    call_start, last_checkpoint = time.perf_counter(), time.perf_counter()

    def rng() -> dict:
        states = {"numpy": np_rng.bit_generator.state, "torch": torch.get_rng_state()}
        if device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(device)
        return states

    stopped_early = False
    resumed_after_pause = _watch_for_pauses()
    last_step_seconds = 0.0
    # A resumed run whose budget is already spent trains no further (it used to take one extra step past the
    # budget on every re-run); it just writes the bundle again from the checkpoint's EMA weights.
    while fraction_done() < 1.0:
        t0 = time.perf_counter()
        idx = torch.from_numpy(np_rng.integers(0, len(images_t), cfg.batch_size))
        x = images_t[idx].to(device, non_blocking=True).float()
        y = labels_t[idx].to(device, non_blocking=True)
        with torch.no_grad():
            x, y = spatial(x, y, crop, aug)
            x = intensity(x, aug)
        x = x.contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(fraction_done())
        with autocast:
            if forward is not step_module and not compile_tried:
                loss, forward = _first_compiled_step(forward, step_module, x, y, rank == 0 and progress)
                compile_tried = True
            else:
                loss = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 5.0)
        opt.step()
        ema.update(network, state["iteration"])
        if device.type == "cuda" and state["iteration"] % 50 == 0:
            torch.cuda.synchronize(device)
        losses.append(float(loss.detach()))
        state["iteration"] += 1
        state["samples"] += cfg.batch_size * world
        step_seconds = time.perf_counter() - t0
        if resumed_after_pause():  # stopped (SIGSTOP) during this step: the pause is no training time
            step_seconds = last_step_seconds
        last_step_seconds = step_seconds
        state["train_seconds"] += step_seconds
        done = fraction_done()
        out_of_time = cfg.stop_after_minutes > 0 and time.perf_counter() - call_start >= 60 * cfg.stop_after_minutes
        stop_flag.fill_(1.0 if done >= 1.0 else 2.0 if out_of_time else 0.0)  # rank 0's decision rules (DDP)
        if world > 1:
            dist.broadcast(stop_flag, 0)
            frac_t = torch.tensor([state["train_seconds"]], device=device)
            dist.broadcast(frac_t, 0)
            state["train_seconds"] = float(frac_t)
        finished, stopped_early = stop_flag.item() == 1.0, stop_flag.item() == 2.0
        if bar is not None:
            bar.n = min(1000, int(1000 * done))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", it=state["iteration"],
                            samples_per_s=f"{state['samples'] / max(state['train_seconds'], 1e-9):.1f}", refresh=False)
            bar.refresh()
        if done >= next_val or finished:
            next_val += cfg.val_every
            if rank == 0:
                _validate_and_log(cfg, network, ema, val_data, arch, device, state, losses, log_path, label_names,
                                  opt.param_groups[0]["lr"])
                _plot(log_path, out / "curves.png", label_names)
                _save_checkpoint(ckpt_path, network, opt, ema, state, rng())
                last_checkpoint = time.perf_counter()
            losses = []
        elif rank == 0 and time.perf_counter() - last_checkpoint >= 60 * cfg.checkpoint_minutes:
            _save_checkpoint(ckpt_path, network, opt, ema, state, rng())
            last_checkpoint = time.perf_counter()
        if stopped_early and rank == 0:
            _save_checkpoint(ckpt_path, network, opt, ema, state, rng())
        if finished or stopped_early:
            break
    if bar is not None:
        bar.close()
    if stopped_early:
        if rank == 0 and progress:
            print(f"stopped after {cfg.stop_after_minutes:g} min at iteration {state['iteration']} "
                  f"({100 * fraction_done():.0f}% of the budget, {_samples_per_second(state):.1f} samples/s); "
                  f"run the same command again to resume from {ckpt_path}")
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return None
    bundle_dir = None
    if rank == 0:
        semantic_training = semantic_source.meta.get("training", {}) if semantic_source is not None else {}
        bundle_dir = _write_bundle(cfg, recipe, arch, prep, ema, split, split_seed, source_training,
                                   semantic_training, state, log_path, device, world,
                                   compiled=forward is not step_module and compile_tried)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return bundle_dir


def _first_compiled_step(compiled, eager, x: torch.Tensor, y: torch.Tensor, tell: bool):
    """The first training step through the compiled module, which compiles it: ``(loss, module for the next steps)``.
    If compiling fails, the step runs on the eager module, a one-line note says so, and the eager module is returned:
    the run goes on uncompiled instead of stopping."""
    try:
        return compiled(x, y), compiled
    except Exception as exc:  # torch's compiler errors share no base class
        if tell:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            print(f"dssm: note: --compile failed ({type(exc).__name__}: {first}); training without it")
        return eager(x, y), eager


def _ema_network(arch: ArchitectureConfig, ema: EMA, device: torch.device) -> nn.Module:
    net = build_model(arch).to(device)
    net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in ema.shadow.items()})
    return net


def _samples_per_second(state: dict) -> float:
    return state["samples"] / max(state["train_seconds"], 1e-9)


def _save_checkpoint(path: Path, network, opt, ema, state: dict, rng: dict) -> None:
    """Everything a resumed run needs to go on exactly where this one is, written atomically (a stop during
    the write leaves the previous checkpoint)."""
    tmp = path.with_name(path.name + ".partial")
    torch.save({"model": network.state_dict(), "optimizer": opt.state_dict(), "ema": ema.shadow,
                "iteration": state["iteration"], "train_seconds": state["train_seconds"],
                "samples": state["samples"], "rng": rng}, tmp)
    os.replace(tmp, path)


def _validate_and_log(cfg, network, ema, val_data, arch, device, state, losses, log_path, label_names,
                      lr_now: float) -> None:
    if len(val_data.images):
        dice = pooled_dice(_ema_network(arch, ema, device), val_data, arch.num_classes, device,
                           cfg.default_steps if arch.kind == "dssm" else 0)
    else:
        dice = [float("nan")] * len(label_names)
    with open(log_path, "a", newline="") as f:
        csv.writer(f).writerow([state["iteration"], f"{state['train_seconds'] / 60:.2f}",
                                f"{lr_now:.2e}", f"{np.mean(losses) if losses else float('nan'):.4f}",
                                f"{np.nanmean(dice):.4f}"] + [f"{d:.4f}" for d in dice]
                               + [f"{_samples_per_second(state):.2f}"])


def _load_semantic_source(cfg: TrainConfig, bundle: ModelBundle, network: nn.Module, split: dict,
                          device) -> ModelBundle:
    """``--init-semantic``: load the semantic module and pixel classifier of another bundle of the same recipe
    (typically the trained discriminative baseline: discriminative pretraining of DSSM's semantic module).
    Refused if that bundle was trained on any of this run's validation cases."""
    record = bundle.meta.get("training", {})
    if record.get("recipe") != cfg.recipe:
        raise DSSMError(f"--init-semantic {cfg.init_semantic}: trained with recipe '{record.get('recipe')}', "
                        f"not '{cfg.recipe}'")
    trained_on = set((record.get("split") or {}).get("train", []))
    if not trained_on:
        raise DSSMError(f"--init-semantic {cfg.init_semantic}: its model.json records no training split, so it "
                        "cannot be checked against this run's validation cases")
    leaked = sorted(trained_on & set(split["val"]))
    if leaked:
        raise DSSMError(f"--init-semantic {cfg.init_semantic} was trained on {len(leaked)} of this run's "
                        f"validation cases (e.g. {leaked[0]}); use a bundle with the same split")
    try:
        load_semantic_state(network, semantic_state(bundle.load_network(device)))
    except ValueError as exc:
        raise DSSMError(f"--init-semantic {cfg.init_semantic}: {exc}") from None
    return bundle


def _earlier_stages(source_training: dict) -> list:
    """The training record of a fine-tune's source bundle (``source_training``) and of its own sources, oldest
    first, without the split (the fine-tune keeps it), so that a bundle tells its whole training history."""
    if not source_training:
        return []
    source = dict(source_training)
    earlier = source.pop("earlier_stages", None) or []
    source.pop("split", None)
    return earlier + [source]


def _write_bundle(cfg, recipe, arch, prep, ema, split, split_seed, source_training, semantic_training, state,
                  log_path, device, world, compiled: bool = False) -> Path:
    name = cfg.name or (cfg.recipe if cfg.kind == "dssm" else f"{cfg.recipe}-baseline")
    rows = list(csv.DictReader(open(log_path)))
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    meta = {
        "name": name,
        "description": recipe["description"] + ("" if cfg.kind == "dssm" else " Discriminative baseline (no generative part)."),
        "architecture": arch.to_dict(),
        "labels": recipe["labels"],
        # inference pads slices smaller than the training tiles to their size (the field of view trained on)
        "preprocessing": dict(prep.to_dict(), min_size=list(recipe["tile"]) if recipe.get("tile") else None),
        "default_steps": cfg.default_steps if cfg.kind == "dssm" else 0,
        "postprocessing": recipe.get("postprocessing", {}),
        "structures": recipe.get("structures", {}),
        "training": {
            "recipe": cfg.recipe, "data": cfg.data or recipe["data"], "split_seed": split_seed, "seed": cfg.seed,
            "split": split, "iterations": state["iteration"], "batch_size": cfg.batch_size * world,
            "train_minutes": round(state["train_seconds"] / 60, 2), "hardware": hardware, "processes": world,
            "samples_per_second": round(_samples_per_second(state), 2),
            "augment": recipe["augment"], "crop": recipe["crop"], "lr": cfg.lr,
            **({"stage1_dropout": cfg.stage1_dropout} if arch.refiner == "residual" and cfg.kind == "dssm" else {}),
            "compiled": compiled, "memory_format": "channels_last",  # compiled: this call's training step
            "final_val_dice_cache_resolution": {k: float(v) for k, v in rows[-1].items() if k.startswith("val_dice_")} if rows else {},
            "torch": torch.__version__,
            "warm_start_from": str(cfg.init) if cfg.init else None,
            "earlier_stages": _earlier_stages(source_training),
            # --init-semantic: where the semantic module started, and that bundle's own training history
            "semantic_init_from": str(cfg.init_semantic) if cfg.init_semantic else None,
            "semantic_stages": _earlier_stages(semantic_training),
            "likelihood_loss_weight": cfg.likelihood_weight if cfg.kind == "dssm" else None,
        },
        "metrics": {},
    }
    bundle = save_bundle(_ema_network(arch, ema, torch.device("cpu")), Path(cfg.out) / "bundle" / name, meta)
    return bundle.path


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
