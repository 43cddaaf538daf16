"""``dssm benchmark`` itself: plan the runs (devices, cases, methods, K values), hand each case and method to a
fresh worker process, gather the results into one report, print its Markdown tables and write its JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from ..errors import DSSMError
from .arrays import have_simpleitk
from .cases import case_specs, load_cases, prepare_cases, save_cases
from .references import NAIVE_STEPS
from .report import markdown_tables, targets
from .worker import json_default, run_worker

DEFAULT_STEPS = "0,1,2,4,8,16"


def benchmark_command(args) -> int:
    # the prepared cases and the workers' files live in one temporary folder, removed however the run ends
    with tempfile.TemporaryDirectory(prefix="dssm-benchmark-") as work:
        return _benchmark(args, Path(work))


def _benchmark(args, work: Path) -> int:
    import torch

    from ..bundle import resolve_model

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
    cases_npz = work / "cases.npz"
    cases_file = getattr(args, "cases", None)
    if cases_file:
        cases = load_cases(Path(cases_file))
        wanted = {c["name"] for c in case_specs(model, quick)}
        cases = {k: v for k, v in cases.items() if k in wanted}
        io = False
    else:
        if not have_simpleitk():
            raise DSSMError("SimpleITK is not installed: pass --cases FILE.npz (written with --save-cases on a "
                            "host that has SimpleITK and the shared data)")
        cases = prepare_cases(model, quick, work / "cases")
    save_cases(cases, cases_npz)
    if getattr(args, "save_cases", None):
        save_cases(cases, Path(args.save_cases))
        print(f"benchmark cases written to {args.save_cases}; run them where SimpleITK or the data are missing "
              f"with: dssm benchmark --cases {args.save_cases}", file=sys.stderr)
        return 0
    specs = {c["name"]: c for c in case_specs(model, quick)}
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
            methods = [("dssm", case_model), ("samples", case_model), ("tta", case_model),
                       ("uncertainty", case_model)]
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
                out = run_worker(spec, work, index)
                index += 1
                report["results"].extend(out["results"])
                report["throughput"].extend(out.get("throughput", []))
                if out.get("matmul_peak"):
                    report["matmul_peak"][device] = out["matmul_peak"]
        if not quick:
            print(f"[{time.perf_counter() - t_start:6.1f} s] {device} batched throughput ...", file=sys.stderr,
                  flush=True)
            out = run_worker({"device": device, "threads": threads, "throughput": throughput}, work, index)
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
    report["targets"] = targets(report)
    text = markdown_tables(report)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1, default=json_default) + "\n")
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


def _devices(requested: str) -> List[str]:
    import torch

    if requested in ("auto", "", None):
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [d.strip() for d in requested.split(",") if d.strip()]
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise DSSMError("--devices cuda was requested but no CUDA GPU is available to PyTorch")
    return devices

