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
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sampler import CosineSchedule, MarkovSampler


@dataclass
class ArchitectureConfig:
    """Hyperparameters stored in ``model.json`` under ``architecture``."""

    kind: str = "dssm"  # "dssm" or "baseline"
    in_channels: int = 1
    num_classes: int = 2  # including background
    widths: tuple = (16, 32, 64, 128, 256)
    feature_channels: int = 32
    latent_channels: int = 4
    gmm_components: int = 3
    denoiser_width: int = 32
    timesteps: int = 1000
    markov_start: float = 0.5  # noise level (fraction of T) at which the stable chain starts
    extra: dict = field(default_factory=dict)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArchitectureConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.widths = tuple(cfg.widths)
        return cfg


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        quarter = None
        for up, dec in zip(self.upsample, self.decoder):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            if len(skips) == 2:  # the stage at 1/4 resolution
                quarter = x
        return self.to_features(x), quarter


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
        inv_var = torch.exp(-self.log_var).float()  # (C, M, D)
        mu = self.means.float()
        w_sq = (-0.5 * inv_var).reshape(-1, self.dim)
        w_lin = (mu * inv_var).reshape(-1, self.dim)
        bias = (
            -0.5 * (mu * mu * inv_var).sum(-1)
            - 0.5 * self.log_var.float().sum(-1)
            - 0.5 * self.dim * math.log(2 * math.pi)
            + torch.log_softmax(self.mix_logits.float(), dim=-1)
        ).reshape(-1)
        weight = torch.cat([w_sq, w_lin], dim=1)[:, :, None, None].to(f.dtype)
        comp = F.conv2d(torch.cat([f * f, f], dim=1), weight, bias.to(f.dtype))  # (B, C*M, H, W)
        b, _, h, w = comp.shape
        return torch.logsumexp(comp.float().view(b, self.num_classes, self.components, h, w), dim=2)

    def forward(self, f: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(f) + log_prior.float()


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


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x) + self.temb(temb)[:, :, None, None])
        return F.silu(self.conv2(h) + self.skip(x))


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


class DiscriminativeBaseline(nn.Module):
    """The ablation: DSSM's semantic module with a plain softmax (1x1 conv) head, no generative part."""

    def __init__(self, cfg: ArchitectureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.semantic = SemanticUNet(cfg.in_channels, cfg.widths, cfg.feature_channels)
        self.head = nn.Conv2d(cfg.feature_channels, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor, steps: int = 0, generator: Optional[torch.Generator] = None,
                step_callback=None) -> torch.Tensor:
        features, _ = self.semantic(x)
        return self.head(F.leaky_relu(features, 0.01))


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
        self.schedule = CosineSchedule(cfg.timesteps)
        self._temb_dim = temb_dim

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
        t0 = torch.zeros(z_hat.shape[0], dtype=torch.long, device=z_hat.device)
        label = self.label_features(self.ffm(quarter, z_hat, self.temb(t0)))
        label = F.interpolate(label, size=features.shape[-2:], mode="bilinear", align_corners=False)
        f = F.normalize((features + label).float(), dim=1)
        return self.bayes(f, log_prior)

    # -- inference -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, steps: int = 4, generator: Optional[torch.Generator] = None,
                step_callback=None) -> torch.Tensor:
        """Segment a batch of slices; returns log-posterior logits (B, C, H, W).

        ``steps = 0``: Bayesian head with the first prediction as its prior. ``steps = K > 0``: the stable
        Markov chain of :class:`~DSSMSegmentLib.sampler.MarkovSampler`, started from the noised latent of the
        first prediction; the fused ``z0`` decodes to the prior.
        """
        features, quarter = self.semantic(x)
        first = self.first_head(F.leaky_relu(features, 0.01)).float()
        first_prob = torch.softmax(first, dim=1)
        z_first = self.autoencoder.encode(first_prob.to(x.dtype))
        if steps <= 0:
            return self.posterior(features, quarter, z_first, torch.log_softmax(first, dim=1))
        sampler = MarkovSampler(self.schedule, steps, self.cfg.markov_start)
        z_hat = sampler.run(lambda z, t: self.denoise(quarter, z, t), z_first, generator, step_callback)
        prior = torch.log_softmax(self.autoencoder.decode(z_hat.to(x.dtype)).float(), dim=1)
        return self.posterior(features, quarter, z_hat, prior)

    # -- training --------------------------------------------------------------------------------------
    def training_forward(self, x: torch.Tensor, onehot: torch.Tensor) -> TrainingOutputs:
        """One end-to-end training pass (DESIGN.md, 'Training is end to end and discriminative').

        The latent to be noised is the ground truth's for half of the samples, and the detached first
        prediction's for the other half (the DDPS trick against inference offset); the target is always
        the ground-truth latent.
        """
        b = x.shape[0]
        features, quarter = self.semantic(x)
        first = self.first_head(F.leaky_relu(features, 0.01)).float()
        first_prob = torch.softmax(first, dim=1)
        z_gt = self.autoencoder.encode(onehot.to(x.dtype))
        z_first_detached = self.autoencoder.encode(first_prob.detach().to(x.dtype))
        use_gt = (torch.rand(b, device=x.device) < 0.5)[:, None, None, None]
        z_src = torch.where(use_gt, z_gt.detach(), z_first_detached)
        t = torch.randint(1, self.cfg.timesteps + 1, (b,), device=x.device)
        z_t = self.schedule.add_noise(z_src, torch.randn_like(z_src), t)
        z0_pred = self.denoise(quarter, z_t, t)
        decoded = self.autoencoder.decode(z0_pred).float()
        final = self.posterior(features, quarter, z0_pred, torch.log_softmax(decoded, dim=1))
        z_first = self.autoencoder.encode(first_prob.to(x.dtype))
        final0 = self.posterior(features, quarter, z_first, torch.log_softmax(first, dim=1))
        return TrainingOutputs(final, final0, first, decoded, self.autoencoder.decode(z_gt).float(), z0_pred,
                               z_gt.detach())


def build_model(cfg: ArchitectureConfig) -> nn.Module:
    if cfg.kind == "dssm":
        return DSSM(cfg)
    if cfg.kind == "baseline":
        return DiscriminativeBaseline(cfg)
    raise ValueError(f"unknown architecture kind {cfg.kind!r} (expected 'dssm' or 'baseline')")
