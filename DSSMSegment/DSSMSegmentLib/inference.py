"""From an image to a label image: the inference pipeline (DESIGN.md, 'The pipeline').

:class:`Segmenter` loads a model bundle once and then segments any number of images. Each call:
read -> check -> slice along the through-plane axis -> normalise -> resample in-plane -> pad -> network in
batches of slices (CUDA with bf16 autocast, or CPU) -> crop -> resample probabilities back (linear) ->
argmax -> optional largest component per structure -> label image on exactly the input's voxel grid.

With ``samples`` > 1, DSSM's Markov chain runs that many times per slice, each chain from its own noise, and the
fused latents are averaged before decoding (:meth:`DSSM.forward`).

With test-time augmentation (``tta``) the network also runs on each flip the model was trained with, at
its own scale and zoomed 1.2x (:attr:`ModelBundle.test_time_passes`), each pass with its own Markov noise;
the class probabilities are averaged on the native grid before the argmax.

The Markov chain's noise is seeded per slice (``seed`` + slice index), so a mask does not depend on how
the slices were batched.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk
import torch

from . import preprocess as pp
from . import uncertainty as unc
from .bundle import ModelBundle
from .errors import Cancelled, DSSMError
from .imageio import image_like, label_image_like
from .networks import DSSM, DiscriminativeBaseline, optimize_for_inference

ProgressCallback = Callable[[str, float], None]  # (stage, fraction of the whole case done)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is an error, not a silent fallback."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested in ("gpu", "cuda") or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise DSSMError(f"a GPU was requested (--device {requested}) but PyTorch sees none (torch "
                            f"{torch.__version__}, {build}); use --device cpu or auto, or install a CUDA build of "
                            "torch that matches your NVIDIA driver")
        return torch.device("cuda" if requested == "gpu" else requested)
    if requested == "cpu":
        return torch.device("cpu")
    raise DSSMError(f"unknown device '{requested}' (expected auto, cpu or cuda)")


@dataclass
class Timings:
    """Seconds spent per stage for one case."""

    stages: Dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.stages.values())


class _Clock:
    def __init__(self, timings: Timings, device: torch.device) -> None:
        self.timings, self.device = timings, device

    def __call__(self, stage: str):
        clock = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                if clock.device.type == "cuda":
                    torch.cuda.synchronize(clock.device)
                clock.timings.add(stage, time.perf_counter() - self.t0)

        return _Ctx()


_ALLOCATOR_TUNED = False


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc's malloc keep freed memory for the next tensor instead of returning it to the kernel.

    By default glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free, so each
    full-resolution activation of every batch (33-130 MiB) is page-faulted in again: on the 2-core reference
    CPU that costs about 35 ms per 66 MiB tensor, as much as the arithmetic of the layer that writes it. With
    ``mmap`` off and a high trim threshold, freed blocks are reused from the heap. The peak memory is unchanged
    (it is what the largest batch needs); the process just does not shrink back between batches. Called once
    per process, on Linux with glibc only; ``DSSM_MALLOC_TUNING=0`` turns it off.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("DSSM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def keep_largest_component(labels: np.ndarray, values) -> np.ndarray:
    """Keep only the largest connected component (26-/8-connected) of each listed label value.

    Components are labelled inside the bounding box of each structure only (none can reach outside it), which
    gives the same result as labelling the whole volume at a fraction of the cost when the structure is small
    (ACDC: 11.6 -> 4.4 ms; LA2018: 61 -> 23 ms).
    """
    from scipy import ndimage

    out = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for value in values:
        mask = labels == value
        boxes = ndimage.find_objects(mask.view(np.uint8))
        if not boxes or boxes[0] is None:
            continue  # the structure is absent
        box = boxes[0]
        sub = mask[box]
        components, n = ndimage.label(sub, structure=structure)
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[box][sub & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


def zoomed_sizes(prep, target, zoom: float) -> tuple:
    """At a test-time ``zoom``: the in-plane size to resample slices to, and the minimum padded size (the
    training field of view, scaled with the pixels) or None."""
    size = tuple(target) if zoom == 1.0 else tuple(max(8, round(t * zoom)) for t in target)
    return size, (prep.min_size and [m * zoom for m in prep.min_size])


def chain_generators(seed: int, first_slice: int, n: int, pass_index: int, samples: int,
                     device: torch.device) -> list:
    """One seeded generator per slice and Markov sample, sample-major (as :meth:`DSSM.forward` batches the
    chains): the noise of a slice depends on its index, the test-time pass and the sample only, never on the
    batching. Sample 0 of pass 0 is seeded ``seed + slice index``."""
    return [torch.Generator(device=device).manual_seed(
                seed + first_slice + j + 1_000_003 * pass_index + 7_000_003 * s)
            for s in range(samples) for j in range(n)]


@dataclass
class SegmentationResult:
    """A mask and what else the model can say about the image (:meth:`Segmenter.run`)."""

    labels: sitk.Image  # uint8, on the input's exact grid
    axis: int  # the array axis (0 = Z, 1 = Y, 2 = X) the volume was cut into slices along; 0 for a 2D image
    # for every pixel of the plain pass (network grid, padding left out): log p(f|c*), the likelihood of its
    # features under the mixture of its class c*, and c*; None for a baseline (no feature density)
    typicality: Optional[tuple] = None
    # with the uncertainty map: the written measure as an image on the input's grid (float32, 0 certain .. 1),
    # every measure of uncertainty.MEASURES as an array (Z, Y, X), and the structure most likely at each voxel
    uncertainty: Optional[sitk.Image] = None
    uncertainty_maps: Dict[str, np.ndarray] = field(default_factory=dict)
    likely_structure: Optional[np.ndarray] = None
    uncertainty_chains: int = 0  # Markov chains per slice and pass the map comes from


class _Extras:
    """What a run collects beside the mask, batch of slices by batch: the plain pass's feature typicality, and,
    when asked, the mean probabilities and the mean entropy over every chain and pass (:mod:`.uncertainty`)."""

    def __init__(self, num_classes: int, shape: tuple, wants_uncertainty: bool) -> None:
        self.num_classes, self.wants_uncertainty = num_classes, wants_uncertainty
        self.typicality: list = []
        self.chains = 1
        if wants_uncertainty:
            self.maps = {name: np.zeros(shape, np.float32) for name in unc.MEASURES}
            self.likely = np.zeros(shape, np.uint8)
        self._sums = None
        self._n = self._passes = 0

    def add_typicality(self, likelihood: torch.Tensor, classes: torch.Tensor) -> None:
        self.typicality.append((likelihood.float().cpu().numpy().ravel(), classes.cpu().numpy().ravel()))

    def add_pass(self, outputs: list, p: torch.Tensor, crop: tuple, dims: tuple, resample_to) -> None:
        """One pass's per-chain probabilities (``p``, the pass's probabilities, when one chain ran)."""
        top, left, h, w = crop
        if getattr(outputs[0], "sample_logits", None) is None:  # also a stand-in network's plain logits
            chains = p[None]
        else:
            logits = torch.cat([o.sample_logits for o in outputs], dim=1)[..., top:top + h, left:left + w]
            chains = torch.softmax((logits.flip(dims) if dims else logits).float(), dim=2)
            if resample_to is not None:
                s, b = chains.shape[:2]
                chains = pp.resize(chains.flatten(0, 1).contiguous(memory_format=torch.channels_last),
                                   resample_to).view(s, b, *chains.shape[2:3], *resample_to)
        # per pass: the sum of the chains' probabilities, of their entropies, and the first chain's probabilities
        sums = torch.cat([chains.sum(0), unc.entropy(chains, dim=2).sum(0)[:, None], chains[0]], dim=1)
        self._sums = sums if self._sums is None else self._sums.add_(sums)
        self._n += chains.shape[0]
        self._passes += 1

    def finish_batch(self, start: int, shape_hw) -> None:
        """The batch's maps on the native in-plane grid (:data:`uncertainty.MEASURES`) and likely structures."""
        c = self.num_classes
        sums = self._sums.contiguous(memory_format=torch.channels_last)
        sums = pp.resize(sums, shape_hw)
        mean_p, mean_h, first_p = sums[:, :c] / self._n, sums[:, c] / self._n, sums[:, c + 1:] / self._passes
        total = unc.entropy(mean_p, dim=1)
        scale = 1.0 / np.log(c)
        end = start + sums.shape[0]
        self.maps["entropy"][start:end] = (total * scale).cpu().numpy()
        self.maps["mutual_information"][start:end] = ((total - mean_h).clamp_min(0) * scale).cpu().numpy()
        self.maps["entropy_first_chain"][start:end] = (unc.entropy(first_p, dim=1) * scale).cpu().numpy()
        self.likely[start:end] = (mean_p[:, 1:].argmax(1) + 1).to(torch.uint8).cpu().numpy()
        self._sums = None
        self._n = self._passes = 0


class Segmenter:
    """A loaded model, ready to segment images one after another."""

    def __init__(self, bundle: ModelBundle, device: str = "auto", batch_size: int = 16, tta: bool = False,
                 samples: int = 1, uncertainty_samples: int = unc.UNCERTAINTY_SAMPLES) -> None:
        self.bundle = bundle
        self.device = pick_device(device)
        self.batch_size = max(1, int(batch_size))
        self.tta = bool(tta)
        samples = int(samples)
        if samples < 1:
            raise DSSMError("--samples must be 1 or more")
        # Markov chains per slice, each from its own noise, whose latents are averaged (DSSM at K > 0 only)
        self.samples = samples if bundle.architecture.kind == "dssm" else 1
        # Markov chains per slice that the uncertainty map is computed from (at least; more with --samples)
        self.uncertainty_samples = max(1, int(uncertainty_samples))
        self.test_time_passes = bundle.test_time_passes  # (zoom, flip dims), grouped by zoom
        # ``network`` is the model exactly as the bundle holds it (saving it gives the same file back); the
        # segmentation runs on a copy prepared for speed - BatchNorm folded into the convolutions and
        # channels-last weights (networks.optimize_for_inference), same results up to float rounding.
        self.network = bundle.load_network(self.device)
        self._fast_network = optimize_for_inference(copy.deepcopy(self.network))
        self._fast_from = self.network
        if self.device.type == "cpu":
            keep_freed_memory_for_reuse()

    def passes(self, tta: Optional[bool] = None) -> list:
        """The ``(zoom, flip dims)`` passes a segmentation runs: the bundle's test-time passes with ``tta``
        (default: as the Segmenter was created), else the plain one."""
        return self.test_time_passes if (self.tta if tta is None else tta) else [(1.0, ())]

    def checked_steps(self, steps: Optional[int]) -> int:
        """``steps`` (None: the bundle's default K), refused if the chain cannot take that many: it has one step
        per integer noise level from ``markov_start x T`` down, and a larger K would be quietly capped there."""
        steps = self.bundle.default_steps if steps is None else int(steps)
        if steps < 0:
            raise DSSMError("--steps must be 0 or more")
        if self.bundle.architecture.kind == "dssm":
            from .sampler import chain_length

            cfg = self.network.cfg
            most = chain_length(cfg.timesteps, cfg.markov_start)
            if steps > most:
                raise DSSMError(f"--steps {steps}: the Markov chain of {self.bundle.name} has at most {most} steps "
                                f"(one per noise level from {cfg.markov_start:g} x {cfg.timesteps} down); choose "
                                f"{most} or fewer (the default is {self.bundle.default_steps})")
        return steps

    def samples_at(self, steps: int) -> int:
        """Markov chains per slice that actually run at ``steps`` (K = 0 has no chain, so one pass)."""
        return self.samples if steps > 0 else 1

    @property
    def inference_network(self):
        """The network that :meth:`segment` runs: the speed-prepared copy of :attr:`network`, or
        :attr:`network` itself if a caller replaced it after construction."""
        return self._fast_network if self.network is self._fast_from else self.network

    # ---------------------------------------------------------------------------------------------------
    def segment(self, image: sitk.Image, steps: Optional[int] = None, seed: int = 0,
                progress: Optional[ProgressCallback] = None, cancel: Optional[Callable[[], bool]] = None,
                timings: Optional[Timings] = None, postprocess: bool = True, name: str = "image",
                tta: Optional[bool] = None, uncertainty: bool = False) -> sitk.Image:
        """Segment one image; returns a uint8 label image on the input's exact grid. ``tta``: average over the
        model's test-time passes (default: as the Segmenter was created). ``uncertainty``: also compute the
        uncertainty map, as :meth:`run` does (the mask is the same; for timing the whole work)."""
        return self.run(image, steps, seed, progress, cancel, timings, postprocess, name, tta, uncertainty).labels

    def run(self, image: sitk.Image, steps: Optional[int] = None, seed: int = 0,
            progress: Optional[ProgressCallback] = None, cancel: Optional[Callable[[], bool]] = None,
            timings: Optional[Timings] = None, postprocess: bool = True, name: str = "image",
            tta: Optional[bool] = None, uncertainty: bool = False) -> "SegmentationResult":
        """Segment one image, as :meth:`segment`, and say what else the model knows about it: how typical each
        pixel's features are of its class (DSSM's Bayesian head; :func:`familiarity.assess` makes the image's
        familiarity score of it), and with ``uncertainty`` the per-voxel uncertainty map
        (:mod:`DSSMSegmentLib.uncertainty`) from :meth:`uncertainty_chains` Markov chains per slice and every
        test-time pass. The mask does not depend on ``uncertainty``."""
        steps = self.checked_steps(steps)
        passes = self.passes(tta)
        timings = timings if timings is not None else Timings()
        clock = _Clock(timings, self.device)
        report = progress or (lambda stage, fraction: None)

        def check_cancel() -> None:
            if cancel is not None and cancel():
                raise Cancelled()

        with clock("preprocess"):
            report("preprocess", 0.0)
            slices, axis, target = pp.prepare_slices(image, self.bundle.preprocessing,
                                                       self.bundle.architecture.in_channels, name)
            shape_hw = slices.shape[-2:]
        labels = np.zeros((slices.shape[0], *shape_hw), dtype=np.uint8)
        extras = _Extras(self.bundle.architecture.num_classes, labels.shape, uncertainty)
        try:
            self._run_network(slices, target, shape_hw, steps, seed, passes, labels, clock, report, check_cancel,
                              extras)
        except torch.cuda.OutOfMemoryError:
            raise DSSMError(f"out of GPU memory while segmenting {name}; use a smaller --batch-size "
                            "or --device cpu") from None
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
                raise DSSMError(f"out of memory while segmenting {name}; use a smaller --batch-size") from None
            raise
        with clock("postprocess"):
            volume = pp.from_slices(labels, axis)
            values = self.bundle.postprocessing.get("largest_component", []) if postprocess else []
            if values:
                volume = keep_largest_component(volume, values)
            result = SegmentationResult(label_image_like(volume, image), axis=axis)
            if extras.typicality:
                result.typicality = tuple(np.concatenate(part) for part in zip(*extras.typicality))
            if uncertainty:
                result.uncertainty_maps = {name: pp.from_slices(m, axis) for name, m in extras.maps.items()}
                result.uncertainty = image_like(result.uncertainty_maps[unc.MEASURE], image)
                result.likely_structure = pp.from_slices(extras.likely, axis)
                result.uncertainty_chains = extras.chains
        report("done", 1.0)
        return result

    def uncertainty_chains(self, steps: int) -> int:
        """Markov chains per slice that a run with the uncertainty map draws at ``steps``: the Segmenter's
        ``samples``, at least :attr:`uncertainty_samples` (DSSM at K > 0 only: elsewhere there is no chain)."""
        if steps <= 0 or self.bundle.architecture.kind != "dssm":
            return 1
        return max(self.samples, self.uncertainty_samples)

    def _run_network(self, slices, target, shape_hw, steps, seed, passes, labels, clock, report,
                     check_cancel, extras: Optional["_Extras"] = None) -> None:
        """Network over batches of slices; each pass ``(zoom, flip dims)`` of ``passes`` adds its class
        probabilities (on the native in-plane grid when zooms differ), and the argmax of the sum is the label.
        ``extras`` collects the feature typicality of the plain pass and, when it asks, the uncertainty of every
        pass and chain."""
        device = self.device
        multiple = self.bundle.architecture.size_multiple
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
        network = self.inference_network
        n = slices.shape[0]
        several_zooms = len({zoom for zoom, _ in passes}) > 1
        samples = self.samples_at(steps)
        # the bundle's own networks say more than their logits; a stand-in (the benchmark's naive chain) does not
        detailed = extras is not None and isinstance(network, (DSSM, DiscriminativeBaseline))
        wants_map = extras is not None and extras.wants_uncertainty
        each_sample = detailed and wants_map
        chains = self.uncertainty_chains(steps) if each_sample else samples
        options = dict(details=True, each_sample=each_sample, mask_samples=samples) if detailed else {}
        if extras is not None:
            extras.chains = chains if each_sample else 1
        with torch.inference_mode(), autocast:
            for start in range(0, n, self.batch_size):
                check_cancel()
                raw = torch.from_numpy(slices[start:start + self.batch_size]).to(device)
                b = raw.shape[0]
                probs, zoomed = None, {}
                for k, (zoom, dims) in enumerate(passes):
                    # a zoomed pass, or one with several Markov samples, runs in smaller chunks of slices, so that
                    # no network call needs much more memory than a plain batch does (each extra sample's chain
                    # adds about a quarter of a plain pass's working memory: measured 213 of 900 MiB)
                    chunk = max(1, int(b / (zoom * zoom * (1 + (chains - 1) / 4))))

                    def on_step(i: int, total: int, k=k, done=0, size=b) -> None:  # progress per Markov step
                        within = (done + size * i / max(1, total)) / b
                        report("network", 0.95 * (start + b * (k + within) / len(passes)) / n)

                    zoomed_hw, min_hw = zoomed_sizes(self.bundle.preprocessing, target, zoom)
                    if zoom not in zoomed:  # passes come grouped by zoom: keep only the current one
                        with clock("resample in"):
                            zoomed = {zoom: pp.resize(raw, zoomed_hw)}
                    with clock("resample in"):
                        # flip, then pad: the padding is then always bottom/right of what the network sees, so
                        # the mask of a mirrored image is exactly the mirrored mask
                        x = zoomed[zoom].flip(dims) if dims else zoomed[zoom]
                        x, (top, left, h, w) = pp.pad_to_multiple(x, multiple, min_hw)
                        x = x.contiguous(memory_format=torch.channels_last)
                    with clock("network"):
                        # one generator per slice: the noise of slice i is the same however slices are batched
                        outputs = [
                            network(x[i:i + chunk], steps=steps, samples=chains,
                                    generator=chain_generators(seed, start + i, min(chunk, b - i), k, chains,
                                                               device) if steps > 0 else None,
                                    step_callback=partial(on_step, done=i, size=min(chunk, b - i)), **options)
                            for i in range(0, b, chunk)]
                        logits = torch.cat([o.logits if detailed else o for o in outputs])[..., top:top + h,
                                                                                            left:left + w]
                        if dims:
                            logits = logits.flip(dims)
                        if detailed and k == 0 and outputs[0].typicality is not None:  # the plain pass's
                            extras.add_typicality(*(torch.cat([o.typicality[i] for o in outputs])[
                                :, top:top + h, left:left + w] for i in (0, 1)))
                    with clock("resample out"):
                        p = torch.softmax(logits.float(), dim=1)
                        if several_zooms:
                            p = pp.resize(p.contiguous(memory_format=torch.channels_last), shape_hw)
                        probs = p if probs is None else probs.add_(p)  # the argmax of the sum = of the mean
                    if wants_map:
                        with clock("uncertainty"):
                            extras.add_pass(outputs, p, (top, left, h, w), dims,
                                            shape_hw if several_zooms else None)
                    report("network", 0.95 * (start + b * (k + 1) / len(passes)) / n)
                with clock("resample out"):
                    # channels-last: the softmax and the argmax then reduce over a contiguous class axis
                    # (the argmax over the class axis of an NCHW tensor was 10x slower on CPU)
                    probs = pp.resize(probs.contiguous(memory_format=torch.channels_last), shape_hw)
                    labels[start:start + b] = probs.argmax(1).to(torch.uint8).cpu().numpy()
                if wants_map:
                    with clock("uncertainty"):
                        extras.finish_batch(start, shape_hw)
