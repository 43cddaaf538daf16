"""Measuring inside a worker process: end-to-end time per case and per stage, peak RAM and GPU memory, FLOPs
per slice, Dice against the case's ground truth, and the batched network-only throughput against a measured
matmul peak."""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import numpy as np

from .arrays import ArrayImage, have_simpleitk
from .cases import segmenter_slices
from .references import NaiveDiffusion
from .stages import StageClock

MIB = 2.0 ** 20
BENCH_SAMPLES = 4  # Markov samples per slice of the "samples" method


# ------------------------------------------------------------------------------------------------------
# Memory: the process's resident set, and its peak


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


# ------------------------------------------------------------------------------------------------------
# Numbers


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


# ------------------------------------------------------------------------------------------------------
# One case, every configuration of one method; and the batched throughput


def measure_case(spec: dict, case: dict, method: str, model: str) -> List[dict]:
    import torch

    from ..bundle import resolve_model
    from ..imageio import write_image_atomically
    from ..inference import Segmenter, Timings
    from ..uncertainty import write_map

    import SimpleITK as sitk

    io = bool(spec["io"] and have_simpleitk() and case.get("path"))
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
            from ..imageio import read_image

            return read_image(Path(case["path"]))
        if have_simpleitk():
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
        # with the uncertainty map, the whole work of dssm segment --uncertainty: its chains, the map, its file
        result = segmenter.run(image, steps=steps, seed=0, timings=timings, name=case["name"],
                               uncertainty=(method == "uncertainty"))
        labels = result.labels
        t1 = time.perf_counter()
        if io:
            write_image_atomically(labels, out_path)
            if method == "uncertainty":
                write_map(result, image, out_dir / out_path.name.replace("mask", "uncertainty"))
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
        if method == "uncertainty":
            stages["uncertainty"] = st.get("uncertainty", 0.0)
        stages["postprocess"] = st.get("postprocess", 0.0)
        if io:
            stages["write"] = t_write
        result = {"total": total, "network": network, "stages": stages}
        if record:
            pred = labels.array if isinstance(labels, ArrayImage) else sitk.GetArrayFromImage(labels)
            result["dice"] = _dice(np.asarray(pred), gt)
        return result

    configs = ([int(k) for k in spec["steps"]] if method == "dssm"
               else [segmenter.bundle.default_steps] if method in ("tta", "samples", "uncertainty") else [0])
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
        shutil.rmtree(out_dir, ignore_errors=True)
    results = []
    for k in configs:
        kruns = runs[k]
        totals = [r["total"] for r in kruns]
        names = list(kruns[-1]["stages"])
        entry = {
            "device": str(device), "case": case["name"], "method": method, "model": model,
            "steps": spec["naive_steps"] if method == "naive" else k,
            "samples": segmenter.uncertainty_chains(k) if method == "uncertainty" else segmenter.samples_at(k),
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


def _autocast(device):
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _network_input(segmenter, image, zoom: float = 1.0):
    """The first slice of this image exactly as the Segmenter feeds it to the network (1, C, H, W), at a
    test-time ``zoom``."""
    import torch

    from .. import preprocess as pp
    from ..inference import zoomed_sizes
    from ..preprocess import prepare_slices

    bundle = segmenter.bundle
    slices, _, target = prepare_slices(image, bundle.preprocessing, bundle.architecture.in_channels)
    size, min_hw = zoomed_sizes(bundle.preprocessing, target, zoom)
    x = pp.resize(torch.from_numpy(slices[:1]).to(segmenter.device), size)
    x, _ = pp.pad_to_multiple(x, bundle.architecture.size_multiple, min_hw)
    return x.contiguous(memory_format=torch.channels_last)


def measure_throughput(tp: dict, spec: dict) -> dict:
    """Network-only batched throughput on 256x256 slices, and the measured matmul peak of the device."""
    import torch

    from ..bundle import resolve_model
    from ..inference import Segmenter

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
