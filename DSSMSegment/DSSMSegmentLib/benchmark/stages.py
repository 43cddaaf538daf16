"""Per-stage clocks: plain wrappers around the network's own modules and the Markov sampler (same calls, same
inputs, so the masks are the same as without them)."""

from __future__ import annotations

import time
from typing import Dict

from .references import NaiveDiffusion


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
        from .. import sampler as sampler_module

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
