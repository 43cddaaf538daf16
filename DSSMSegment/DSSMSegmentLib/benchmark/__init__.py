"""``dssm benchmark``: time and memory of inference, per case, per stage and per number of Markov steps K.

What it measures (issue 5), in one run:

* **cases:** a typical ACDC volume (cine MRI, the model given by ``--model``, by default the heart model), a
  512x512 chest X-ray (``lungs-cxr``; a real 256x256 Montgomery/Shenzhen image upsampled, since the shared
  copies are 256x256) and a 256x256x20 MRI (the same ACDC volume resampled, same field of view);
* **methods:** DSSM at each K of ``--steps`` (0, 1, 2, 4, 8, 16), DSSM at its default K with 4 Markov samples
  per slice (``--samples 4``), with test-time augmentation (``--tta``; FLOPs count every pass at its
  zoom) and with the uncertainty map (``--uncertainty``: its chains, the map and its file), and two
  references: the discriminative
  baseline bundle (``<model>-baseline``) and *naive diffusion sampling* - the same denoiser and schedule
  started from pure noise with 100 DDPM ancestral steps (:func:`.references.naive_diffusion_logits`);
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

The package, one job per file; the command line (:mod:`DSSMSegmentLib.cli`) calls :func:`benchmark_command`,
and nothing here imports the command line:

* :mod:`.command` - ``benchmark_command``: plans the runs, hands each to a worker process, writes the report;
* :mod:`.cases` - the three cases, built from the shared data, and saved to or loaded from ``.npz``;
* :mod:`.arrays` - an in-memory stand-in for ``SimpleITK.Image``, for hosts without SimpleITK;
* :mod:`.references` - the naive diffusion reference (100 DDPM steps from pure noise);
* :mod:`.stages` - the per-stage clocks around the network's own modules;
* :mod:`.measurement` - inside a worker: time, memory, FLOPs, Dice and batched throughput;
* :mod:`.worker` - one fresh process per case and method (``python -m DSSMSegmentLib.benchmark --worker``);
* :mod:`.report` - the Markdown tables and the issue-5 targets.
"""

from .command import benchmark_command

__all__ = ["benchmark_command"]
