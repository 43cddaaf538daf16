"""`dssm benchmark` and the inference speed-ups it measures (issue 5).

* ``dssm benchmark --quick`` runs end to end on CPU and its JSON holds every stage, every K, both references,
  the uncertainty map's run and sane positive numbers (never a timed assertion: speed is reported, not tested);
* folding BatchNorm into the convolutions (what the Segmenter does after loading) gives the same logits as the
  unfolded network on a real ACDC slice, and leaves the bundle's state dict alone;
* the fast inference path of ``DSSM.forward`` computes what the public pieces (``denoise``, ``posterior``, used
  by training) compute;
* the naive-diffusion reference (100 DDPM steps from pure noise) runs and is deterministic.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import describe, run_dssm
from DSSMSegmentLib import preprocess as pp

K_VALUES = [0, 1, 2, 4, 8, 16]


# ---------------------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("benchmark")
    out = folder / "bench.json"
    scratch = folder / "tmp"  # the run's own temporary folder, to see what it leaves behind
    scratch.mkdir()
    proc = run_dssm(["benchmark", "--quick", "--devices", "cpu", "-o", out], cwd=folder, timeout=600,
                    env={"TMPDIR": str(scratch)})
    assert proc.returncode == 0, describe(proc)
    assert out.is_file(), describe(proc)
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout, sorted(p.name for p in scratch.iterdir())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x) and x > 0


def test_quick_benchmark_has_every_k_and_both_references(quick_report) -> None:
    report, _, _ = quick_report
    rows = report["results"]
    assert report["devices"] == ["cpu"]
    dssm = {r["steps"]: r for r in rows if r["method"] == "dssm" and r["case"] == "acdc"}
    assert sorted(dssm) == K_VALUES
    baseline = [r for r in rows if r["method"] == "baseline"]
    naive = [r for r in rows if r["method"] == "naive"]
    assert len(baseline) == 1 and baseline[0]["model"].endswith("-baseline")
    assert len(naive) == 1 and naive[0]["steps"] == 100
    # the references are what they claim: the naive chain does 100 denoiser passes, the baseline none
    step = dssm[2]["flops_per_slice"] - dssm[1]["flops_per_slice"]
    assert naive[0]["flops_per_slice"] > dssm[1]["flops_per_slice"] + 90 * step > 3 * dssm[16]["flops_per_slice"]
    assert baseline[0]["flops_per_slice"] < dssm[0]["flops_per_slice"]
    assert [dssm[k]["flops_per_slice"] for k in K_VALUES] == sorted(dssm[k]["flops_per_slice"] for k in K_VALUES)
    # DSSM with test-time augmentation at the model's default K: the heart model's four flips at zoom 1 and at
    # zoom 1.2 (1.44x the pixels), so between 4 + 4 and 4 + 4 * 1.6 times the plain pass
    tta = [r for r in rows if r["method"] == "tta"]
    assert len(tta) == 1 and tta[0]["steps"] == 4 == report["meta"]["default_steps"]["acdc"]
    assert 8 * dssm[4]["flops_per_slice"] < tta[0]["flops_per_slice"] < 10.4 * dssm[4]["flops_per_slice"]
    # 4 Markov samples at the default K: the semantic pass and the head once, the chain (what K = 4 adds to
    # K = 0) four times
    samples = [r for r in rows if r["method"] == "samples"]
    assert len(samples) == 1 and samples[0]["steps"] == 4 and samples[0]["samples"] == 4
    chain = dssm[4]["flops_per_slice"] - dssm[0]["flops_per_slice"]
    assert samples[0]["flops_per_slice"] == pytest.approx(dssm[4]["flops_per_slice"] + 3 * chain, rel=0.02)
    # the uncertainty map (issue 14) at the default K: the model's 2 chains per slice, so one chain more
    unc = [r for r in rows if r["method"] == "uncertainty"]
    assert len(unc) == 1 and unc[0]["steps"] == 4 and unc[0]["samples"] == 2
    assert unc[0]["flops_per_slice"] == pytest.approx(dssm[4]["flops_per_slice"] + chain, rel=0.02)
    assert [t for t in report["targets"] if "uncertainty map" in t["target"]]


def test_quick_benchmark_deletes_its_temporary_folders(quick_report) -> None:
    """The benchmark writes cases, worker specs and masks to temporary folders; none may outlive the run. (torch's
    own compile cache, ``torchinductor_USER``, is meant to stay: later runs reuse it.)"""
    _, _, in_tmpdir = quick_report
    left_behind = [name for name in in_tmpdir if not name.startswith("torchinductor_")]
    assert left_behind == [], f"dssm benchmark left these in its TMPDIR: {left_behind}"


def test_quick_benchmark_times_every_stage(quick_report) -> None:
    report, _, _ = quick_report
    for r in report["results"]:
        stages = r["stages_s"]
        for name in ("read", "preprocess", "semantic pass", "resample back", "postprocess", "write"):
            assert name in stages, (r["method"], r["steps"], sorted(stages))
        assert ("uncertainty" in stages) == (r["method"] == "uncertainty")
        if r["method"] == "uncertainty":  # the map's own work, and the write of its file
            assert _positive(stages["uncertainty"]) and _positive(stages["write"])
        if r["method"] in ("dssm", "samples", "tta", "uncertainty"):
            assert "bayesian head" in stages and "first prediction + encode" in stages
            steps = sorted(int(s.split()[-1]) for s in stages if s.startswith("markov step"))
            assert steps == list(range(1, r["steps"] + 1)), (r["steps"], steps)
            if r["steps"] > 0:
                assert "decode" in stages
                assert all(_positive(stages[f"markov step {i}"]) for i in steps)
        elif r["method"] == "naive":
            assert _positive(stages["naive DDPM steps"]) and "bayesian head" in stages
        else:
            assert "head" in stages
        assert all(v >= 0 for v in stages.values())
        assert _positive(stages["semantic pass"])
        # the stages account for the run (the remainder is Python glue between them)
        assert sum(stages.values()) <= r["time_s"]["max"] * 1.05 + 0.01


def test_quick_benchmark_numbers_are_sane(quick_report) -> None:
    report, stdout, _ = quick_report
    for r in report["results"]:
        t = r["time_s"]
        assert _positive(t["median"]) and t["min"] <= t["median"] <= t["max"]
        assert 0 < r["network_s"]["median"] <= t["max"]
        assert _positive(r["slices_per_s"]) and r["slices"] >= 1
        assert _positive(r["peak_rss_mib"]) and 100 < r["peak_rss_mib"] < 64 * 1024
        assert _positive(r["flops_per_slice"])
        assert r["dice"] is not None and 0.5 < r["dice"] <= 1.0, r  # every method still segments the heart
    assert report["throughput"] and all(_positive(t["slices_per_s"]) for t in report["throughput"])
    assert _positive(report["matmul_peak"]["cpu"]["flops_per_s"])
    assert report["meta"]["quick"] is True and report["meta"]["naive_steps"] == 100
    # the Markdown tables went to stdout
    assert "| acdc | DSSM | 4 |" in stdout and "naive 100-step DDPM" in stdout and "baseline" in stdout
    assert "| acdc | DSSM + TTA | 4 |" in stdout and "| acdc | DSSM, 4 samples | 4 |" in stdout
    assert "| acdc | DSSM + uncertainty map, 2 chains | 4 |" in stdout


# ---------------------------------------------------------------------------------------------------------
# BatchNorm folding and the fast inference path


@pytest.fixture(scope="module")
def acdc_slices(acdc_p011, heart_bundle):
    """The 3 cropped patient011 slices, preprocessed as the Segmenter does, channels-last."""
    from DSSMSegmentLib.preprocess import prepare_slices

    image, _ = acdc_p011
    slices, _, target = prepare_slices(image, heart_bundle.preprocessing, heart_bundle.architecture.in_channels)
    batch = pp.resize(torch.from_numpy(slices), target)
    batch, _ = pp.pad_to_multiple(batch, heart_bundle.architecture.size_multiple)
    return batch


@pytest.fixture(scope="module")
def plain_network(heart_bundle):
    return heart_bundle.load_network(torch.device("cpu"))


def test_folded_batchnorm_gives_the_same_logits(plain_network, acdc_slices) -> None:
    from DSSMSegmentLib.networks import fold_batchnorm, optimize_for_inference

    folded = fold_batchnorm(copy.deepcopy(plain_network))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    fast = optimize_for_inference(copy.deepcopy(plain_network))
    x = acdc_slices[1:2]  # one real mid-ventricular slice
    with torch.inference_mode():
        f_plain, q_plain = plain_network.semantic(x)
        f_fold, q_fold = folded.semantic(x)
        assert torch.allclose(f_plain, f_fold, atol=1e-4, rtol=1e-4), float((f_plain - f_fold).abs().max())
        assert torch.allclose(q_plain, q_fold, atol=1e-4, rtol=1e-4), float((q_plain - q_fold).abs().max())
        for steps in (0, 4):
            ref = plain_network(x, steps=steps, generator=torch.Generator().manual_seed(0))
            for net, inp in ((folded, x), (fast, x.contiguous(memory_format=torch.channels_last))):
                out = net(inp, steps=steps, generator=torch.Generator().manual_seed(0))
                assert out.shape == ref.shape
                err = float((out - ref).abs().max())
                assert err < 1e-3, f"K={steps}: max logit difference {err} (logits span {float(ref.abs().max()):.1f})"
                assert torch.equal(out.argmax(1), ref.argmax(1))


def test_folding_never_touches_the_bundle(heart_bundle, plain_network) -> None:
    from safetensors.torch import load_file

    from DSSMSegmentLib.networks import fold_batchnorm

    keys = set(load_file(str(heart_bundle.path / "model.safetensors")))
    assert set(plain_network.state_dict()) == keys
    assert set(heart_bundle.load_network(torch.device("cpu")).state_dict()) == keys  # fresh loads stay unfolded
    with pytest.raises(ValueError):
        fold_batchnorm(copy.deepcopy(plain_network).train())


def test_fast_forward_matches_the_public_pieces(plain_network, acdc_slices) -> None:
    """DSSM.forward (timestep embedding once, FFM semantic half precomputed, fused Bayesian head) must compute
    what ``denoise`` and ``posterior`` - the pieces training uses - compute."""
    from DSSMSegmentLib.sampler import MarkovSampler

    net = plain_network
    x = acdc_slices
    with torch.inference_mode():
        for steps in (0, 2):
            fast = net(x, steps=steps, generator=torch.Generator().manual_seed(3))
            features, quarter = net.semantic(x)
            first = net.first_head(torch.nn.functional.leaky_relu(features, 0.01)).float()
            z_first = net.autoencoder.encode(torch.softmax(first, dim=1))
            if steps == 0:
                ref = net.posterior(features, quarter, z_first, torch.log_softmax(first, dim=1))
            else:
                sampler = MarkovSampler(net.schedule, steps, net.cfg.markov_start)
                z_hat = sampler.run(lambda z, t: net.denoise(quarter, z, t), z_first,
                                    torch.Generator().manual_seed(3))
                prior = torch.log_softmax(net.autoencoder.decode(z_hat).float(), dim=1)
                ref = net.posterior(features, quarter, z_hat, prior)
            err = float((fast - ref).abs().max())
            assert err < 1e-3, f"K={steps}: {err}"
            assert (fast.argmax(1) == ref.argmax(1)).float().mean() > 0.9999


def test_naive_diffusion_reference_runs(plain_network, acdc_slices) -> None:
    from DSSMSegmentLib.benchmark.references import naive_diffusion_logits

    x = acdc_slices[1:2, :, 48:176, 48:176].contiguous()  # a 128x128 crop around the heart: 100 steps stay cheap
    ticks = []
    with torch.inference_mode():
        a = naive_diffusion_logits(plain_network, x, 100, torch.Generator().manual_seed(0),
                                   step_callback=lambda i, n: ticks.append((i, n)))
        b = naive_diffusion_logits(plain_network, x, 100, torch.Generator().manual_seed(0))
        c = naive_diffusion_logits(plain_network, x, 100, torch.Generator().manual_seed(1))
    assert a.shape == (1, plain_network.cfg.num_classes, 128, 128) and torch.isfinite(a).all()
    assert torch.equal(a, b), "seeded: the same noise gives the same result"
    assert not torch.equal(a, c), "it must sample (from pure noise), so another seed changes it"
    assert ticks[0] == (0, 100) and ticks[-1] == (100, 100) and len(ticks) == 101
