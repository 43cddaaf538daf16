"""The DSSM network and its discriminative baseline.

Our reading of Liu et al. (Medical Physics 2025), as set out in ``shared/docs/DESIGN.md``:

* :class:`SemanticUNet` - the semantic module. A 2D U-Net that maps an image slice to per-pixel features
  ``f`` (the *pixel feature space*) and also exposes its 1/4-resolution decoder features to the FFM.
* :class:`BayesianHead` - ``log p(c|f) = log p(f|c) + log p(c|x) - log Z`` with ``p(f|c)`` a small diagonal
  Gaussian mixture per class, learned by gradient (GMMSeg-style). Evaluated as one 1x1 convolution.
* :class:`LabelAutoencoder` - maps a probability map to the *latent feature space* ``z`` (1/4 resolution,
  a few channels, bounded to [-1, 1]) and back to label logits.
* :class:`FeatureFusionModule` - fuses the semantic features with a latent ``z_t`` and the timestep. Its
  output conditions the denoiser, and (at ``t = 0``) gives label features back to the semantic module.
* :class:`LatentDenoiser` - a small U-Net on ``z_t`` that predicts ``z0`` (x0-parameterisation).
* :class:`DSSM` ties them together; :class:`DiscriminativeBaseline` is the same semantic module with a plain
  softmax head - the paper's ablation, trained by the same command.

The Markov chain itself lives in :mod:`DSSMSegmentLib.sampler`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .plan import ArchitectureConfig  # noqa: F401  (re-exported: the network's recorded plan)
from .sampler import CosineSchedule, Generators, MarkovSampler


def _autocast_off(device: torch.device):
    """A context in which autocast is off on ``device`` (for the few float32 pieces of the inference path)."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else nullcontext()


def _compute_dtype(reference: torch.Tensor, fallback: torch.Tensor) -> torch.dtype:
    """The dtype the denoiser's convolutions run in: autocast's, if on, else the input's."""
    if reference.device.type == "cuda":
        try:
            if torch.is_autocast_enabled("cuda"):
                return torch.get_autocast_dtype("cuda")
        except (TypeError, AttributeError):  # torch < 2.4
            if torch.is_autocast_enabled():
                return torch.get_autocast_gpu_dtype()
    return fallback.dtype if fallback.is_floating_point() else torch.float32


def _norm(ch: int) -> nn.Module:
    return nn.BatchNorm2d(ch)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with batch norm and leaky ReLU; the first may downsample."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), _norm(cout), nn.LeakyReLU(0.01, True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout), nn.LeakyReLU(0.01, True),
        )


class SemanticUNet(nn.Module):
    """2D U-Net: image -> (full-resolution pixel features, 1/4-resolution decoder features)."""

    def __init__(self, in_channels: int, widths: tuple, feature_channels: int) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, widths[0])]
            + [ConvBlock(widths[i - 1], widths[i], stride=2) for i in range(1, len(widths))]
        )
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(len(widths) - 1, 0, -1)]
        )
        self.decoder = nn.ModuleList(
            [ConvBlock(2 * widths[i - 1], widths[i - 1]) for i in range(len(widths) - 1, 0, -1)]
        )
        self.to_features = nn.Conv2d(widths[0], feature_channels, 1)
        self.quarter_channels = widths[2]

    def forward(self, x: torch.Tensor, dropout: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``dropout``: training a two-stage DSSM only, a per-sample probability (B,) of dropping whole channels
        of the bottleneck and of every decoder stage (:func:`channel_dropout`), so that the frozen first stage
        makes mistakes on its own training images, as it does on new ones."""
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = channel_dropout(skips.pop(), dropout)
        quarter = None
        for up, dec in zip(self.upsample, self.decoder):
            x = channel_dropout(dec(torch.cat([up(x), skips.pop()], dim=1)), dropout)
            if len(skips) == 2:  # the stage at 1/4 resolution
                quarter = x
        return self.to_features(x), quarter


def channel_dropout(x: torch.Tensor, rates: Optional[torch.Tensor]) -> torch.Tensor:
    """Drop whole channels of each sample of (B, C, H, W) with that sample's probability ``rates[b]``, scaling
    the kept ones by 1 / (1 - rate) (``F.dropout2d`` with one rate per sample); ``None``: ``x`` unchanged."""
    if rates is None:
        return x
    keep = (1.0 - rates.to(x.dtype)).view(-1, 1, 1, 1)
    mask = (torch.rand(x.shape[0], x.shape[1], 1, 1, device=x.device) < keep).to(x.dtype)
    return x * mask / keep


class BayesianHead(nn.Module):
    """Class posterior from class-conditional Gaussian mixtures in the (L2-normalised) pixel feature space.

    ``forward(f, log_prior)`` returns ``log p(f|c) + log p(c|x)``, the unnormalised log-posterior; a softmax
    over classes gives ``p(c|f, x)``. The Gaussian log-density is quadratic in ``f``, so the whole head is one
    1x1 convolution over ``[f*f, f]`` followed by a log-sum-exp over each class's components.
    """

    def __init__(self, feature_channels: int, num_classes: int, components: int) -> None:
        super().__init__()
        self.num_classes, self.components, self.dim = num_classes, components, feature_channels
        g = torch.Generator().manual_seed(0)
        self.means = nn.Parameter(F.normalize(torch.randn(num_classes, components, feature_channels, generator=g), dim=-1))
        self.log_var = nn.Parameter(torch.full((num_classes, components, feature_channels), math.log(0.05)))
        self.mix_logits = nn.Parameter(torch.zeros(num_classes, components))

    def log_likelihood(self, f: torch.Tensor) -> torch.Tensor:
        """``log p(f|c)`` for each class: (B, D, H, W) -> (B, C, H, W)."""
        weight, bias = self._quadratic_form()
        weight = weight.t()[:, :, None, None].to(f.dtype)
        comp = F.conv2d(torch.cat([f * f, f], dim=1), weight, bias.to(f.dtype))  # (B, C*M, H, W)
        b, _, h, w = comp.shape
        return torch.logsumexp(comp.float().view(b, self.num_classes, self.components, h, w), dim=2)

    def forward(self, f: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(f) + log_prior.float()

    def _quadratic_form(self) -> tuple:
        """The head as one linear map over ``[f*f, f]``: weight (D2, C*M) and bias (C*M,), float32."""
        inv_var = torch.exp(-self.log_var).float()
        mu = self.means.float()
        weight = torch.cat([(-0.5 * inv_var).reshape(-1, self.dim), (mu * inv_var).reshape(-1, self.dim)], dim=1)
        bias = (
            -0.5 * (mu * mu * inv_var).sum(-1)
            - 0.5 * self.log_var.float().sum(-1)
            - 0.5 * self.dim * math.log(2 * math.pi)
            + torch.log_softmax(self.mix_logits.float(), dim=-1)
        ).reshape(-1)
        return weight.t().contiguous(), bias

    def refine(self, features: torch.Tensor, label_quarter: torch.Tensor, log_prior: torch.Tensor,
               chunk_pixels: int = 1 << 16, typicality: Optional[tuple] = None) -> torch.Tensor:
        """Inference-only fused form of ``forward(normalize(features + up(label_quarter)), log_prior)``.

        Same arithmetic as :meth:`DSSM.posterior` followed by :meth:`forward`, reorganised for speed (the
        original materialises about ten full-resolution tensors of 32-64 channels for the whole batch, which
        made this memory-bound head cost a third of the semantic pass on a 2-core CPU):

        * pixels are handled channels-last as a ``(pixels, D)`` matrix, and the 1x1 convolution over
          ``[f*f, f]`` is one GEMM;
        * the batch is processed in chunks of about ``chunk_pixels`` pixels, so the upsampled label features,
          ``f``, ``f*f`` and the component scores of one chunk stay in cache instead of streaming through RAM;
        * the log-sum-exp over components and the prior are added in the same chunk.

        Returns log-posterior logits (B, C, H, W) in float32, laid out channels-last. With ``typicality``, a pair
        of (B, H, W) tensors (float32, uint8), also writes there, for each pixel, the log-likelihood of its
        features under the mixture of the class the posterior gives it, ``log p(f|c*)``, and that class ``c*``
        (:meth:`class_log_likelihood`): how typical the pixel is of what it was labelled.
        """
        b, d, h, w = features.shape
        weight, bias = self._quadratic_form()
        weight, bias = weight.to(features.device), bias.to(features.device)
        out = torch.empty((b, h, w, self.num_classes), dtype=torch.float32, device=features.device)
        prior = log_prior.permute(0, 2, 3, 1)  # a view: (B, H, W, C)
        step = max(1, min(b, chunk_pixels // max(1, h * w)))
        for i in range(0, b, step):
            j = min(b, i + step)
            label = F.interpolate(label_quarter[i:j], size=(h, w), mode="bilinear", align_corners=False)
            s = (features[i:j] + label).float().permute(0, 2, 3, 1).reshape(-1, d)  # (P, D), a view if channels-last
            lse = self.pixel_log_likelihood(s, weight, bias)
            torch.add(lse.view(j - i, h, w, self.num_classes), prior[i:j].float(), out=out[i:j])
            if typicality is not None:
                classes = out[i:j].argmax(-1)
                typicality[0][i:j] = lse.view(j - i, h, w, self.num_classes).gather(-1, classes[..., None])[..., 0]
                typicality[1][i:j] = classes
        return out.permute(0, 3, 1, 2)

    def pixel_log_likelihood(self, s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``log p(f|c)`` of pixel rows ``s`` (P, D), L2-normalised here, with ``(weight, bias)`` of
        :meth:`_quadratic_form`: (P, C). The chunked inference paths' form of :meth:`log_likelihood`."""
        s = s / torch.linalg.vector_norm(s, dim=1, keepdim=True).clamp_min(1e-12)  # = F.normalize
        comp = torch.addmm(bias, torch.cat([s * s, s], dim=1), weight).float()  # (P, C*M); bf16 under autocast
        return torch.logsumexp(comp.view(-1, self.num_classes, self.components), dim=2)

    def class_log_likelihood(self, f: torch.Tensor, log_prior: torch.Tensor) -> tuple:
        """``(log p(f|c*), c*)`` for (L2-normalised) features (B, D, H, W), c* being the class of the posterior's
        argmax: each (B, H, W). Low where a pixel's features are unlike those of its class in training; the
        image's familiarity score (:mod:`DSSMSegmentLib.familiarity`) is built on it."""
        likelihood = self.log_likelihood(f)
        classes = (likelihood + log_prior.float()).argmax(1)
        return likelihood.gather(1, classes[:, None])[:, 0], classes


class LabelAutoencoder(nn.Module):
    """Probability map (C channels) <-> label latent ``z`` at 1/4 resolution, bounded to [-1, 1]."""

    def __init__(self, num_classes: int, latent_channels: int, width: int = 16) -> None:
        super().__init__()
        act = lambda: nn.LeakyReLU(0.01, True)  # noqa: E731
        self.enc = nn.Sequential(
            nn.Conv2d(num_classes, width, 3, stride=2, padding=1), act(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act(),
            nn.Conv2d(2 * width, latent_channels, 1),
        )
        self.dec = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * width, 3, padding=1), act(),
            nn.ConvTranspose2d(2 * width, width, 2, stride=2), act(),
            nn.ConvTranspose2d(width, width, 2, stride=2), act(),
            nn.Conv2d(width, num_classes, 1),
        )

    def encode(self, probabilities: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.enc(probabilities))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


def timestep_embedding(t: torch.Tensor, dim: int, timesteps: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ``t`` (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * (1000.0 / timesteps))[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class FeatureFusionModule(nn.Module):
    """FFM: concatenate semantic features and latent, 1x1 conv, add the timestep, channel attention."""

    def __init__(self, semantic_channels: int, latent_channels: int, out_channels: int, temb_dim: int) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(semantic_channels + latent_channels, out_channels, 1)
        self.temb = nn.Linear(temb_dim, out_channels)
        squeeze = max(out_channels // 4, 4)
        self.attention = nn.Sequential(
            nn.Linear(out_channels, squeeze), nn.ReLU(True), nn.Linear(squeeze, out_channels), nn.Sigmoid()
        )

    def forward(self, semantic: torch.Tensor, z: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.fuse(torch.cat([semantic, z.to(semantic.dtype)], dim=1)) + self.temb(temb)[:, :, None, None])
        gate = self.attention(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]

    # -- inference: the 1x1 fusion is linear, so its semantic half is computed once per batch ----------------
    def precompute(self, semantic: torch.Tensor) -> torch.Tensor:
        """``W_semantic * semantic + bias``: the part of :meth:`forward` that no Markov step changes (float32)."""
        cs = semantic.shape[1]
        with _autocast_off(semantic.device):
            return F.conv2d(semantic.float(), self.fuse.weight[:, :cs].float(), self.fuse.bias.float())

    def forward_precomputed(self, base: torch.Tensor, z: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` given ``base = precompute(semantic)``; only the latent's 4 channels are fused per step.

        ``temb`` may have batch 1 (all slices at the same timestep): it is then broadcast over the batch.
        """
        cs = self.fuse.weight.shape[1] - z.shape[1]
        with _autocast_off(base.device):
            x = F.conv2d(z.float(), self.fuse.weight[:, cs:].float())
            x += base
            x += self.temb(temb.float())[:, :, None, None]
            F.silu(x, inplace=True)
            gate = self.attention(x.mean(dim=(2, 3)))
            return x.mul_(gate[:, :, None, None])


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            h = F.silu(self.conv1(x) + self.temb(temb)[:, :, None, None])
            return F.silu(self.conv2(h) + self.skip(x))
        # inference: the same arithmetic without temporaries (temb may have batch 1 and broadcast)
        h = self.conv1(x)
        h += self.temb(temb).to(h.dtype)[:, :, None, None]
        F.silu(h, inplace=True)
        out = self.conv2(h)
        out += self.skip(x)
        return F.silu(out, inplace=True)


class LatentDenoiser(nn.Module):
    """Two-level U-Net on the latent; predicts ``z0`` from ``(z_t, FFM(features, z_t, t), t)``."""

    def __init__(self, latent_channels: int, cond_channels: int, width: int, temb_dim: int) -> None:
        super().__init__()
        self.inp = _ResBlock(latent_channels + cond_channels, width, temb_dim)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = _ResBlock(2 * width, 2 * width, temb_dim)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.out_block = _ResBlock(2 * width, width, temb_dim)
        self.out = nn.Conv2d(width, latent_channels, 1)

    def forward(self, z_t: torch.Tensor, cond: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h0 = self.inp(torch.cat([z_t.to(cond.dtype), cond], dim=1), temb)
        h1 = self.mid(self.down(h0), temb)
        h = self.out_block(torch.cat([self.up(h1), h0], dim=1), temb)
        return torch.tanh(self.out(h))


@dataclass
class InferenceOutputs:
    """What one inference call of a network gives with ``details=True`` (:meth:`DSSM.forward`)."""

    logits: torch.Tensor  # (B, C, H, W): the posterior that makes the mask, exactly as without details
    # (S, B, C, H, W): each Markov chain's own posterior, for the uncertainty map; None when only one chain ran
    # (its posterior is ``logits``) and for the baseline
    sample_logits: Optional[torch.Tensor] = None
    # (B, H, W) each: log p(f|c*) of each pixel's features under the mixture of the class c* that ``logits``
    # give it, and c* (uint8); None for the baseline, which has no feature density
    typicality: Optional[tuple] = None


class DiscriminativeBaseline(nn.Module):
    """The ablation: DSSM's semantic module with a plain softmax (1x1 conv) head, no generative part."""

    def __init__(self, cfg: ArchitectureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.semantic = SemanticUNet(cfg.in_channels, cfg.widths, cfg.feature_channels)
        self.head = nn.Conv2d(cfg.feature_channels, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor, steps: int = 0, generator: Generators = None,
                step_callback=None, samples: int = 1, details: bool = False, each_sample: bool = False,
                mask_samples: Optional[int] = None):
        """Softmax logits (B, C, H, W); with ``details``, as :class:`InferenceOutputs` (logits only: there is
        no chain to sample and no feature density)."""
        features, _ = self.semantic(x)
        logits = self.head(F.leaky_relu(features, 0.01))
        return InferenceOutputs(logits) if details else logits


class ResidualHead(nn.Module):
    """Two-stage DSSM's correction to the first stage's logits, at full resolution, from the pixel features, the
    label features of the chain's latent, its decoded label logits and the Bayesian head's class likelihoods.
    Narrow (a 1x1 reduction, then two 3x3 convolutions at 16 channels: about a tenth of the semantic module's
    arithmetic), and its last layer starts at zero, so that an untrained head leaves the first stage unchanged.
    :meth:`DSSM._fused_correction` runs the same layers at inference, ``body[0]`` split by input."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.SiLU(True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU(True))
        self.out = nn.Conv2d(width, num_classes, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(inputs))


@dataclass
class TrainingOutputs:
    """Everything the DSSM training loss needs from one forward pass."""

    final: torch.Tensor  # posterior logits after one denoising step
    final_no_markov: torch.Tensor  # posterior logits with K = 0 (first prediction as prior)
    first: torch.Tensor  # first prediction logits (pixel-feature classifier)
    decoded: torch.Tensor  # label logits decoded from the predicted z0
    reconstructed: torch.Tensor  # label logits decoded from the ground-truth latent
    z0_pred: torch.Tensor
    z0_target: torch.Tensor
    likelihood: torch.Tensor  # log p(f|c) of the Bayesian head alone (no prior), as ``final`` sees the features


class DSSM(nn.Module):
    """Denoising Semantic Segmentation Model (see module docstring)."""

    def __init__(self, cfg: ArchitectureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        temb_dim = 64
        quarter = cfg.widths[2]
        self.semantic = SemanticUNet(cfg.in_channels, cfg.widths, cfg.feature_channels)
        self.first_head = nn.Conv2d(cfg.feature_channels, cfg.num_classes, 1)
        self.autoencoder = LabelAutoencoder(cfg.num_classes, cfg.latent_channels)
        self.time_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.ffm = FeatureFusionModule(quarter, cfg.latent_channels, quarter, temb_dim)
        self.denoiser = LatentDenoiser(cfg.latent_channels, quarter, cfg.denoiser_width, temb_dim)
        self.label_features = nn.Conv2d(quarter, cfg.feature_channels, 1)
        self.bayes = BayesianHead(cfg.feature_channels, cfg.num_classes, cfg.gmm_components)
        if cfg.refiner == "residual":
            self.residual = ResidualHead(2 * cfg.feature_channels + 2 * cfg.num_classes, cfg.num_classes)
        elif cfg.refiner != "bayes":
            raise ValueError(f"unknown refiner {cfg.refiner!r} (expected 'bayes' or 'residual')")
        self.schedule = CosineSchedule(cfg.timesteps)
        self._temb_dim = temb_dim
        self.stage1_dropout = 0.0  # two-stage training only (TrainConfig.stage1_dropout); never saved, never at inference

    @property
    def two_stage(self) -> bool:
        """The first stage (semantic module and its plain head) is a frozen discriminative baseline, and the
        output is its logits plus the chain's residual correction (:class:`ResidualHead`)."""
        return self.cfg.refiner == "residual"

    def correction(self, features: torch.Tensor, label: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """Two-stage DSSM: the residual head's correction from the pixel features, the chain's label features
        (``label``, any resolution), its decoded label logits and the Bayesian head's log-likelihoods."""
        size = features.shape[-2:]
        label = F.interpolate(label, size=size, mode="bilinear", align_corners=False)
        likelihood = self.bayes.log_likelihood(F.normalize(features.float(), dim=1))
        likelihood = likelihood - likelihood.amax(1, keepdim=True)  # class evidence relative to the best class
        inputs = torch.cat([features, label.to(features.dtype), torch.log_softmax(decoded.float(), 1).to(features.dtype),
                            likelihood.to(features.dtype)], dim=1)
        return self.residual(inputs).float()

    # -- the pieces ------------------------------------------------------------------------------------
    def temb(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(timestep_embedding(t, self._temb_dim, self.cfg.timesteps))

    def denoise(self, quarter: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One x0-prediction: ``z0 = D(z_t, FFM(features, z_t, t), t)``."""
        temb = self.temb(t)
        return self.denoiser(z_t, self.ffm(quarter, z_t, temb), temb)

    def posterior(self, features: torch.Tensor, quarter: torch.Tensor, z_hat: torch.Tensor,
                  log_prior: torch.Tensor) -> torch.Tensor:
        """Bayesian refinement: label features from ``FFM(features, z_hat, 0)`` enter the pixel features, and
        the class-conditional likelihood is combined with the generative prior."""
        label = self.label_features(self._label_condition(quarter, z_hat))
        label = F.interpolate(label, size=features.shape[-2:], mode="bilinear", align_corners=False)
        f = F.normalize((features + label).float(), dim=1)
        return self.bayes(f, log_prior)

    # -- inference -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, steps: int = 4, generator: Generators = None,
                step_callback=None, samples: int = 1, details: bool = False, each_sample: bool = False,
                mask_samples: Optional[int] = None):
        """Segment a batch of slices; returns log-posterior logits (B, C, H, W).

        ``steps = 0``: Bayesian head with the first prediction as its prior. ``steps = K > 0``: the stable
        Markov chain of :class:`~DSSMSegmentLib.sampler.MarkovSampler`, started from the noised latent of the
        first prediction; the fused ``z0`` decodes to the prior. ``samples = S > 1`` runs S chains per slice from
        independent noise (``generator``: S x B generators, sample-major) and averages their fused ``z0``.

        ``details=True`` returns :class:`InferenceOutputs` instead: the same logits and, for each pixel, the
        likelihood of its features under its class's mixture (:meth:`BayesianHead.class_log_likelihood`). ``each_sample=True`` (with ``details``) adds, when S > 1, each chain's own
        posterior (its own fused ``z0`` decoded and refined); ``mask_samples = M <= S`` then makes ``logits``
        from the first M chains only, which are the chains of a run with ``samples = M`` (chain s has the same
        noise whatever S is): a run that draws extra chains for the uncertainty map gives the mask of a run
        without them (up to float rounding: the batch is larger).

        This is the same computation as :meth:`denoise` and :meth:`posterior` (which training uses), organised
        for inference: every slice of a batch is at the same timestep, so the timestep embedding is computed
        once and broadcast; the semantic half of the FFM's 1x1 fusion is computed once, not at every step; and
        the Bayesian head runs fused and chunked (:meth:`BayesianHead.refine`).
        """
        if torch.is_grad_enabled():  # differentiable: the plain composition of the public pieces
            if details:
                raise ValueError("details=True is for inference (torch.inference_mode or no_grad)")
            return self._forward_reference(x, steps, generator, step_callback, samples)
        features, quarter = self.semantic(x)
        first = self._first_logits(features)
        if self.two_stage and steps <= 0:  # K = 0: the first stage alone, exactly its discriminative baseline
            return InferenceOutputs(first, None, None) if details else first
        first_prob = torch.softmax(first, dim=1)
        z_first = self.autoencoder.encode(first_prob.to(x.dtype))
        base = self.ffm.precompute(quarter)
        shape = (x.shape[0], *features.shape[-2:])
        typicality = ((torch.empty(shape, dtype=torch.float32, device=x.device),
                       torch.empty(shape, dtype=torch.uint8, device=x.device)) if details else None)
        if steps <= 0:
            logits = self._refine(features, base, z_first, torch.log_softmax(first, dim=1), typicality)
            return InferenceOutputs(logits, None, typicality) if details else logits
        del first_prob
        samples = max(1, int(samples))
        z_all = self._markov_latents(self._denoise_precomputed, base, z_first, steps, generator, step_callback,
                                     samples)
        if self.two_stage:
            typicality = None  # its Bayesian head is not calibrated for familiarity (yet)
        if not details:
            return self._decode_and_refine(features, base, z_all.mean(0), x.dtype, first=first)
        mask_samples = samples if mask_samples is None else max(1, min(samples, int(mask_samples)))
        if samples == 1 or not each_sample:
            logits = self._decode_and_refine(features, base, z_all[:mask_samples].mean(0), x.dtype, typicality,
                                             first)
            return InferenceOutputs(logits, None, typicality)
        # each chain's own posterior; chain 0's gives the typicality when it alone makes the mask
        sample_logits = torch.stack([
            self._decode_and_refine(features, base, z_all[s], x.dtype, typicality if s == 0 and mask_samples == 1
                                    else None, first) for s in range(samples)])
        if mask_samples == 1:
            logits = sample_logits[0]
        else:
            logits = self._decode_and_refine(features, base, z_all[:mask_samples].mean(0), x.dtype, typicality,
                                             first)
        return InferenceOutputs(logits, sample_logits, typicality)

    def _decode_and_refine(self, features: torch.Tensor, base: torch.Tensor, z_hat: torch.Tensor,
                           dtype: torch.dtype, typicality: Optional[tuple] = None,
                           first: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The posterior of one fused latent: decoded to the prior, then the Bayesian head; for a two-stage DSSM,
        the first stage's logits ``first`` plus the correction of the residual head."""
        decoded = self.autoencoder.decode(z_hat.to(dtype)).float()
        if self.two_stage:
            temb = self._timestep_embedding_once(torch.zeros(1, dtype=torch.long, device=z_hat.device))
            cond = self.ffm.forward_precomputed(base, z_hat, temb).to(_compute_dtype(base, z_hat))
            return first + self._fused_correction(features, cond, decoded)
        return self._refine(features, base, z_hat, torch.log_softmax(decoded, dim=1), typicality)

    def _forward_reference(self, x: torch.Tensor, steps: int = 4, generator: Generators = None,
                           step_callback=None, samples: int = 1) -> torch.Tensor:
        """:meth:`forward` written with :meth:`denoise` and :meth:`posterior` only (the original formulation)."""
        features, quarter = self.semantic(x)
        first = self.first_head(F.leaky_relu(features, 0.01)).float()
        if self.two_stage and steps <= 0:
            return first
        first_prob = torch.softmax(first, dim=1)
        z_first = self.autoencoder.encode(first_prob.to(x.dtype))
        if steps <= 0:
            return self.posterior(features, quarter, z_first, torch.log_softmax(first, dim=1))
        z_hat = self._markov_latent(self.denoise, quarter, z_first, steps, generator, step_callback, samples)
        decoded = self.autoencoder.decode(z_hat.to(x.dtype)).float()
        if self.two_stage:
            return first + self.correction(features, self.label_features(self._label_condition(quarter, z_hat)),
                                           decoded)
        return self.posterior(features, quarter, z_hat, torch.log_softmax(decoded, dim=1))

    def _label_condition(self, quarter: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """``FFM(features, z_hat, t = 0)``: the fused condition of a clean latent."""
        t0 = torch.zeros(z_hat.shape[0], dtype=torch.long, device=z_hat.device)
        return self.ffm(quarter, z_hat, self.temb(t0))

    def _markov_latent(self, denoise, cond: torch.Tensor, z_first: torch.Tensor, steps: int, generator: Generators,
                       step_callback, samples: int) -> torch.Tensor:
        """The fused ``z0`` of the Markov chain(s): the mean of :meth:`_markov_latents` over the chains - a Monte
        Carlo estimate of the chain's expected latent."""
        return self._markov_latents(denoise, cond, z_first, steps, generator, step_callback, samples).mean(0)

    def _markov_latents(self, denoise, cond: torch.Tensor, z_first: torch.Tensor, steps: int, generator: Generators,
                        step_callback, samples: int) -> torch.Tensor:
        """Each chain's fused ``z0``, (S, B, ...): ``samples`` chains from independent noise run side by side as
        one batch (sample-major, so ``generator`` holds one generator per sample and slice)."""
        sampler = MarkovSampler(self.schedule, steps, self.cfg.markov_start)
        samples = max(1, int(samples))
        if samples > 1:
            cond, z_first = torch.cat([cond] * samples), torch.cat([z_first] * samples)
        z_all = sampler.run(lambda z, t: denoise(cond, z, t), z_first, generator, step_callback)
        return z_all.view(samples, -1, *z_all.shape[1:])

    def _fused_correction(self, features: torch.Tensor, cond: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """Inference-only form of ``correction(features, label_features(cond), decoded)``, the same arithmetic
        reorganised as :meth:`BayesianHead.refine` is. The reference concatenates 2D + 2C full-resolution channels
        and builds the Bayesian head's ``[f*f, f]`` at full resolution for the whole batch, which cost as much as
        the whole semantic pass on the 2-core CPU. Here:

        * the residual head's first (1x1) layer is split by its inputs. Its label part composed with
          ``label_features`` (also 1x1) runs on the quarter-resolution ``cond`` and is then upsampled: the same
          as upsampling first, since bilinear interpolation and a per-pixel affine map commute;
        * the pixel-feature, decoded-label and likelihood parts are GEMMs over channels-last chunks of slices,
          with the Bayesian head's likelihood computed in the same chunk, so that nothing of 2D channels at full
          resolution is written for the whole batch.
        """
        with _autocast_off(features.device):  # float32 throughout, as the reference's correction returns it
            return self._fused_correction_fp32(features, cond, decoded)

    def _fused_correction_fp32(self, features: torch.Tensor, cond: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        b, d, h, w = features.shape
        c = self.cfg.num_classes
        reduce = self.residual.body[0]
        weight = reduce.weight[:, :, 0, 0].float()  # (W, 2D + 2C): features, label, log_softmax(decoded), likelihood
        w_feat, w_label, w_decoded, w_like = weight.split([d, d, c, c], dim=1)
        lf = self.label_features
        w_cond = w_label @ lf.weight[:, :, 0, 0].float()  # (W, quarter channels)
        label = F.conv2d(cond.float(), w_cond[:, :, None, None], w_label @ lf.bias.float() + reduce.bias.float())
        q_weight, q_bias = self.bayes._quadratic_form()
        q_weight, q_bias = q_weight.to(features.device), q_bias.to(features.device)
        w_feat, w_decoded, w_like = (m.t().contiguous() for m in (w_feat, w_decoded, w_like))
        log_decoded = torch.log_softmax(decoded.float(), dim=1)
        hidden = torch.empty((b, h, w, weight.shape[0]), dtype=torch.float32, device=features.device)
        step = max(1, min(b, (1 << 16 if features.device.type == "cpu" else 1 << 21) // max(1, h * w)))
        for i in range(0, b, step):
            j = min(b, i + step)
            f = features[i:j].float().permute(0, 2, 3, 1).reshape(-1, d)  # (P, D), a view if channels-last
            like = self.bayes.pixel_log_likelihood(f, q_weight, q_bias)
            like = like - like.amax(1, keepdim=True)
            dec = log_decoded[i:j].permute(0, 2, 3, 1).reshape(-1, c)
            up = F.interpolate(label[i:j], size=(h, w), mode="bilinear", align_corners=False)
            out = hidden[i:j].view(-1, weight.shape[0])
            torch.mm(f, w_feat, out=out).addmm_(dec, w_decoded).addmm_(like, w_like)
            out += up.permute(0, 2, 3, 1).reshape(-1, weight.shape[0])
        x = F.silu(hidden.permute(0, 3, 1, 2))  # a channels-last (B, width, H, W) view
        x = self.residual.body[3](self.residual.body[2](x))  # the rest of ResidualHead.body: 3x3, SiLU
        return self.residual.out(x)

    def _first_logits(self, features: torch.Tensor, chunk_pixels: int = 1 << 16) -> torch.Tensor:
        """``first_head(leaky_relu(features))`` in float32, slice by slice on CPU so that the activated copy of
        the 32-channel full-resolution features stays in cache (the raw features are still needed)."""
        b, _, h, w = features.shape
        step = max(1, chunk_pixels // max(1, h * w))
        if features.device.type != "cpu" or step >= b:
            return self.first_head(F.leaky_relu(features, 0.01)).float()
        parts = [self.first_head(F.leaky_relu(features[i:i + step], 0.01)) for i in range(0, b, step)]
        return torch.cat(parts).float()

    def _timestep_embedding_once(self, t: torch.Tensor) -> torch.Tensor:
        """``temb`` of a batch whose slices all share one timestep, as a (1, dim) row that broadcasts."""
        return self.temb(t.reshape(-1)[:1])

    def _denoise_precomputed(self, base: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self._timestep_embedding_once(t)
        cond = self.ffm.forward_precomputed(base, z_t, temb).to(_compute_dtype(base, z_t))
        if cond.dim() == 4 and cond.is_contiguous(memory_format=torch.channels_last):
            # the same layout as the condition, so that their concatenation stays channels-last (an NCHW
            # latent made it NCHW, and both convolutions reading it reordered a 68-channel copy every step)
            z_t = z_t.contiguous(memory_format=torch.channels_last)
        return self.denoiser(z_t, cond, temb)

    def _refine(self, features: torch.Tensor, base: torch.Tensor, z_hat: torch.Tensor,
                log_prior: torch.Tensor, typicality: Optional[tuple] = None) -> torch.Tensor:
        temb = self._timestep_embedding_once(torch.zeros(1, dtype=torch.long, device=z_hat.device))
        cond = self.ffm.forward_precomputed(base, z_hat, temb).to(_compute_dtype(base, z_hat))
        label = self.label_features(cond)
        chunk = (1 << 16) if features.device.type == "cpu" else (1 << 21)  # CPU: in cache; GPU: bounded memory
        return self.bayes.refine(features, label, log_prior, chunk_pixels=chunk, typicality=typicality)

    # -- training --------------------------------------------------------------------------------------
    def training_forward(self, x: torch.Tensor, onehot: torch.Tensor) -> TrainingOutputs:
        """One end-to-end training pass (DESIGN.md, 'Training is end to end and discriminative').

        The latent to be noised is the ground truth's for half of the samples, and the detached first
        prediction's for the other half (the DDPS trick against inference offset); the target is always
        the ground-truth latent.
        """
        b = x.shape[0]
        if self.two_stage:  # the first stage is frozen: no gradient, no BatchNorm statistics updated
            with torch.no_grad():
                self.semantic.eval()
                # half of the samples through a first stage with channel dropout (stage1_dropout), so that stage 2
                # also learns from first-stage mistakes, which the first stage rarely makes on its training images
                rates = None
                if self.stage1_dropout > 0:
                    rates = (torch.rand(b, device=x.device) < 0.5).float() * self.stage1_dropout
                features, quarter = self.semantic(x, dropout=rates)
                first = self.first_head(F.leaky_relu(features, 0.01)).float()
        else:
            features, quarter = self.semantic(x)
            first = self.first_head(F.leaky_relu(features, 0.01)).float()
        first_prob = torch.softmax(first, dim=1)
        z_gt = self.autoencoder.encode(onehot.to(x.dtype))
        z_first_detached = self.autoencoder.encode(first_prob.detach().to(x.dtype))
        use_gt = (torch.rand(b, device=x.device) < 0.5)[:, None, None, None]
        z_src = torch.where(use_gt, z_gt.detach(), z_first_detached)
        # two-stage: only the noise levels the chain visits (it starts at markov_start x T)
        highest = round(self.cfg.markov_start * self.cfg.timesteps) if self.two_stage else self.cfg.timesteps
        t = torch.randint(1, max(1, highest) + 1, (b,), device=x.device)
        z_t = self.schedule.add_noise(z_src, torch.randn_like(z_src), t)
        z0_pred = self.denoise(quarter, z_t, t)
        decoded = self.autoencoder.decode(z0_pred).float()
        if self.two_stage:
            final = first + self.correction(features, self.label_features(self._label_condition(quarter, z0_pred)),
                                            decoded)
            likelihood = self.bayes.log_likelihood(F.normalize(features.float(), dim=1))
            return TrainingOutputs(final, first, first, decoded, self.autoencoder.decode(z_gt).float(), z0_pred,
                                   z_gt.detach(), likelihood)
        likelihood = self.posterior(features, quarter, z0_pred, torch.zeros_like(decoded))
        final = likelihood + torch.log_softmax(decoded, dim=1)  # = posterior(..., log_softmax(decoded))
        z_first = self.autoencoder.encode(first_prob.to(x.dtype))
        final0 = self.posterior(features, quarter, z_first, torch.log_softmax(first, dim=1))
        return TrainingOutputs(final, final0, first, decoded, self.autoencoder.decode(z_gt).float(), z0_pred,
                               z_gt.detach(), likelihood)


def _classifier_prefix(network: nn.Module) -> str:
    """State-dict prefix of the 1x1 pixel classifier on the semantic module: ``head.`` in the baseline,
    ``first_head.`` in DSSM."""
    return "head." if isinstance(network, DiscriminativeBaseline) else "first_head."


def semantic_state(network: nn.Module) -> dict:
    """The weights of a network's semantic module and of its pixel classifier on top of it, under the names
    DSSM uses (``semantic.*``, ``first_head.*``): the part a DSSM and its discriminative baseline share."""
    head = _classifier_prefix(network)
    return {("first_head." + k[len(head):] if k.startswith(head) else k): v
            for k, v in network.state_dict().items() if k.startswith("semantic.") or k.startswith(head)}


def load_semantic_state(network: nn.Module, state: dict) -> None:
    """Load :func:`semantic_state` weights into a DSSM or a baseline of the same widths; the rest is untouched."""
    head = _classifier_prefix(network)
    own = network.state_dict()
    renamed = {(head + k[len("first_head."):] if k.startswith("first_head.") else k): v for k, v in state.items()}
    mismatched = [k for k, v in renamed.items() if k not in own or own[k].shape != v.shape]
    if mismatched or not renamed:
        raise ValueError(f"semantic weights do not fit this network ({len(mismatched)} of {len(renamed)} differ)")
    own.update({k: v.to(own[k].dtype) for k, v in renamed.items()})
    network.load_state_dict(own)


def build_model(cfg: ArchitectureConfig) -> nn.Module:
    if cfg.kind == "dssm":
        return DSSM(cfg)
    if cfg.kind == "baseline":
        return DiscriminativeBaseline(cfg)
    raise ValueError(f"unknown architecture kind {cfg.kind!r} (expected 'dssm' or 'baseline')")


# ------------------------------------------------------------------------------------------------------
# Inference-time preparation (applied by DSSMSegmentLib.inference.Segmenter after loading; never saved)


@torch.no_grad()
def fold_batchnorm(network: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` into the ``Conv2d`` just before it, in place; returns ``network``.

    ``bn(conv(x)) = conv(x) * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, i.e. one convolution
    with weight ``W * s`` and bias ``(b - mean) * s + beta`` (computed in float64, stored in the weight's dtype).
    The BN modules become ``nn.Identity`` so that the module tree keeps its indices. This is for inference only:
    the folded network's state dict differs from the bundle's (convolutions gain a bias, BN buffers go), so it
    must never be saved or trained; the bundle on disk is untouched.
    """
    if network.training:
        raise ValueError("fold_batchnorm needs a network in eval mode (BatchNorm uses batch statistics in training)")
    for seq in [m for m in network.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue  # no running statistics: nothing fixed to fold
            scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
            shift = -bn.running_mean.double() * scale
            if bn.affine:
                shift = shift * bn.weight.double() + bn.bias.double()
                scale = scale * bn.weight.double()
            bias = conv.bias.double() * scale + shift if conv.bias is not None else shift
            conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
            if conv.bias is None:
                conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            else:
                conv.bias.copy_(bias.to(conv.bias.dtype))
            seq[i + 1] = nn.Identity()
    network.bn_folded = True
    return network


def optimize_for_inference(network: nn.Module, device: Optional[torch.device] = None) -> nn.Module:
    """Make a loaded network fast for inference, without changing what it computes (beyond float rounding).

    * eval mode and BatchNorm folded into the convolutions (:func:`fold_batchnorm`);
    * channels-last (NHWC) weights on CPU and CUDA: oneDNN's and cuDNN's fast convolution paths, with no
      layout reorder around every convolution (measured 1.3-2x on the full-resolution 16-32 channel layers of
      the semantic U-Net on a 2-core CPU).

    Inputs should then be given channels-last too (``x.contiguous(memory_format=torch.channels_last)``).
    """
    network.eval()
    fold_batchnorm(network)
    return network.to(memory_format=torch.channels_last)
