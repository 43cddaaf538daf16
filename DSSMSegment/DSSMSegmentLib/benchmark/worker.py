"""One fresh process per case and method, so that each reports its own peak RAM: the parent writes a spec
(JSON) and runs ``python -m DSSMSegmentLib.benchmark --worker SPEC OUT``; the worker measures and writes its
results (JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np

from ..errors import DSSMError
from .arrays import have_simpleitk, install_sitk_shim
from .cases import load_cases
from .measurement import measure_case, measure_throughput


# ------------------------------------------------------------------------------------------------------
# The parent: run a spec in a fresh process


def _worker_env() -> dict:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_worker(spec: dict, folder: Path, index: int) -> dict:
    spec_path = folder / f"spec{index}.json"
    out_path = folder / f"out{index}.json"
    spec_path.write_text(json.dumps(spec, default=json_default))
    cmd = [sys.executable, "-m", "DSSMSegmentLib.benchmark", "--worker", str(spec_path), str(out_path)]
    proc = subprocess.run(cmd, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise DSSMError(f"benchmark worker failed ({spec.get('method')} on {spec.get('case_name')}, "
                        f"{spec.get('device')}):\n{tail}")
    return json.loads(out_path.read_text())


def json_default(o):
    if isinstance(o, np.ndarray):
        return {"__npy__": True, "dtype": str(o.dtype), "shape": list(o.shape), "data": o.ravel().tolist()}
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def decode_arrays(o):
    if isinstance(o, dict):
        if o.get("__npy__"):
            return np.asarray(o["data"], dtype=o["dtype"]).reshape(o["shape"])
        return {k: decode_arrays(v) for k, v in o.items()}
    if isinstance(o, list):
        return [decode_arrays(v) for v in o]
    return o


# ------------------------------------------------------------------------------------------------------
# The worker: measure a spec in this (fresh) process


def _work(spec: dict) -> dict:
    """One case on one device, in this (fresh) process: each method of ``spec["methods"]`` in turn, and
    optionally the batched throughput."""
    if not have_simpleitk():
        install_sitk_shim()
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    out = {"results": []}
    if spec.get("case_name"):
        case = load_cases(Path(spec["cases_npz"]))[spec["case_name"]]
        case["name"], case["path"] = spec["case_name"], spec.get("path")
        for method, model in spec["methods"]:
            out["results"].extend(measure_case(spec, case, method, model))
    if spec.get("throughput"):
        out.update(measure_throughput(spec["throughput"], spec))
    return out


def worker_main(argv: List[str]) -> int:
    spec = decode_arrays(json.loads(Path(argv[0]).read_text()))
    out = _work(spec)
    Path(argv[1]).write_text(json.dumps(out, default=json_default))
    return 0

