"""Batch augmentation on the training device (GPU or CPU), in torch.

Spatial: rotation, isotropic and anisotropic scale, translation and flips, applied with one affine grid to
image and label together; the crop is sampled from the cached tile. Intensity: gamma, contrast,
brightness, a smooth multiplicative bias field, simulated low resolution (down- then up-sampling),
blur and Gaussian noise. All of it makes the models hold up on inputs at other sizes, spacings, scanners
and sites than the training copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    rotation_deg: float = 180.0
    scale: Tuple[float, float] = (0.75, 1.35)
    aspect: float = 0.1
    translate: float = 0.1
    flip_x: bool = True
    flip_y: bool = True
    gamma: Tuple[float, float] = (0.7, 1.5)
    contrast: Tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.15
    bias_field: float = 0.3
    low_res: float = 0.25  # probability of simulating a coarser acquisition
    low_res_factor: Tuple[float, float] = (1.5, 2.5)  # how much coarser
    low_res_aniso: bool = False  # a coarser acquisition in one in-plane direction than the other (phase encoding)
    gamma_invert: float = 0.0  # probability of the gamma on the inverted image: 1 - (1 - x) ** gamma
    noise: float = 0.1
    blur: float = 0.15
    color: float = 0.0  # per-channel gain jitter for RGB images

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "AugmentConfig":
        d = dict(d or {})
        for key in ("scale", "gamma", "contrast", "low_res_factor"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _uniform(n: int, lo: float, hi: float, device, generator=None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo


def spatial(images: torch.Tensor, labels: torch.Tensor, out_hw: Tuple[int, int], cfg: AugmentConfig,
            generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random affine crop of ``out_hw`` from (B, C, H, W) images and (B, H, W) integer labels."""
    b, _, h, w = images.shape
    dev = images.device
    angle = _uniform(b, -1, 1, dev, generator) * math.radians(cfg.rotation_deg)
    log_s = _uniform(b, math.log(cfg.scale[0]), math.log(cfg.scale[1]), dev, generator)
    aspect = _uniform(b, -cfg.aspect, cfg.aspect, dev, generator)
    # The grid maps output pixels into the tile: a zoom factor s > 1 makes structures look bigger,
    # so the grid spans 1/s of the tile's extent (times the output/tile size ratio).
    sx = torch.exp(-(log_s + aspect)) * (out_hw[1] / w)
    sy = torch.exp(-(log_s - aspect)) * (out_hw[0] / h)
    fx = torch.where((torch.rand(b, device=dev, generator=generator) < 0.5) & cfg.flip_x, -1.0, 1.0)
    fy = torch.where((torch.rand(b, device=dev, generator=generator) < 0.5) & cfg.flip_y, -1.0, 1.0)
    tx = _uniform(b, -cfg.translate, cfg.translate, dev, generator) * 2
    ty = _uniform(b, -cfg.translate, cfg.translate, dev, generator) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # input = R(angle) @ diag(sx * fx, sy * fy) @ output + t
    theta = torch.stack([
        torch.stack([cos * sx * fx, -sin * sy * fy, tx], dim=1),
        torch.stack([sin * sx * fx, cos * sy * fy, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, (b, 1, out_hw[0], out_hw[1]), align_corners=False)
    fill = images.amin(dim=(2, 3), keepdim=True)
    img = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, lab[:, 0].long()


def _smooth_field(b: int, hw, device, generator, cells: int = 4) -> torch.Tensor:
    coarse = torch.randn(b, 1, cells, cells, device=device, generator=generator)
    return F.interpolate(coarse, size=hw, mode="bicubic", align_corners=False)


def intensity(images: torch.Tensor, cfg: AugmentConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Intensity augmentation on z-scored images (B, C, H, W); keeps them roughly z-scored."""
    b, c, h, w = images.shape
    dev = images.device
    x = images
    # gamma on a [0, 1] rescaling of each image
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    unit = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    gamma = torch.exp(_uniform(b, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), dev, generator))
    if cfg.gamma_invert > 0:
        invert = (torch.rand(b, device=dev, generator=generator) < cfg.gamma_invert)[:, None, None, None]
        unit = torch.where(invert, 1 - (1 - unit) ** gamma[:, None, None, None], unit ** gamma[:, None, None, None])
    else:
        unit = unit ** gamma[:, None, None, None]
    x = unit * (hi - lo) + lo
    if cfg.bias_field > 0:
        field = torch.exp(cfg.bias_field * _smooth_field(b, (h, w), dev, generator).clamp(-2, 2) / 2)
        x = (x - lo) * field + lo
    contrast = _uniform(b, *cfg.contrast, dev, generator)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + _uniform(b, -cfg.brightness, cfg.brightness, dev, generator)[:, None, None, None]
    if cfg.color > 0 and c > 1:
        gain = 1 + _uniform(b * c, -cfg.color, cfg.color, dev, generator).view(b, c, 1, 1)
        x = x * gain
    if cfg.low_res > 0:
        pick = torch.rand(b, device=dev, generator=generator) < cfg.low_res
        if pick.any():
            factor = float(_uniform(1, *cfg.low_res_factor, dev, generator))
            # anisotropic: the other direction 1.3-2x finer (as phase encoding against readout), at most native
            factors = ((factor, max(1.0, factor / float(_uniform(1, 1.3, 2.0, dev, generator))))
                       if cfg.low_res_aniso else (factor, factor))
            if cfg.low_res_aniso and float(torch.rand(1, device=dev, generator=generator)) < 0.5:
                factors = factors[::-1]
            small_hw = (max(8, round(h / factors[0])), max(8, round(w / factors[1])))
            small = F.interpolate(x[pick], size=small_hw, mode="bilinear", align_corners=False, antialias=True)
            x = x.clone()
            x[pick] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    if cfg.blur > 0:
        pick = torch.rand(b, device=dev, generator=generator) < cfg.blur
        if pick.any():
            k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
            k = (k[:, None] * k[None]) / 256.0
            kernel = k.expand(c, 1, 5, 5).to(x.dtype)
            x = x.clone()
            x[pick] = F.conv2d(F.pad(x[pick], (2, 2, 2, 2), mode="replicate"), kernel, groups=c)
    if cfg.noise > 0:
        sigma = _uniform(b, 0, cfg.noise, dev, generator)[:, None, None, None]
        x = x + sigma * torch.randn(x.shape, device=dev, generator=generator)
    return x
