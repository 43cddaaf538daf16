"""The naive reference: the same denoiser from pure noise, 100 DDPM ancestral steps. It shows the factor that
DSSM's stable Markov chain saves."""

from __future__ import annotations

import math

NAIVE_STEPS = 100


def naive_diffusion_logits(network, x, steps: int = NAIVE_STEPS, generator=None, step_callback=None):
    """Log-posterior logits from a *naive* diffusion chain: DSSM's own denoiser and cosine schedule, started
    from pure Gaussian noise at ``t = T`` (not from the first prediction) and run with ``steps`` DDPM
    ancestral steps (strided: the posterior ``q(z_s | z_t, z0)`` between consecutive grid points, with fresh
    noise at every step but the last). The result goes through the same decoder and Bayesian head as DSSM's
    own chain, so the only difference is how the latent is sampled. This is the reference that shows the
    factor DSSM's stable Markov chain saves.
    """
    import torch

    from ..sampler import start_noise

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

