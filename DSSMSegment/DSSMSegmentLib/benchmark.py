"""``dssm benchmark``: time and memory of inference, per case, per stage and per number of Markov steps K.

What it measures (issue 5), in one run:

* **cases:** a typical ACDC volume (cine MRI, the model given by ``--model``, by default the heart model), a
  512x512 chest X-ray (``lungs-cxr``; a real 256x256 Montgomery/Shenzhen image upsampled, since the shared
  copies are 256x256) and a 256x256x20 MRI (the same ACDC volume resampled, same field of view);
* **methods:** DSSM at each K of ``--steps`` (0, 1, 2, 4, 8, 16), DSSM at its default K with 4 Markov samples
  per slice (``--samples 4``) and with test-time augmentation (``--tta``; FLOPs count every pass at its
  zoom), and two references: the discriminative
  baseline bundle (``<model>-baseline``) and *naive diffusion sampling* - the same denoiser and schedule
  started from pure noise with 100 DDPM ancestral steps (:func:`naive_diffusion_logits`);
* **time:** end to end (read -> written mask, exactly what ``dssm segment`` does, through
  :class:`~DSSMSegmentLib.inference.Segmenter`): one cold warm-up run, then ``--repeats`` timed runs; median,
  min, max and the relative spread ``(max - min) / median``;
* **stages:** read, preprocess (incl. in-plane resampling), semantic pass, first prediction + latent encode,
  each Markov step, latent decode, Bayesian head, resample back, postprocess, write. Stage clocks are plain
  wrappers around the network's own modules (with ``torch.cuda.synchronize`` around each on CUDA): they
  call the same code with the same inputs, so the masks are the same as without them;
* **memory:** peak resident RAM of the process per configuration (every case and method runs in a fresh
  worker process; on Linux the peak is reset between K values through ``/proc/self/clear_refs``), and peak GPU
  memory (``torch.cuda.max_memory_allocated``);
* **throughput:** slices per second per case, and a batched network-only measurement (256x256 slices; batch 256
  on CUDA, 16 on CPU);
* **FLOPs** per slice (``torch.utils.flop_counter.FlopCounterMode``), and the achieved fraction of a measured
  matmul peak (bf16 on CUDA, float32 on CPU);
* **accuracy:** the Dice of every configuration's mask against the case's ground truth, so that speed is never
  read without accuracy.

It prints Markdown tables and writes everything to JSON (``-o``). ``--quick`` runs the ACDC case only, with
fewer repeats, for tests. Without SimpleITK (e.g. a bare GPU host) it runs from arrays (``--cases FILE.npz``,
written on a host that has SimpleITK and the data with ``--save-cases``); read and write are then not timed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .errors import DSSMError

DEFAULT_STEPS = "0,1,2,4,8,16"
NAIVE_STEPS = 100
QUICK_SLICES = 3  # --quick: the middle slices of the ACDC volume
XRAY_MODEL = "lungs-cxr"
MIB = 2.0 ** 20


# ------------------------------------------------------------------------------------------------------
# The naive reference: the same denoiser from pure noise, 100 DDPM ancestral steps


def naive_diffusion_logits(network, x, steps: int = NAIVE_STEPS, generator=None, step_callback=None):
    """Log-posterior logits from a *naive* diffusion chain: DSSM's own denoiser and cosine schedule, started
    from pure Gaussian noise at ``t = T`` (not from the first prediction) and run with ``steps`` DDPM
    ancestral steps (strided: the posterior ``q(z_s | z_t, z0)`` between consecutive grid points, with fresh
    noise at every step but the last). The result goes through the same decoder and Bayesian head as DSSM's
    own chain, so the only difference is how the latent is sampled. This is the reference that shows the
    factor DSSM's stable Markov chain saves.
    """
    import torch

    from .sampler import start_noise

    schedule = network.schedule
    features, quarter = network.semantic(x)
    b, h, w = x.shape[0], quarter.shape[-2], quarter.shape[-1]
    latent = network.cfg.latent_channels
    z = start_noise((b, latent, h, w), x.device, generator)
    grid = torch.linspace(schedule.timesteps, 0, steps + 1).round().long().tolist()
    fast = hasattr(network, "_denoise_precomputed") and hasattr(network.ffm, "precompute")
    base = network.ffm.precompute(quarter) if fast else None
    z0 = z
    if step_callback is not None:
        step_callback(0, steps)  # the chain starts
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        t_batch = torch.full((b,), t, dtype=torch.long, device=x.device)
        z0 = (network._denoise_precomputed(base, z, t_batch) if fast else network.denoise(quarter, z, t_batch))
        z0 = z0.float().clamp(-1.0, 1.0)
        a_t = float(schedule.alphas_cumprod[t])
        a_s = float(schedule.alphas_cumprod[s])
        alpha = a_t / a_s  # the strided step's own alpha
        beta = 1.0 - alpha
        mean = (math.sqrt(a_s) * beta / (1.0 - a_t)) * z0 + (math.sqrt(alpha) * (1.0 - a_s) / (1.0 - a_t)) * z
        if s > 0:
            var = beta * (1.0 - a_s) / (1.0 - a_t)
            noise = start_noise(z.shape, z.device, generator)
            z = mean + math.sqrt(max(var, 0.0)) * noise
        else:
            z = mean
        if step_callback is not None:
            step_callback(i + 1, steps)
    z_hat = z0  # the final clean prediction (at s = 0 the posterior mean is z0 itself)
    prior = torch.log_softmax(network.autoencoder.decode(z_hat.to(x.dtype)).float(), dim=1)
    if fast:
        return network._refine(features, base, z_hat, prior)
    return network.posterior(features, quarter, z_hat, prior)


class NaiveDiffusion:
    """Stands in for the network inside a Segmenter: ``forward(x, steps, generator)`` runs the naive chain."""

    def __init__(self, network, steps: int = NAIVE_STEPS) -> None:
        self.network, self.steps, self.step_callback = network, steps, None

    def __call__(self, x, steps: int = 0, generator=None, step_callback=None, samples: int = 1):
        if samples != 1:
            raise ValueError("the naive diffusion reference runs one Markov sample per slice")
        callbacks = [c for c in (self.step_callback, step_callback) if c is not None]

        def each(i: int, n: int) -> None:
            for callback in callbacks:
                callback(i, n)

        return naive_diffusion_logits(self.network, x, self.steps, generator, each if callbacks else None)

    def __getattr__(self, name):
        return getattr(self.network, name)


# ------------------------------------------------------------------------------------------------------
# Running without SimpleITK: a minimal in-memory image with the few methods the pipeline uses


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


def _install_sitk_shim() -> None:
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


def _have_simpleitk() -> bool:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return False
    return not getattr(sys.modules.get("SimpleITK"), "__dssm_shim__", False)


# ------------------------------------------------------------------------------------------------------
# Cases


def _case_specs(model: str, quick: bool) -> List[dict]:
    cases = [{"name": "acdc", "title": "ACDC volume" + (f" ({QUICK_SLICES} middle slices)" if quick else ""),
              "model": model}]
    if not quick:
        cases += [{"name": "xray512", "title": "X-ray 512x512", "model": XRAY_MODEL},
                  {"name": "mri256x20", "title": "MRI 256x256x20", "model": model}]
    return cases


def _first_val_key(bundle, prefix: str) -> Optional[str]:
    split = bundle.meta.get("training", {}).get("split", {})
    for key in split.get("val", []):
        if key.startswith(prefix + ":"):
            return key.split(":", 1)[1]
    return None


def prepare_cases(model: str, quick: bool, folder: Path) -> Dict[str, dict]:
    """Build the benchmark's cases from the shared data (needs SimpleITK): image files in ``folder`` and, for
    each case, its arrays and geometry (so that it can also run from arrays), and its ground truth."""
    import SimpleITK as sitk

    from . import imageio  # noqa: F401 - switches ITK's per-file warnings off
    from .bundle import resolve_model
    from .datasets import SHARED_DATA

    heart = resolve_model(model)
    patient = _first_val_key(heart, "acdc") or "patient011"
    acdc_dir = SHARED_DATA / "acdc" / "training" / patient
    frames = sorted(p for p in acdc_dir.glob(f"{patient}_frame*.nii.gz") if "_gt" not in p.name)
    if not frames:
        raise DSSMError(f"ACDC data not found in {acdc_dir} (set DSSM_DATA to the shared/data folder, "
                        "or pass --cases FILE.npz)")
    volume = sitk.ReadImage(str(frames[0]))
    gt_volume = sitk.ReadImage(str(frames[0]).replace(".nii.gz", "_gt.nii.gz"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}

    def add(name, image, gt, suffix):
        path = folder / f"{name}{suffix}"
        sitk.WriteImage(image, str(path), True)
        array = sitk.GetArrayFromImage(image)
        cases[name] = {"path": str(path), "array": array, "spacing": image.GetSpacing(),
                       "origin": image.GetOrigin(), "direction": image.GetDirection(),
                       "vector": image.GetNumberOfComponentsPerPixel() > 1,
                       "gt": sitk.GetArrayFromImage(gt).astype(np.uint8), "size": list(image.GetSize())}

    if quick and volume.GetSize()[2] > QUICK_SLICES:  # the middle slices, with their real geometry
        z0 = (volume.GetSize()[2] - QUICK_SLICES) // 2
        add("acdc", volume[:, :, z0:z0 + QUICK_SLICES], gt_volume[:, :, z0:z0 + QUICK_SLICES], ".nii.gz")
    else:
        add("acdc", volume, gt_volume, ".nii.gz")
    specs = {c["name"] for c in _case_specs(model, quick)}
    if "mri256x20" in specs:
        # the same field of view on a 256x256x20 grid (square pixels; the short side is padded with background)
        size, spacing = volume.GetSize(), volume.GetSpacing()
        fov = [n * s for n, s in zip(size, spacing)]
        inplane = max(fov[0], fov[1]) / 256
        new_spacing = (inplane, inplane, fov[2] / 20)
        center = volume.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
        ref = sitk.Image(256, 256, 20, volume.GetPixelID())
        ref.SetSpacing(new_spacing)
        ref.SetDirection(volume.GetDirection())
        ref.SetOrigin(center)
        offset = ref.TransformContinuousIndexToPhysicalPoint([127.5, 127.5, 9.5])
        ref.SetOrigin([2 * c - o for c, o in zip(center, offset)])
        background = float(sitk.GetArrayViewFromImage(volume).min())
        mri = sitk.Resample(volume, ref, sitk.Transform(), sitk.sitkLinear, background)
        gt = sitk.Resample(gt_volume, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        add("mri256x20", mri, gt, ".nii.gz")
    if "xray512" in specs:
        lungs = resolve_model(XRAY_MODEL)
        key = _first_val_key(lungs, "cxr_lung") or "CHNCXR_0002_0"
        png = SHARED_DATA / "cxr_lung" / "images" / f"{key}.png"
        if not png.exists():
            raise DSSMError(f"chest X-ray not found: {png}")
        small = sitk.ReadImage(str(png))
        small_gt = sitk.ReadImage(str(SHARED_DATA / "cxr_lung" / "masks" / f"{key}.png"))
        if small.GetNumberOfComponentsPerPixel() > 1:
            small = sitk.VectorIndexSelectionCast(small, 0)
        if small_gt.GetNumberOfComponentsPerPixel() > 1:
            small_gt = sitk.VectorIndexSelectionCast(small_gt, 0)
        # a 512x512 acquisition of the same anatomy: B-spline upsampling of the real 256x256 image
        ref = sitk.Image(512, 512, small.GetPixelID())
        ref.SetSpacing([s * small.GetSize()[i] / 512 for i, s in enumerate(small.GetSpacing())])
        ref.SetOrigin(small.GetOrigin())
        big = sitk.Resample(sitk.Cast(small, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkBSpline, 0.0)
        big = sitk.Cast(sitk.Clamp(big, sitk.sitkFloat32, 0, 255), sitk.sitkUInt8)
        big_gt = sitk.Resample(small_gt, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        big_gt = sitk.Cast(sitk.BinaryThreshold(big_gt, 128, 255, 1, 0), sitk.sitkUInt8)
        add("xray512", big, big_gt, ".png")
    return cases


def save_cases(cases: Dict[str, dict], path: Path) -> None:
    arrays = {}
    for name, c in cases.items():
        arrays[f"{name}/array"] = c["array"]
        arrays[f"{name}/gt"] = c["gt"]
        arrays[f"{name}/geometry"] = np.array(json.dumps(
            {"spacing": list(c["spacing"]), "origin": list(c["origin"]), "direction": list(c["direction"]),
             "vector": bool(c["vector"]), "size": c["size"]}))
    np.savez_compressed(path, **arrays)


def load_cases(path: Path) -> Dict[str, dict]:
    data = np.load(path)
    cases = {}
    for key in data.files:
        name, field = key.split("/", 1)
        c = cases.setdefault(name, {"path": None})
        if field == "geometry":
            c.update(json.loads(str(data[key])))
        else:
            c[field] = data[key]
    return cases


# ------------------------------------------------------------------------------------------------------
# Measuring inside a worker process


def _proc_status_mib(field: str) -> Optional[float]:
    """A memory field of ``/proc/self/status`` (Linux) in MiB, e.g. ``VmRSS``; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    rss = _proc_status_mib("VmRSS")
    if rss is not None:
        return rss
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / MIB


class StageClock:
    """Per-stage wall-clock seconds, by wrapping the network's own modules (same calls, same inputs).

    On CUDA every wrapped call is bracketed by ``torch.cuda.synchronize`` so the time is the stage's own.
    """

    def __init__(self, device) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.stages: Dict[str, float] = {}
        self.first_input = None
        self._undo = []

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def wrap(self, obj, attr: str, stage: str) -> None:
        original = getattr(obj, attr)
        clock = self

        def timed(*args, **kwargs):
            clock.sync()
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            clock.sync()
            clock.add(stage, time.perf_counter() - t0)
            return out

        had = attr in vars(obj)
        setattr(obj, attr, timed)
        self._undo.append((obj, attr, had, original))

    def instrument(self, network) -> None:
        """Wrap the stages of a DSSM, a baseline, or a NaiveDiffusion stand-in."""
        from . import sampler as sampler_module

        inner = network.network if isinstance(network, NaiveDiffusion) else network
        if isinstance(network, NaiveDiffusion):
            last = [0.0]

            def naive_tick(i, n):
                self.sync()
                now = time.perf_counter()
                if i > 0:
                    self.add("naive DDPM steps", now - last[0])
                last[0] = now

            network.step_callback = naive_tick
            self._undo.append((network, "step_callback", True, None))
        self.wrap(inner.semantic, "forward", "semantic pass")
        if hasattr(inner, "bayes"):  # DSSM
            self.wrap(inner.first_head, "forward", "first prediction + encode")
            self.wrap(inner.autoencoder, "encode", "first prediction + encode")
            self.wrap(inner.autoencoder, "decode", "decode")
            self.wrap(inner, "_refine" if hasattr(inner, "_refine") else "posterior", "bayesian head")
        else:
            self.wrap(inner.head, "forward", "head")
        clock = self
        original_run = sampler_module.MarkovSampler.run

        def run(sampler, denoise, z_first, generator=None, step_callback=None):
            clock.sync()
            last = [time.perf_counter()]

            def tick(i, n):
                clock.sync()
                now = time.perf_counter()
                clock.add(f"markov step {i}", now - last[0])
                last[0] = now
                if step_callback is not None:
                    step_callback(i, n)

            return original_run(sampler, denoise, z_first, generator, tick)

        sampler_module.MarkovSampler.run = run
        self._undo.append((sampler_module.MarkovSampler, "run", True, original_run))

    def uninstrument(self) -> None:
        for obj, attr, had, original in reversed(self._undo):
            if had:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)
        self._undo.clear()


def _dice(pred: np.ndarray, gt: np.ndarray) -> Optional[float]:
    """Mean Dice over the foreground labels present in the ground truth."""
    if gt is None or pred.shape != gt.shape:
        return None
    scores = []
    for value in np.unique(gt):
        if value == 0:
            continue
        a, b = pred == value, gt == value
        denom = int(a.sum()) + int(b.sum())
        scores.append(2.0 * int(np.logical_and(a, b).sum()) / denom if denom else 1.0)
    return float(np.mean(scores)) if scores else None


def _summary(values: List[float]) -> dict:
    med = statistics.median(values)
    q = np.percentile(values, [25, 75]) if len(values) > 1 else [values[0], values[0]]
    return {"median": med, "min": min(values), "max": max(values), "iqr": float(q[1] - q[0]),
            "spread": (max(values) - min(values)) / med if med > 0 else 0.0, "n": len(values)}


def _flops_per_slice(forward, x) -> Optional[float]:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with FlopCounterMode(display=False) as counter:
        forward(x)
    return float(counter.get_total_flops()) / x.shape[0]


def _matmul_peak(device, small: bool = False) -> dict:
    """Measured dense matmul rate: bf16 8192^3 on CUDA, float32 2048^3 on CPU (FLOP/s)."""
    import torch

    if device.type == "cuda":
        n, dtype, iters = 8192, torch.bfloat16, 20
    else:
        n, dtype, iters = (1024, torch.float32, 3) if small else (2048, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "flops_per_s": 2.0 * n ** 3 * iters / seconds}


METHOD_ORDER = {"dssm": 0, "samples": 1, "tta": 2, "baseline": 3, "naive": 4}
BENCH_SAMPLES = 4  # Markov samples per slice of the "samples" method


def method_label(row: dict, with_k: bool = False) -> str:
    """How the tables name a result row's method."""
    k = f" K={row['steps']}" if with_k else ""
    return {"dssm": f"DSSM{k}", "samples": f"DSSM{k}, {row.get('samples', BENCH_SAMPLES)} samples",
            "tta": f"DSSM{k} + TTA", "baseline": "baseline",
            "naive": f"naive {row['steps']}" + ("" if with_k else "-step DDPM")}[row["method"]]


def _worker(spec: dict) -> dict:
    """One case on one device, in this (fresh) process: each method of ``spec["methods"]`` in turn, and
    optionally the batched throughput."""
    if not _have_simpleitk():
        _install_sitk_shim()
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    out = {"results": []}
    if spec.get("case_name"):
        case = load_cases(Path(spec["cases_npz"]))[spec["case_name"]]
        case["name"], case["path"] = spec["case_name"], spec.get("path")
        for method, model in spec["methods"]:
            out["results"].extend(_measure(spec, case, method, model))
    if spec.get("throughput"):
        out.update(_throughput(spec["throughput"], spec))
    return out


def _measure(spec: dict, case: dict, method: str, model: str) -> List[dict]:
    import torch

    from .bundle import resolve_model
    from .imageio import write_image_atomically
    from .inference import Segmenter, Timings

    import SimpleITK as sitk

    io = bool(spec["io"] and _have_simpleitk() and case.get("path"))
    rss_start = _rss_mib()
    segmenter = Segmenter(resolve_model(model), device=spec["device"], batch_size=spec["batch_size"],
                          tta=(method == "tta"), samples=BENCH_SAMPLES if method == "samples" else 1)
    device = segmenter.device
    cuda = device.type == "cuda"
    dssm_network = _inference_network(segmenter)
    if method == "naive":
        segmenter.network = NaiveDiffusion(dssm_network, spec["naive_steps"])
    rss_loaded = _rss_mib()

    def load_image():
        if io:
            from .imageio import read_image

            return read_image(Path(case["path"]))
        if _have_simpleitk():
            image = sitk.GetImageFromArray(np.ascontiguousarray(case["array"]), isVector=bool(case.get("vector")))
            image.SetSpacing([float(v) for v in case["spacing"]])
            image.SetOrigin([float(v) for v in case["origin"]])
            image.SetDirection([float(v) for v in case["direction"]])
            return image
        return ArrayImage(case["array"], case["spacing"], case["origin"], case["direction"], bool(case.get("vector")))

    gt = np.asarray(case["gt"]) if case.get("gt") is not None else None
    out_dir = Path(tempfile.mkdtemp(prefix="dssm-bench-"))
    out_path = out_dir / ("mask.png" if str(case.get("path") or "").endswith(".png") else "mask.nii.gz")
    clock = StageClock(device)

    def one_run(steps: int, record: bool) -> dict:
        timings = Timings()
        clock.stages = {}
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        image = load_image()
        t_read = time.perf_counter() - t0
        labels = segmenter.segment(image, steps=steps, seed=0, timings=timings, name=case["name"])
        t1 = time.perf_counter()
        if io:
            write_image_atomically(labels, out_path)
        t_write = time.perf_counter() - t1
        total = time.perf_counter() - t0
        st = timings.stages
        network = st.get("network", 0.0)
        stages = {}
        if io:
            stages["read"] = t_read
        stages["preprocess"] = st.get("preprocess", 0.0) + st.get("resample in", 0.0)
        stages.update(clock.stages)
        stages["network other"] = max(0.0, network - sum(clock.stages.values()))
        stages["resample back"] = st.get("resample out", 0.0)
        stages["postprocess"] = st.get("postprocess", 0.0)
        if io:
            stages["write"] = t_write
        result = {"total": total, "network": network, "stages": stages}
        if record:
            pred = labels.array if isinstance(labels, ArrayImage) else sitk.GetArrayFromImage(labels)
            result["dice"] = _dice(np.asarray(pred), gt)
        return result

    configs = ([int(k) for k in spec["steps"]] if method == "dssm"
               else [segmenter.bundle.default_steps] if method in ("tta", "samples") else [0])
    slices = segmenter_slices(case)
    repeats = max(1, min(spec["repeats"], 3)) if method == "naive" else spec["repeats"]
    runs = {k: [] for k in configs}
    peak_rss = {k: 0.0 for k in configs}
    peak_gpu = {k: 0.0 for k in configs}
    reserved_gpu = {k: 0.0 for k in configs}
    cold = {}
    can_reset = True
    clock.instrument(segmenter.network if method == "naive" else dssm_network)
    try:
        # one warm-up run per configuration (the first one is the process's cold start); the naive chain is
        # warmed up with a 2-step chain, which runs the same kernels
        for k in configs:
            if method == "naive":
                segmenter.network.steps = 2
                one_run(0, record=False)
                segmenter.network.steps = spec["naive_steps"]
                cold[k] = None
            else:
                cold[k] = one_run(k, record=False)["total"]
        # then the timed runs, round-robin over the configurations, so that a slow spell of the machine (other
        # jobs, frequency changes) spreads over every K instead of biasing the ratios between them
        for r in range(repeats):
            for k in configs:
                can_reset = _reset_peak_rss() and can_reset
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                runs[k].append(one_run(k, record=(r == 0)))
                peak_rss[k] = max(peak_rss[k], _peak_rss_mib())
                if cuda:
                    peak_gpu[k] = max(peak_gpu[k], torch.cuda.max_memory_allocated() / MIB)
                    reserved_gpu[k] = max(reserved_gpu[k], torch.cuda.max_memory_reserved() / MIB)
    finally:
        clock.uninstrument()
    results = []
    for k in configs:
        kruns = runs[k]
        totals = [r["total"] for r in kruns]
        names = list(kruns[-1]["stages"])
        entry = {
            "device": str(device), "case": case["name"], "method": method, "model": model,
            "steps": spec["naive_steps"] if method == "naive" else k, "samples": segmenter.samples_at(k),
            "slices": slices,
            "time_s": _summary(totals), "network_s": _summary([r["network"] for r in kruns]),
            "cold_s": cold[k], "stages_s": {n: statistics.median(r["stages"].get(n, 0.0) for r in kruns) for n in names},
            "slices_per_s": slices / statistics.median(totals),
            "peak_rss_mib": peak_rss[k] if can_reset else _peak_rss_mib(), "peak_rss_is_per_config": can_reset,
            "rss_before_mib": rss_start, "rss_model_loaded_mib": rss_loaded, "dice": kruns[0].get("dice"),
        }
        if cuda:
            entry["peak_gpu_mib"] = peak_gpu[k]
            entry["peak_gpu_reserved_mib"] = reserved_gpu[k]
        results.append(entry)
    # FLOPs per slice, on the first network input slice of this case (with TTA: every pass, at its zoom)
    image = load_image()
    passes = segmenter.passes()
    inputs = {zoom: _network_input(segmenter, image, zoom) for zoom, _ in passes}  # every pass list has zoom 1
    x = inputs[1.0]
    net = _inference_network(segmenter)
    with torch.inference_mode(), _autocast(device):
        for entry in results:
            gen = torch.Generator(device=device).manual_seed(0)
            entry["flops_per_slice"] = sum(
                _flops_per_slice(lambda t: net(t, steps=entry["steps"], generator=gen, samples=entry["samples"]),
                                 inputs[zoom])
                for zoom, _ in passes)
            entry["network_input_hw"] = list(x.shape[-2:])
    del segmenter, net, dssm_network
    return results


def _inference_network(segmenter):
    """The network the Segmenter actually runs (older Segmenters have no ``inference_network``)."""
    return getattr(segmenter, "inference_network", segmenter.network)


def segmenter_slices(case: dict) -> int:
    array = np.asarray(case["array"])
    dim = array.ndim - (1 if case.get("vector") else 0)
    if dim == 2:
        return 1
    spacing_zyx = tuple(reversed(case["spacing"]))
    from .preprocess import slice_axis

    axis = slice_axis(spacing_zyx, array.shape[:3])
    return int(array.shape[axis])


def _autocast(device):
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _network_input(segmenter, image, zoom: float = 1.0):
    """The first slice of this image exactly as the Segmenter feeds it to the network (1, C, H, W), at a
    test-time ``zoom``."""
    import torch

    from . import preprocess as pp
    from .inference import zoomed_sizes
    from .preprocess import prepare_slices

    bundle = segmenter.bundle
    slices, _, target = prepare_slices(image, bundle.preprocessing, bundle.architecture.in_channels)
    size, min_hw = zoomed_sizes(bundle.preprocessing, target, zoom)
    x = pp.resize(torch.from_numpy(slices[:1]).to(segmenter.device), size)
    x, _ = pp.pad_to_multiple(x, bundle.architecture.size_multiple, min_hw)
    return x.contiguous(memory_format=torch.channels_last)


def _throughput(tp: dict, spec: dict) -> dict:
    """Network-only batched throughput on 256x256 slices, and the measured matmul peak of the device."""
    import torch

    from .bundle import resolve_model
    from .inference import Segmenter

    rows, peak = [], None
    batch = int(tp["batch"])
    for model, method, k in tp["configs"]:
        segmenter = Segmenter(resolve_model(model), device=spec["device"], batch_size=batch)
        device = segmenter.device
        if peak is None:
            peak = _matmul_peak(device, small=bool(tp.get("small")))
        net = _inference_network(segmenter)
        cin = segmenter.bundle.architecture.in_channels
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, cin, 256, 256, generator=g).to(device).contiguous(memory_format=torch.channels_last)
        gen = torch.Generator(device=device)

        def run():
            gen.manual_seed(0)
            net(x, steps=k, generator=gen)
            if device.type == "cuda":
                torch.cuda.synchronize()

        with torch.inference_mode(), _autocast(device):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for _ in range(int(tp["warmup"])):
                run()
            times = []
            for _ in range(int(tp["repeats"])):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            fl = _flops_per_slice(lambda t: net(t, steps=k, generator=gen), x[:1])
        med = statistics.median(times)
        row = {"device": str(device), "model": model, "method": method, "steps": k, "batch": batch,
               "hw": [256, 256], "time_s": _summary(times), "slices_per_s": batch / med, "flops_per_slice": fl,
               "achieved_flops_per_s": (fl * batch / med) if fl else None}
        row["fraction_of_peak"] = row["achieved_flops_per_s"] / peak["flops_per_s"] if fl else None
        if device.type == "cuda":
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / MIB
        rows.append(row)
        del segmenter, net
    return {"throughput": rows, "matmul_peak": peak}


# ------------------------------------------------------------------------------------------------------
# The parent: plan, run workers, tables


def _worker_env() -> dict:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run_worker(spec: dict, folder: Path, index: int) -> dict:
    spec_path = folder / f"spec{index}.json"
    out_path = folder / f"out{index}.json"
    spec_path.write_text(json.dumps(spec, default=_json_default))
    cmd = [sys.executable, "-m", "DSSMSegmentLib.benchmark", "--worker", str(spec_path), str(out_path)]
    proc = subprocess.run(cmd, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise DSSMError(f"benchmark worker failed ({spec.get('method')} on {spec.get('case_name')}, "
                        f"{spec.get('device')}):\n{tail}")
    return json.loads(out_path.read_text())


def _json_default(o):
    if isinstance(o, np.ndarray):
        return {"__npy__": True, "dtype": str(o.dtype), "shape": list(o.shape), "data": o.ravel().tolist()}
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def _decode_arrays(o):
    if isinstance(o, dict):
        if o.get("__npy__"):
            return np.asarray(o["data"], dtype=o["dtype"]).reshape(o["shape"])
        return {k: _decode_arrays(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_decode_arrays(v) for v in o]
    return o


def _devices(requested: str) -> List[str]:
    import torch

    if requested in ("auto", "", None):
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [d.strip() for d in requested.split(",") if d.strip()]
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise DSSMError("--devices cuda was requested but no CUDA GPU is available to PyTorch")
    return devices


def _fmt_s(s: dict) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def _fmt_ms(s: dict) -> str:
    return f"{1000 * s['median']:.1f} [{1000 * s['min']:.1f}-{1000 * s['max']:.1f}]"


def markdown_tables(report: dict) -> str:
    lines = []
    results = report["results"]
    for device in report["devices"]:
        rows = [r for r in results if r["device"].startswith(device)]
        if not rows:
            continue
        gpu = device.startswith("cuda")
        fmt = _fmt_ms if gpu else _fmt_s
        unit = "ms" if gpu else "s"
        lines.append(f"### {device}: {report['meta']['device_names'].get(device, device)}, "
                     f"{report['meta']['threads']} CPU threads\n")
        lines.append(f"End to end per case (read -> written mask), median [min-max] over {report['meta']['repeats']} "
                     f"runs after a warm-up; x K=0 = time / time at K=0 of the same case.\n")
        head = (f"| case | method | K | time ({unit}) | x K=0 | network ({unit}) | cold ({unit}) | slices/s | "
                f"peak RAM (MiB) |" + (" peak GPU (MiB) |" if gpu else "") + " GFLOP/slice | Dice |")
        lines.append(head)
        lines.append("|" + "---|" * (head.count("|") - 1))
        for case in report["cases"]:
            crow = [r for r in rows if r["case"] == case]
            k0 = next((r for r in crow if r["method"] == "dssm" and r["steps"] == 0), None)
            for r in sorted(crow, key=lambda r: (METHOD_ORDER[r["method"]], r["steps"])):
                ratio = r["time_s"]["median"] / k0["time_s"]["median"] if k0 else float("nan")
                cold = "-" if r["cold_s"] is None else (f"{r['cold_s']:.3f}" if not gpu else f"{1000 * r['cold_s']:.1f}")
                name = method_label(r)
                k = r["steps"] if r["method"] in ("dssm", "samples", "tta") else "-"
                fl = r.get("flops_per_slice")
                dice = "-" if r.get("dice") is None else f"{r['dice']:.3f}"
                cells = [case, name, str(k), fmt(r["time_s"]), f"{ratio:.2f}", fmt(r["network_s"]),
                         cold, f"{r['slices_per_s']:.1f}",
                         f"{r['peak_rss_mib']:.0f}"]
                if gpu:
                    cells.append(f"{r.get('peak_gpu_mib', float('nan')):.0f}")
                cells += ["-" if fl is None else f"{fl / 1e9:.2f}", dice]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        # stages
        lines.append(f"Per stage, median {unit} (DSSM at the default K, and the references):\n")
        for case in report["cases"]:
            crow = [r for r in rows if r["case"] == case]
            default_k = report["meta"]["default_steps"].get(case, 4)
            picks = [r for r in crow if (r["method"] == "dssm" and r["steps"] in (0, default_k))
                     or r["method"] != "dssm"]
            names = []
            for r in picks:
                for s in r["stages_s"]:
                    if s not in names:
                        names.append(s)
            names = _order_stages(names)
            scale = 1000 if gpu else 1
            head = "| case | method | " + " | ".join(names) + " |"
            lines.append(head)
            lines.append("|" + "---|" * (len(names) + 2))
            for r in picks:
                label = method_label(r, with_k=True)
                cells = []
                for s in names:
                    v = r["stages_s"].get(s)
                    cells.append("-" if v is None else (f"{v * scale:.1f}" if gpu else f"{v:.3f}"))
                lines.append(f"| {case} | {label} | " + " | ".join(cells) + " |")
            lines.append("")
    if report.get("throughput"):
        lines.append("Batched network-only throughput (256x256 slices):\n")
        lines.append("| device | model | method | K | batch | time per batch (s) | slices/s | GFLOP/slice | "
                     "achieved TFLOP/s | of measured matmul peak |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in report["throughput"]:
            ach = r.get("achieved_flops_per_s")
            frac = r.get("fraction_of_peak")
            lines.append(f"| {r['device']} | {r['model']} | {r['method']} | {r['steps']} | {r['batch']} | "
                         f"{_fmt_s(r['time_s'])} | {r['slices_per_s']:.1f} | "
                         f"{(r['flops_per_slice'] or 0) / 1e9:.2f} | {'-' if ach is None else f'{ach / 1e12:.3f}'} | "
                         f"{'-' if frac is None else f'{100 * frac:.1f}%'} |")
        for dev, peak in report.get("matmul_peak", {}).items():
            if peak:
                lines.append(f"\nMeasured matmul peak on {dev}: {peak['flops_per_s'] / 1e12:.3f} TFLOP/s "
                             f"({peak['dtype']}, {peak['n']}^3).")
        lines.append("")
    if report.get("targets"):
        lines.append("Targets (issue 5):\n")
        lines.append("| device | target | measured | met |")
        lines.append("|---|---|---|---|")
        for t in report["targets"]:
            lines.append(f"| {t['device']} | {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def _order_stages(names: List[str]) -> List[str]:
    order = ["read", "preprocess", "semantic pass", "first prediction + encode"]
    steps = sorted((n for n in names if n.startswith("markov step")), key=lambda n: int(n.split()[-1]))
    tail = ["naive DDPM steps", "decode", "bayesian head", "head", "network other", "resample back", "postprocess", "write"]
    known = order + steps + tail
    return [n for n in known if n in names] + [n for n in names if n not in known]


def _targets(report: dict) -> List[dict]:
    out = []
    for device in report["devices"]:
        rows = [r for r in report["results"] if r["device"].startswith(device) and r["method"] == "dssm"]
        gpu = device.startswith("cuda")
        for case in report["cases"]:
            k = report["meta"]["default_steps"].get(case, 4)
            r0 = next((r for r in rows if r["case"] == case and r["steps"] == 0), None)
            rk = next((r for r in rows if r["case"] == case and r["steps"] == k), None)
            if r0 and rk:
                ratio = rk["time_s"]["median"] / r0["time_s"]["median"]
                out.append({"device": device, "target": f"{case}: time at K={k} <= 1.5x time at K=0",
                            "measured": f"{ratio:.2f}x", "met": ratio <= 1.5})
        acdc = next((r for r in rows if r["case"] == "acdc" and r["steps"] == report["meta"]["default_steps"].get("acdc", 4)), None)
        xray = next((r for r in rows if r["case"] == "xray512" and r["steps"] == report["meta"]["default_steps"].get("xray512", 4)), None)
        if report["meta"].get("quick"):
            continue  # --quick runs a crop of the ACDC volume: no absolute targets
        if not gpu:
            if acdc:
                out.append({"device": device, "target": "ACDC volume end to end <= 3 s",
                            "measured": f"{acdc['time_s']['median']:.3f} s", "met": acdc["time_s"]["median"] <= 3.0})
            if xray:
                out.append({"device": device, "target": "512x512 X-ray end to end <= 1 s",
                            "measured": f"{xray['time_s']['median']:.3f} s", "met": xray["time_s"]["median"] <= 1.0})
            peak = max((r["peak_rss_mib"] for r in report["results"] if r["device"].startswith(device)), default=None)
            if peak is not None:
                out.append({"device": device, "target": "peak RAM < 1.5 GB (any case, K, or reference)",
                            "measured": f"{peak:.0f} MiB", "met": peak * MIB < 1.5e9})
        else:
            if acdc:
                net = acdc["network_s"]["median"]
                out.append({"device": device, "target": "ACDC volume, model part <= 15 ms",
                            "measured": f"{1000 * net:.1f} ms", "met": net <= 0.015})
            tp = [t for t in report.get("throughput", []) if t["device"].startswith(device) and t["method"] == "dssm"]
            best = max((t["slices_per_s"] for t in tp if t["steps"] == report["meta"]["default_steps"].get("acdc", 4)),
                       default=None)
            if best is not None:
                out.append({"device": device, "target": ">= 2000 slices/s batched (default K)",
                            "measured": f"{best:.0f} slices/s", "met": best >= 2000})
            peak = max((r.get("peak_gpu_mib", 0) for r in report["results"] if r["device"].startswith(device)),
                       default=None)
            if peak is not None:
                out.append({"device": device, "target": "< 2 GB GPU memory (per case)",
                            "measured": f"{peak:.0f} MiB", "met": peak * MIB < 2e9})
    return out


def benchmark_command(args) -> int:
    import torch

    from .bundle import resolve_model

    quick = bool(getattr(args, "quick", False))
    repeats = int(args.repeats) if args.repeats else 5
    if quick:
        repeats = min(repeats, 2)
    steps = [int(s) for s in str(args.steps or DEFAULT_STEPS).split(",") if s.strip() != ""]
    if any(s < 0 for s in steps):
        raise DSSMError("--steps must be 0 or more")
    if 0 not in steps:
        steps = [0] + steps  # the ratios are to K = 0
    devices = _devices(getattr(args, "devices", "auto"))
    threads = getattr(args, "threads", None) or torch.get_num_threads()
    io = not getattr(args, "no_io", False)
    batch_size = int(getattr(args, "batch_size", None) or 16)
    naive_steps = int(getattr(args, "naive_steps", None) or NAIVE_STEPS)
    model = args.model or "heart-cine-mri"
    heart = resolve_model(model)
    try:
        baseline_name = resolve_model(model + "-baseline").name
    except DSSMError:
        baseline_name = None
    work = Path(tempfile.mkdtemp(prefix="dssm-benchmark-"))
    cases_npz = work / "cases.npz"
    cases_file = getattr(args, "cases", None)
    if cases_file:
        cases = load_cases(Path(cases_file))
        wanted = {c["name"] for c in _case_specs(model, quick)}
        cases = {k: v for k, v in cases.items() if k in wanted}
        io = False
    else:
        if not _have_simpleitk():
            raise DSSMError("SimpleITK is not installed: pass --cases FILE.npz (written with --save-cases on a "
                            "host that has SimpleITK and the shared data)")
        cases = prepare_cases(model, quick, work / "cases")
    save_cases(cases, cases_npz)
    if getattr(args, "save_cases", None):
        save_cases(cases, Path(args.save_cases))
        print(f"benchmark cases written to {args.save_cases}; run them where SimpleITK or the data are missing "
              f"with: dssm benchmark --cases {args.save_cases}", file=sys.stderr)
        return 0
    specs = {c["name"]: c for c in _case_specs(model, quick)}
    names = [n for n in specs if n in cases]
    if not names:
        raise DSSMError("no benchmark case could be prepared")
    default_steps = {n: resolve_model(specs[n]["model"]).default_steps for n in names}
    t_start = time.perf_counter()
    report = {"meta": {}, "devices": devices, "cases": names, "results": [], "throughput": [], "matmul_peak": {}}
    index = 0
    for device in devices:
        gpu = device.startswith("cuda")
        k = heart.default_steps
        configs = [[model, "dssm", 0], [model, "dssm", k]]
        if baseline_name:
            configs.append([baseline_name, "baseline", 0])
        throughput = {"configs": configs, "warmup": 3 if gpu else 1, "small": quick,
                      "batch": 256 if gpu else (2 if quick else 16), "repeats": 10 if gpu else (1 if quick else 3)}
        for n, name in enumerate(names):
            case_model = specs[name]["model"]
            methods = [("dssm", case_model), ("samples", case_model), ("tta", case_model)]
            base = case_model + "-baseline"
            try:
                resolve_model(base)
                methods.append(("baseline", base))
            except DSSMError:
                pass
            methods.append(("naive", case_model))
            common = {"device": device, "cases_npz": str(cases_npz), "case_name": name,
                      "path": cases[name].get("path") if io else None, "steps": steps, "repeats": repeats,
                      "threads": threads, "io": io, "batch_size": batch_size, "naive_steps": naive_steps}
            # a fresh process per method (per case and method, peak RAM is the process's own); --quick runs
            # them, and the throughput, in one process to stay fast
            groups = [methods] if quick else [[m] for m in methods]
            for group in groups:
                spec = dict(common, methods=group)
                if quick and n == len(names) - 1:
                    spec["throughput"] = throughput
                print(f"[{time.perf_counter() - t_start:6.1f} s] {device} {name} "
                      f"{', '.join(m for m, _ in group)} ...", file=sys.stderr, flush=True)
                out = _run_worker(spec, work, index)
                index += 1
                report["results"].extend(out["results"])
                report["throughput"].extend(out.get("throughput", []))
                if out.get("matmul_peak"):
                    report["matmul_peak"][device] = out["matmul_peak"]
        if not quick:
            print(f"[{time.perf_counter() - t_start:6.1f} s] {device} batched throughput ...", file=sys.stderr,
                  flush=True)
            out = _run_worker({"device": device, "threads": threads, "throughput": throughput}, work, index)
            index += 1
            report["throughput"].extend(out["throughput"])
            report["matmul_peak"][device] = out["matmul_peak"]
    report["meta"] = {
        "command": "dssm " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("dssm") else None,
        "model": model, "baseline": baseline_name, "steps": steps, "repeats": repeats, "quick": quick,
        "threads": threads, "io": io, "batch_size": batch_size, "naive_steps": naive_steps,
        "default_steps": default_steps, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "device_names": {d: (torch.cuda.get_device_name(0) if d.startswith("cuda") else _cpu_name()) for d in devices},
        "seconds": time.perf_counter() - t_start, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    report["targets"] = _targets(report)
    text = markdown_tables(report)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
        print(f"written: {args.output}", file=sys.stderr)
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _worker_main(argv: List[str]) -> int:
    spec = _decode_arrays(json.loads(Path(argv[0]).read_text()))
    out = _worker(spec)
    Path(argv[1]).write_text(json.dumps(out, default=_json_default))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:4]))
    from .cli import main

    sys.exit(main(["benchmark", *sys.argv[1:]]))
