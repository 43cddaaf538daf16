"""``dssm train`` under torchrun: 2 CPU processes with DDP (gloo) train one model and write one bundle."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch

from conftest import describe, run_module
from DSSMSegmentLib.bundle import ModelBundle


@pytest.fixture(scope="module")
def ddp_run(prostate_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    proc = run_module(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "-m", "DSSMSegmentLib.cli", "train", "--recipe", "prostate-t2-mri", "--widths", "8,16,32,64",
                       "--iterations", "2", "--batch-size", "2", "--val-every", "1", "--device", "cpu",
                       "--out", "run", "--cache", prostate_cache], cwd=work)
    assert proc.returncode == 0, describe(proc)
    return work / "run", proc


def test_two_processes_write_one_bundle(ddp_run) -> None:
    run, proc = ddp_run
    assert [p.name for p in (run / "bundle").iterdir()] == ["prostate-t2-mri"]
    assert proc.stdout.count("model bundle written") == 1, "only rank 0 writes the bundle"
    assert "Traceback" not in proc.stderr
    folder = run / "bundle" / "prostate-t2-mri"
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert meta["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    ModelBundle(folder).load_network(torch.device("cpu"))


def test_model_json_records_the_global_batch(ddp_run) -> None:
    run, _ = ddp_run
    training = json.loads((run / "bundle" / "prostate-t2-mri" / "model.json").read_text(encoding="utf-8"))["training"]
    assert training["processes"] == 2
    assert training["batch_size"] == 2 * 2, "batch_size is per process times world size"
    assert training["iterations"] == 2


def test_one_log_writer(ddp_run) -> None:
    run, _ = ddp_run
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2], rows  # rank 1 neither validates nor logs
    assert (run / "curves.png").is_file() and (run / "checkpoint.pt").is_file()
