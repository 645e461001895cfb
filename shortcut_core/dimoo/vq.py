"""Decoder half of the aMUSEd-style VQ model in Lumina-DiMOO's ``vqvae/`` folder.

The folder is a diffusers ``VQModel`` (config.json + diffusion_pytorch_model.safetensors).
Module names equal diffusers', so its weights load unchanged; the encoder half
(``encoder.*``, ``quant_conv.*``) is not built and its keys are skipped.

Decode: ids (B, h, w) -> codebook rows (``quantize.embedding``) -> ``post_quant_conv`` ->
``decoder`` (conv_in, mid block, up blocks with nearest x2 upsampling, GroupNorm, SiLU,
conv_out). The output is roughly in [0, 1] (aMUSEd clips it to [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import JsonConfig


@dataclass(frozen=True)
class VQConfig(JsonConfig):
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512, 768)
    layers_per_block: int = 2
    latent_channels: int = 64
    num_vq_embeddings: int = 8192
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None  # None: latent_channels
    mid_block_add_attention: bool = False

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim or self.latent_channels

    @property
    def scale(self) -> int:
        """Pixels per token along each side (16 for DiMOO's VQ)."""
        return 2 ** (len(self.block_out_channels) - 1)



    @classmethod
    def from_diffusers_config(cls, d: dict) -> "VQConfig":
        """Read a diffusers ``VQModel`` config.json; refuses variants this decoder does not build."""
        name = d.get("_class_name", "VQModel")
        if name != "VQModel":
            raise ValueError(f"vqvae/config.json describes a {name!r}, not a diffusers VQModel")
        problems = []
        if d.get("norm_type", "group") != "group":
            problems.append(f"norm_type={d.get('norm_type')!r} (only 'group')")
        if d.get("act_fn", "silu") != "silu":
            problems.append(f"act_fn={d.get('act_fn')!r} (only 'silu')")
        ups = d.get("up_block_types", ["UpDecoderBlock2D"])
        if any(u != "UpDecoderBlock2D" for u in ups):
            problems.append(f"up_block_types={ups}")
        blocks = d.get("block_out_channels", [64])
        if len(ups) != len(blocks):
            problems.append(f"{len(ups)} up blocks for {len(blocks)} channel entries")
        if problems:
            raise ValueError("unsupported VQ model in vqvae/config.json: " + "; ".join(problems))
        return cls(
            in_channels=int(d.get("in_channels", 3)), out_channels=int(d.get("out_channels", 3)),
            block_out_channels=tuple(blocks), layers_per_block=int(d.get("layers_per_block", 1)),
            latent_channels=int(d.get("latent_channels", 3)), num_vq_embeddings=int(d.get("num_vq_embeddings", 256)),
            norm_num_groups=int(d.get("norm_num_groups", 32)), vq_embed_dim=d.get("vq_embed_dim"),
            mid_block_add_attention=bool(d.get("mid_block_add_attention", True)),
        )


class ResnetBlock2D(nn.Module):
    """GroupNorm, SiLU, conv3x3, twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SpatialSelfAttention(nn.Module):
    """diffusers' single-head mid-block attention over the h*w positions, with residual."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        q, k, v = (proj(h)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(h.dtype)[:, 0]
        out = self.to_out[0](out).transpose(1, 2).reshape(B, C, H, W)  # (B, HW, C) -> (B, C, H, W)
        return x + out


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, groups) for _ in range(2))
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)]) if add_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(num_layers))
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        channels = list(reversed(c.block_out_channels))
        g = c.norm_num_groups
        self.conv_in = nn.Conv2d(c.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], g, c.mid_block_add_attention)
        blocks, prev = [], channels[0]
        for i, cout in enumerate(channels):
            blocks.append(UpDecoderBlock2D(prev, cout, c.layers_per_block + 1, g, add_upsample=i < len(channels) - 1))
            prev = cout
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(g, channels[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(channels[-1], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Quantizer(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)


class VQDecoder(nn.Module):
    """ids (B, h, w) in 0…num_vq_embeddings−1 -> images (B, out_channels, h·scale, w·scale)."""

    # Keys of the folder's weights that belong to the (unbuilt) encoder half.
    ENCODER_PREFIXES = ("encoder.", "quant_conv.")

    def __init__(self, config: VQConfig = VQConfig()):
        super().__init__()
        self.config = c = config
        self.quantize = Quantizer(c.num_vq_embeddings, c.embed_dim)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.latent_channels, 1)
        self.decoder = Decoder(c)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 3:
            raise ValueError(f"VQ ids must be (B, h, w), got shape {tuple(ids.shape)}")
        n = self.config.num_vq_embeddings
        if bool((ids < 0).any()) or bool((ids >= n).any()):
            raise ValueError(f"VQ ids must be codes in 0..{n - 1} (subtract the image-token offset first)")
        z = self.quantize.embedding(ids).permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode(ids)


LEGACY_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def legacy_attention_key(key: str) -> str:
    """Old diffusers files name the mid-block attention query/key/value/proj_attn."""
    if ".attentions." in key:
        for old, new in LEGACY_ATTENTION_NAMES.items():
            key = key.replace(old, new)
    return key
