"""The stable Markov sampler: schedule, DDIM step, chain, determinism, and K = 0 / 1 / 8 on the real heart model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import LV, MYO, RV, dice
from DSSMSegmentLib import preprocess as pp
from DSSMSegmentLib.sampler import CosineSchedule, MarkovSampler

# ---------------------------------------------------------------------------------------------------------
# Schedule and timestep grid (pure)


def test_cosine_schedule_is_a_valid_noise_schedule() -> None:
    s = CosineSchedule(1000)
    a = s.alphas_cumprod
    assert a.shape == (1001,)
    assert float(a[0]) == 1.0  # t = 0 is the clean latent
    assert torch.all(a[1:] < a[:-1] + 1e-7), "alpha_bar must decrease with t"
    assert float(a[-1]) < 1e-3 and float(a[-1]) > 0  # almost pure noise at T, never exactly zero
    # Nichol & Dhariwal's closed form at mid-schedule
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(a[500]) == pytest.approx(f(500) / f(0), rel=1e-5)


@pytest.mark.parametrize("start", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 16, 50, 200])
def test_timestep_grid_decreases_and_ends_at_zero(steps: int, start: float) -> None:
    sampler = MarkovSampler(CosineSchedule(1000), steps, start=start)
    ts, nxt = sampler.timesteps, sampler.next_timesteps
    assert len(ts) == len(nxt) == steps
    assert ts[0] == round(start * 1000)
    assert all(a > b for a, b in zip(ts, ts[1:])), f"not strictly decreasing: {ts}"
    assert all(t >= 1 for t in ts), "the chain must never denoise from t = 0"
    assert nxt == ts[1:] + [0], "each step must go to the next grid point, and the last one to t = 0"


def test_zero_steps_is_not_a_chain() -> None:
    with pytest.raises(ValueError):
        MarkovSampler(CosineSchedule(1000), 0)


def test_very_many_steps_stay_finite_and_strictly_decreasing() -> None:
    """K beyond the number of distinct timesteps (500 here) is capped there, never a NaN chain."""
    sampler = MarkovSampler(CosineSchedule(1000), 2000, start=0.5)
    assert all(a > b for a, b in zip(sampler.timesteps, sampler.timesteps[1:]))
    assert len(sampler.timesteps) == 500 and sampler.next_timesteps[-1] == 0 and 0 not in sampler.timesteps
    z0 = torch.linspace(-0.9, 0.9, 64).reshape(1, 4, 4, 4)
    out = sampler.run(lambda z, t: (0.5 * z0 + 0.5 * z).clamp(-1, 1), torch.zeros_like(z0),
                      torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------
# DDIM step and chain (pure)


@pytest.mark.parametrize("t,t_next", [(500, 375), (500, 250), (250, 0), (900, 10), (1, 0), (1000, 500)])
def test_ddim_step_with_perfect_x0_returns_renoised_x0(t: int, t_next: int) -> None:
    """With the true z0 as prediction, DDIM (eta = 0) must land exactly on q(z_t_next | z0) with the same noise."""
    schedule = CosineSchedule(1000)
    sampler = MarkovSampler(schedule, 4)
    g = torch.Generator().manual_seed(1)
    z0 = torch.rand(2, 4, 8, 8, generator=g) * 1.2 - 0.6
    eps = torch.randn(2, 4, 8, 8, generator=g) * 0.3
    z_t = schedule.add_noise(z0, eps, torch.full((2,), t))
    out = sampler.step(z0, t, t_next, z_t)
    a_next = float(schedule.alphas_cumprod[t_next])
    expected = (math.sqrt(a_next) * z0 + math.sqrt(1 - a_next) * eps).clamp(-1, 1)
    assert torch.allclose(out, expected, atol=1e-5), float((out - expected).abs().max())
    assert torch.allclose(out, schedule.add_noise(z0, eps, torch.full((2,), t_next)).clamp(-1, 1), atol=1e-5)
    if t_next == 0:
        assert torch.allclose(out, z0, atol=1e-6), "the last step must return the clean prediction"


def test_chain_starts_from_noised_first_prediction_and_fuses_last_predictions() -> None:
    schedule = CosineSchedule(1000)
    sampler = MarkovSampler(schedule, 4, start=0.5, fuse_last=2)
    z_first = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(3)) * 2 - 1
    calls = []

    def denoise(z_t, t_batch):
        calls.append((z_t.clone(), t_batch.clone()))
        return torch.full_like(z_t, float(t_batch[0]) / 1000)  # a distinct "prediction" per step

    out = sampler.run(denoise, z_first, torch.Generator().manual_seed(42))
    # the first z_t is the first prediction's latent noised to t_start with the seeded generator's noise
    noise = torch.randn(z_first.shape, generator=torch.Generator().manual_seed(42))
    expected_start = schedule.add_noise(z_first, noise, torch.full((2,), 500))
    assert torch.allclose(calls[0][0], expected_start, atol=1e-6)
    assert [int(t[0]) for _, t in calls] == sampler.timesteps == [500, 375, 250, 125]
    assert all(int(t.numel()) == 2 for _, t in calls)
    # fused estimate = mean of the last two predictions (t = 250 and 125)
    assert torch.allclose(out, torch.full_like(z_first, (0.250 + 0.125) / 2), atol=1e-6)


def test_chain_with_a_perfect_denoiser_recovers_z0() -> None:
    sampler = MarkovSampler(CosineSchedule(1000), 8)
    z0 = torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    out = sampler.run(lambda z, t: z0, torch.zeros_like(z0), torch.Generator().manual_seed(0))
    assert torch.allclose(out, z0)


# ---------------------------------------------------------------------------------------------------------
# The real heart model (patient011 is in its validation split)


@pytest.fixture(scope="module")
def heart_batch(acdc_p011, heart_bundle):
    """The 3 cropped patient011 slices, preprocessed exactly as Segmenter does (normalise, resample, pad)."""
    from DSSMSegmentLib.preprocess import prepare_slices

    image, _ = acdc_p011
    slices, axis, target = prepare_slices(image, heart_bundle.preprocessing, heart_bundle.architecture.in_channels)
    assert axis == 0  # ACDC: 10 mm between slices, 1.48 mm in-plane
    batch = pp.resize(torch.from_numpy(slices), target)
    batch, _ = pp.pad_to_multiple(batch, heart_bundle.architecture.size_multiple)
    return batch


def _logits(network, batch, steps, seed):
    with torch.inference_mode():
        return network(batch, steps=steps, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def first_logits(heart_segmenter, heart_batch):
    """Memoised first run per (steps, seed), so that each comparison costs one fresh forward pass."""
    cache = {}

    def get(steps, seed):
        if (steps, seed) not in cache:
            cache[steps, seed] = _logits(heart_segmenter.network, heart_batch, steps, seed)
        return cache[steps, seed]

    return get


@pytest.fixture(scope="module")
def first_masks(heart_segmenter, acdc_p011):
    cache = {}

    def get(steps, seed):
        if (steps, seed) not in cache:
            cache[steps, seed] = heart_segmenter.segment(acdc_p011[0], steps=steps, seed=seed)
        return cache[steps, seed]

    return get


def test_same_input_and_seed_give_identical_logits(heart_segmenter, heart_batch, first_logits) -> None:
    a = first_logits(4, 0)
    b = _logits(heart_segmenter.network, heart_batch, 4, 0)  # a fresh run
    assert a.shape[:2] == (3, 4) and torch.isfinite(a).all()
    assert torch.equal(a, b), "the Markov chain must be deterministic for a fixed seed"


def test_seed_drives_the_chain_but_k0_is_seed_independent(first_logits) -> None:
    k4_s0, k4_s1 = first_logits(4, 0), first_logits(4, 1)
    assert not torch.equal(k4_s0, k4_s1), "a different seed must change the chain's noise (seed is unused?)"
    # ... but the chain is stable: the masks hardly move
    agree = (k4_s0.argmax(1) == k4_s1.argmax(1)).float().mean().item()
    assert agree > 0.99, f"masks of two seeds agree on only {agree:.4f} of pixels"
    k0_s0, k0_s1 = first_logits(0, 0), first_logits(0, 1)
    assert torch.equal(k0_s0, k0_s1), "K = 0 draws no random numbers, so the seed must not matter"
    # K = 0 (Bayesian head on the first prediction) and K = 4 are different computations
    assert not torch.equal(k0_s0, k4_s0)


@pytest.mark.parametrize("steps", [0, 1, 8])
def test_k_steps_give_sensible_masks_on_validation_patient(steps, acdc_p011, first_masks) -> None:
    image, gt = acdc_p011
    labels = first_masks(steps, 0)
    assert labels.GetSize() == image.GetSize() and labels.GetPixelID() == sitk.sitkUInt8
    pred = sitk.GetArrayFromImage(labels)
    assert set(np.unique(pred).tolist()) <= {0, RV, MYO, LV}
    scores = {name: dice(pred, gt, v) for name, v in (("RV", RV), ("MYO", MYO), ("LV", LV))}
    # Measured on this crop: LV 0.965, MYO 0.87, RV 0.95 for K = 0, 1 and 8.
    assert scores["LV"] > 0.90, scores
    assert scores["MYO"] > 0.75, scores
    assert scores["RV"] > 0.80, scores


def test_segment_is_deterministic_for_k8(heart_segmenter, acdc_p011, first_masks) -> None:
    a = sitk.GetArrayFromImage(first_masks(8, 0))
    b = sitk.GetArrayFromImage(heart_segmenter.segment(acdc_p011[0], steps=8, seed=0))  # a fresh run
    assert np.array_equal(a, b)
    assert (a > 0).sum() > 1000  # and it found the heart


# ---------------------------------------------------------------------------------------------------------
# Several Markov samples per slice (--samples)


def test_several_samples_average_the_latents_of_independent_chains(heart_segmenter, heart_batch) -> None:
    """``samples = S`` must equal S chains, each from its own slice generators (sample-major), run one by one
    with the public pieces (denoise, posterior) and their fused latents averaged before the decoder."""
    network = heart_segmenter.network
    b, samples, steps = heart_batch.shape[0], 3, 4
    seeds = [[100 + 10 * s + j for j in range(b)] for s in range(samples)]

    def generators(rows):
        return [torch.Generator().manual_seed(seed) for row in rows for seed in row]

    with torch.inference_mode():
        fast = network(heart_batch, steps=steps, generator=generators(seeds), samples=samples)
        features, quarter = network.semantic(heart_batch)
        first = network.first_head(torch.nn.functional.leaky_relu(features, 0.01)).float()
        z_first = network.autoencoder.encode(torch.softmax(first, dim=1))
        sampler = MarkovSampler(network.schedule, steps, network.cfg.markov_start)
        chains = [sampler.run(lambda z, t: network.denoise(quarter, z, t), z_first, generators([row]))
                  for row in seeds]
        z_hat = torch.stack(chains).mean(0)
        prior = torch.log_softmax(network.autoencoder.decode(z_hat).float(), dim=1)
        by_hand = network.posterior(features, quarter, z_hat, prior)
        one = network(heart_batch, steps=steps, generator=generators(seeds[:1]))
    assert fast.shape == by_hand.shape == one.shape
    assert torch.allclose(fast, by_hand, atol=2e-3), float((fast - by_hand).abs().max())
    assert not torch.allclose(fast, one, atol=2e-3)  # the other chains do count


def test_more_samples_make_the_mask_less_dependent_on_the_noise(acdc_p011, heart_bundle) -> None:
    """Averaging the chains is a Monte Carlo estimate of the chain's expected latent, so two seeds disagree on
    fewer voxels with 8 samples than with 1; and the mask still does not depend on the batching."""
    from DSSMSegmentLib.inference import Segmenter

    image, gt = acdc_p011

    def mask(samples, seed, batch_size=3):
        segmenter = Segmenter(heart_bundle, device="cpu", batch_size=batch_size, samples=samples)
        return sitk.GetArrayFromImage(segmenter.segment(image, steps=4, seed=seed))

    one = [mask(1, seed) for seed in (0, 1, 2)]
    eight = [mask(8, seed) for seed in (0, 1, 2)]
    moved_one = sum(int((one[0] != m).sum()) for m in one[1:])
    moved_eight = sum(int((eight[0] != m).sum()) for m in eight[1:])
    assert moved_eight < moved_one, (moved_eight, moved_one)
    # batched differently, the same noise: only float rounding can move a voxel (as for one sample)
    differing = int((mask(8, 0, batch_size=1) != eight[0]).sum())
    assert differing <= 1e-4 * eight[0].size, f"{differing} voxels differ between batch sizes 3 and 1"
    assert dice(eight[0], gt, LV) > 0.9


def test_samples_below_one_is_an_error(heart_bundle) -> None:
    from DSSMSegmentLib.errors import DSSMError
    from DSSMSegmentLib.inference import Segmenter

    with pytest.raises(DSSMError, match="--samples"):
        Segmenter(heart_bundle, device="cpu", samples=0)
