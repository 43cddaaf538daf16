"""Noise schedule and the stable Markov inference of DSSM.

Like a diffusers scheduler, these objects hold the schedule and the step rule and never own the network.
The chain reads top to bottom in :meth:`MarkovSampler.run`:

1. start from the latent of the semantic module's own first prediction, noised to ``start`` (a fraction
   of T) with seeded generators (one per slice at inference) - not from pure noise;
2. take K deterministic DDIM steps (eta = 0) with the x0-predicting denoiser, re-normalising the latent
   to [-1, 1] after each step;
3. fuse the x0 predictions of the last steps (their mean).

The same input and seed therefore always give the same latent, hence the same mask.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def start_noise(shape, device: torch.device, generator: Generators) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...). With one generator per sample, each sample's noise
    depends on its own generator only, so a slice gets the same noise however the slices are batched."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=torch.float32)
                        for g in generator])


class CosineSchedule:
    """Cosine cumulative-alpha schedule (Nichol & Dhariwal 2021) over ``timesteps`` integer steps."""

    def __init__(self, timesteps: int = 1000, s: float = 0.008) -> None:
        self.timesteps = timesteps
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        self.alphas_cumprod = (f / f[0]).clamp(min=1e-5, max=1.0).float()  # index 0 = clean

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t]

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``q(z_t | z0) = sqrt(a_t) z0 + sqrt(1 - a_t) noise`` for a batch of integer timesteps."""
        a = self.alpha_bar(t).view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise


def chain_length(timesteps: int, start: float) -> int:
    """The most Markov steps a chain from ``start x timesteps`` down to 0 can take: one per integer noise level
    above 0 (its first timestep)."""
    return max(1, min(timesteps, round(start * timesteps)))


class MarkovSampler:
    """K deterministic DDIM steps from ``start * T`` down to 0."""

    def __init__(self, schedule: CosineSchedule, steps: int, start: float = 0.5, fuse_last: int = 2) -> None:
        if steps < 1:
            raise ValueError("MarkovSampler needs at least one step")
        self.schedule = schedule
        t_start = chain_length(schedule.timesteps, start)
        # K timesteps evenly spaced from t_start down to (but excluding) 0, then 0 as the final target. There
        # are only t_start distinct integer timesteps above 0, so a larger K is capped there (a repeated
        # timestep, or t = 0 before the end, would make the DDIM step divide by zero).
        steps = min(steps, t_start)
        grid = torch.unique_consecutive(torch.linspace(t_start, 0, steps + 1).round().long())
        self.timesteps = grid[:-1].tolist()
        self.next_timesteps = grid[1:].tolist()
        self.fuse_last = max(1, min(fuse_last, steps))

    def step(self, z0_pred: torch.Tensor, t: int, t_next: int, z_t: torch.Tensor) -> torch.Tensor:
        """DDIM (eta = 0): re-noise the x0 prediction to ``t_next`` along the implied noise direction."""
        a_t = float(self.schedule.alphas_cumprod[t])
        a_next = float(self.schedule.alphas_cumprod[t_next])
        eps = (z_t - math.sqrt(a_t) * z0_pred) / math.sqrt(1.0 - a_t)
        return (math.sqrt(a_next) * z0_pred + math.sqrt(1.0 - a_next) * eps).clamp(-1.0, 1.0)

    def run(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z_first: torch.Tensor,
            generator: Generators = None,
            step_callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Run the chain; ``denoise(z_t, t_batch) -> z0``. Returns the fused z0 estimate. ``generator``: one
        for the batch, or one per sample (see :func:`start_noise`)."""
        noise = start_noise(z_first.shape, z_first.device, generator)
        t0 = torch.full((z_first.shape[0],), self.timesteps[0], dtype=torch.long, device=z_first.device)
        z = self.schedule.add_noise(z_first.float(), noise, t0)
        predictions = []
        for i, (t, t_next) in enumerate(zip(self.timesteps, self.next_timesteps)):
            t_batch = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
            z0 = denoise(z, t_batch).float()
            predictions.append(z0)
            z = self.step(z0, t, t_next, z)
            if step_callback is not None:
                step_callback(i + 1, len(self.timesteps))
        return torch.stack(predictions[-self.fuse_last:]).mean(0)
