"""The taming-transformers VQGAN: the image tokenizer of MaskGIT ImageNet-512.

An encoder turns an image in [-1, 1] into a grid of latents, each latent is replaced by
its nearest codebook vector (that vector's index is the image token), and a decoder turns
the quantised grid back into an image. With the published f16 preset a 512 x 512 image
becomes 32 x 32 tokens drawn from 1024 codes.

Attribute names follow taming's `VQModel`, so the released `last.ckpt` state dict, minus
its `loss.*` keys, loads with `strict=True`:

    encoder.{conv_in, down.{i}.block.{j}, down.{i}.attn.{j}, down.{i}.downsample.conv,
             mid.{block_1, attn_1, block_2}, norm_out, conv_out}
    quant_conv, quantize.embedding.weight, post_quant_conv
    decoder.{conv_in, mid.{block_1, attn_1, block_2}, up.{i}.block.{j}, up.{i}.attn.{j},
             up.{i}.upsample.conv, norm_out, conv_out}

Level i of both encoder (`down[i]`) and decoder (`up[i]`) works at `resolution // 2**i`;
`up[0]` is the full-resolution level, even though the decoder runs it last.

Group norm: taming always uses GroupNorm(32 groups, eps 1e-6). Here a layer with fewer
than 32 channels gets one group per channel (`min(32, channels)` groups) so that tiny test
configs can be built; taming itself cannot build those. Every width of 32 or more must be
a multiple of 32, exactly as in taming.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
import yaml
from einops import rearrange
from torch import nn

from .configs import JsonConfig

Losses = dict[str, torch.Tensor]  # {"codebook", "commitment", "total"}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VQGANConfig(JsonConfig):
    """Everything that fixes the architecture: taming's `embed_dim`, `n_embed` and `ddconfig`."""

    embed_dim: int  # width of one codebook vector
    n_embed: int  # codebook size (number of image token ids)
    z_channels: int  # encoder output / decoder input width
    resolution: int  # nominal image size: only decides which levels get attention
    in_channels: int
    out_ch: int
    ch: int  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...]  # one entry per level; len(ch_mult) - 1 halvings
    num_res_blocks: int  # ResnetBlocks per encoder level (each decoder level has one more)
    attn_resolutions: tuple[int, ...]  # level i has attention if resolution // 2**i is listed
    dropout: float
    double_z: bool = False  # a KL-autoencoder setting; a VQGAN needs False

    def __post_init__(self) -> None:
        for name in ("embed_dim", "n_embed", "z_channels", "resolution", "in_channels",
                     "out_ch", "ch", "num_res_blocks"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"VQGANConfig.{name} must be a positive integer, got {value!r}")
        for name in ("ch_mult", "attn_resolutions"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise ValueError(f"VQGANConfig.{name} must be a list of integers, got {values!r}")
            values = tuple(values)
            if not all(_is_int(v) and v >= 1 for v in values):
                raise ValueError(f"VQGANConfig.{name} must hold positive integers, got {values!r}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        if not self.ch_mult:
            raise ValueError("VQGANConfig.ch_mult needs at least one level")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VQGANConfig.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if not isinstance(self.double_z, bool):
            raise ValueError(f"VQGANConfig.double_z must be true or false, got {self.double_z!r}")
        if self.resolution % self.downsample_factor:
            raise ValueError(f"VQGANConfig.resolution {self.resolution} must be a multiple of the "
                             f"downsample factor {self.downsample_factor}")
        for width in (self.ch, *(self.ch * m for m in self.ch_mult)):
            if width >= 32 and width % 32:
                raise ValueError(f"a VQGAN layer of width {width} (ch {self.ch} x ch_mult) cannot "
                                 "use 32-group GroupNorm; use widths that are multiples of 32 "
                                 "(or below 32)")

    @property
    def downsample_factor(self) -> int:
        """Image pixels per token along each side (16 for the f16 preset)."""
        return 2 ** (len(self.ch_mult) - 1)

    def level_has_attention(self, level: int) -> bool:
        return self.resolution // 2 ** level in self.attn_resolutions




def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


VQGAN_PRESETS: dict[str, VQGANConfig] = {
    # taming's ImageNet f16 model with 1024 codes, the tokenizer of MaskGIT ImageNet-512.
    "imagenet-f16-1024": VQGANConfig(
        embed_dim=256, n_embed=1024, z_channels=256, resolution=256, in_channels=3,
        out_ch=3, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
        attn_resolutions=(16,), dropout=0.0,
    ),
}


# --------------------------------------------------------------------------- building blocks


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """taming's GroupNorm(32, eps 1e-6); below 32 channels, one group per channel."""
    return nn.GroupNorm(min(32, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)  # identity at p = 0
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                             if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1 convs as projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head spanning all channels
        q, k, v = (rearrange(proj(h), "b c h w -> b 1 (h w) c")
                   for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve the size: pad one pixel right and bottom, then a 3x3 conv with stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the size: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResnetBlocks, each followed by an AttnBlock if the level has attention.

    The encoder adds a `downsample` and the decoder an `upsample` attribute to every level
    but the last one they run, as taming does.
    """

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, attention: bool,
                 dropout: float):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels, dropout)
            for j in range(n_blocks)
        )
        n_attn = n_blocks if attention else 0
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(n_attn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x


class MidBlock(nn.Module):
    """ResnetBlock, AttnBlock, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, z_channels, H/f, W/f)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        n_levels = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = Level(width, cfg.ch * mult, cfg.num_res_blocks, cfg.level_has_attention(i),
                          cfg.dropout)
            width = cfg.ch * mult
            if i != n_levels - 1:
                level.downsample = Downsample(width)
            self.down.append(level)
        self.mid = MidBlock(width, cfg.dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels,
                                  3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_ch, h*f, w*f); runs `up` from the last level to up[0]."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        n_levels = len(cfg.ch_mult)
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = MidBlock(width, cfg.dropout)
        levels = []
        for i in reversed(range(n_levels)):
            level = Level(width, cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1,
                          cfg.level_has_attention(i), cfg.dropout)
            width = cfg.ch * cfg.ch_mult[i]
            if i != 0:
                level.upsample = Upsample(width)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))  # indexed by level: up[0] is full resolution
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-vector quantisation with a straight-through gradient.

    Losses (VQ-VAE): codebook = |sg[z] - e|^2, commitment = |z - sg[e]|^2,
    total = codebook + beta * commitment with beta = 0.25. (taming's default `legacy=True`
    puts beta on the codebook term instead; it does not change the forward pass.)
    """

    # Largest (rows x codes) block of distances computed at once: 16 M floats = 64 MB.
    max_distance_elements = 1 << 24

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    @torch.no_grad()
    def nearest_ids(self, z: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) latents -> (B, h, w) ids of the nearest codes (squared L2)."""
        b, _, h, w = z.shape
        flat = rearrange(z, "b c h w -> (b h w) c").float()
        codebook = self.embedding.weight.float()  # (K, C)
        code_sq = codebook.square().sum(dim=1)  # (K,)
        ids = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        rows = max(1, self.max_distance_elements // self.n_embed)
        for start in range(0, flat.shape[0], rows):
            part = flat[start:start + rows]
            # |z - e|^2 = |z|^2 - 2 z.e + |e|^2, and |z|^2 is the same for every code
            dist = torch.addmm(code_sq, part, codebook.t(), alpha=-2.0)  # (rows, K)
            ids[start:start + rows] = dist.argmin(dim=1)
        return rearrange(ids, "(b h w) -> b h w", b=b, h=h, w=w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, embed_dim, h, w) codebook vectors."""
        if ids.dim() != 3:
            raise ValueError(f"expected token ids of shape (B, h, w), got {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be an integer tensor, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_embed):
            raise ValueError(f"token ids must lie in [0, {self.n_embed - 1}], got "
                             f"[{int(ids.min())}, {int(ids.max())}] (is a [MASK] id left?)")
        return rearrange(self.embedding(ids.long()), "b h w c -> b c h w")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Losses]:
        """z (B, C, h, w) -> (z_q, ids (B, h, w), {"codebook", "commitment", "total"})."""
        ids = self.nearest_ids(z)
        z_q = rearrange(self.embedding(ids), "b h w c -> b c h w").to(z.dtype)
        codebook = F.mse_loss(z_q, z.detach())
        commitment = F.mse_loss(z, z_q.detach())
        losses = {"codebook": codebook, "commitment": commitment,
                  "total": codebook + self.beta * commitment}
        if z.requires_grad:
            z_q = z + (z_q - z).detach()  # straight through: forward z_q, gradient to z
        return z_q, ids, losses


# --------------------------------------------------------------------------- the model


class VQGAN(nn.Module):
    """Images in [-1, 1] <-> grids of token ids. Build from a `VQGANConfig`."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        if config.double_z:
            raise ValueError("VQGANConfig.double_z=True is a KL-autoencoder setting; a VQGAN's "
                             "encoder must output z_channels (set double_z to false)")
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim, beta=0.25)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    def encode_continuous(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) in [-1, 1] -> latents before quantisation (B, embed_dim, h, w)."""
        cfg = self.config
        f = cfg.downsample_factor
        if images.dim() != 4 or images.shape[1] != cfg.in_channels:
            raise ValueError(f"expected images of shape (B, {cfg.in_channels}, H, W), "
                             f"got {tuple(images.shape)}")
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image size {tuple(images.shape[2:])} must be a multiple of the "
                             f"VQGAN's downsample factor {f}")
        return self.quant_conv(self.encoder(images))

    def quantize_latents(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Losses]:
        """Latents -> (z_q with a straight-through gradient, ids (B, h, w), losses).

        losses: {"codebook", "commitment", "total" = codebook + 0.25 commitment}.
        """
        return self.quantize(z)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) in [-1, 1] -> token ids (B, H/f, W/f), dtype long."""
        return self.quantize.nearest_ids(self.encode_continuous(images))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) quantised latents -> images (B, out_ch, h*f, w*f), about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) -> images (B, out_ch, h*f, w*f), roughly in [-1, 1] (not clamped)."""
        return self.decode_latents(self.quantize.lookup(ids))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, vq loss = codebook + 0.25 commitment, ids)."""
        z_q, ids, losses = self.quantize_latents(self.encode_continuous(images))
        return self.decode_latents(z_q), losses["total"], ids


# --------------------------------------------------------------------------- configs from files


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"state dict has no {key!r}: not a taming VQGAN state dict "
                         "(strip any prefix such as 'first_stage_model.' first)")
    return tuple(state_dict[key].shape)


def infer_vqgan_config(state_dict: Mapping[str, Any], resolution: int | None = None) -> VQGANConfig:
    """Rebuild the config of a taming VQGAN from its state-dict shapes (`loss.*` keys are ignored).

    A state dict records at which levels attention sits, not the nominal resolution. Given
    `resolution`, attn_resolutions is `resolution // 2**level` for those levels. Without it,
    the lowest level is taken to be 16 pixels wide, as in taming's f16 configs:
    `resolution = 16 * 2**(len(ch_mult) - 1)` (256 for the 5-level f16 model). Either way
    the rebuilt model has the same layers and key shapes; only the nominal numbers differ.
    """
    ch, in_channels = _shape(state_dict, "encoder.conv_in.weight")[:2]  # (out, in, 3, 3)
    blocks: dict[int, set[int]] = {}
    enc_attn, dec_attn = set(), set()
    for key in state_dict:
        if m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight", key):
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
        elif m := re.fullmatch(r"encoder\.down\.(\d+)\.attn\.0\.q\.weight", key):
            enc_attn.add(int(m[1]))
        elif m := re.fullmatch(r"decoder\.up\.(\d+)\.attn\.0\.q\.weight", key):
            dec_attn.add(int(m[1]))
    n_levels = len(blocks)
    if sorted(blocks) != list(range(n_levels)) or n_levels == 0:
        raise ValueError(f"state dict encoder levels {sorted(blocks)} are not 0..n-1")
    num_res_blocks = len(blocks[0])
    if any(sorted(b) != list(range(num_res_blocks)) for b in blocks.values()):
        raise ValueError("state dict encoder levels hold different numbers of ResnetBlocks")
    ch_mult = []
    for i in range(n_levels):
        width = _shape(state_dict, f"encoder.down.{i}.block.0.conv1.weight")[0]
        if width % ch:
            raise ValueError(f"level {i} width {width} is not a multiple of ch {ch}")
        ch_mult.append(width // ch)
    if enc_attn != dec_attn:
        raise ValueError(f"encoder attention levels {sorted(enc_attn)} differ from decoder's "
                         f"{sorted(dec_attn)}; taming places both from one attn_resolutions")
    if resolution is None:
        resolution = 16 * 2 ** (n_levels - 1)
    n_embed, embed_dim = _shape(state_dict, "quantize.embedding.weight")
    z_channels = _shape(state_dict, "decoder.conv_in.weight")[1]
    encoder_out = _shape(state_dict, "encoder.conv_out.weight")[0]
    if encoder_out not in (z_channels, 2 * z_channels):
        raise ValueError(f"encoder.conv_out has {encoder_out} outputs but decoder.conv_in reads "
                         f"{z_channels} channels")
    return VQGANConfig(
        embed_dim=embed_dim, n_embed=n_embed, z_channels=z_channels, resolution=resolution,
        in_channels=in_channels, out_ch=_shape(state_dict, "decoder.conv_out.weight")[0],
        ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
        attn_resolutions=tuple(resolution // 2 ** i for i in sorted(enc_attn)),
        dropout=0.0, double_z=encoder_out != z_channels,
    )


def parse_taming_yaml(text: str, source: str = "model.yaml") -> VQGANConfig:
    """Config from the text of a taming `model.yaml` (model.params.{embed_dim, n_embed, ddconfig}).

    Read with PyYAML's ``safe_load``. A missing `double_z` means false, `dropout` means 0.
    ``source`` names the file in error messages.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ValueError(f"{source} is not valid YAML{where}: {problem}; "
                         f"use the model.yaml that came with the taming VQGAN checkpoint") from None
    params = doc
    if isinstance(params, dict) and isinstance(params.get("model"), dict):
        params = params["model"]
    if isinstance(params, dict) and isinstance(params.get("params"), dict):
        params = params["params"]
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        raise ValueError(f"{source} has no model.params.ddconfig mapping; is it a taming VQGAN config?")
    dd = params["ddconfig"]
    try:
        return VQGANConfig(
            embed_dim=params["embed_dim"], n_embed=params["n_embed"],
            z_channels=dd["z_channels"], resolution=dd["resolution"],
            in_channels=dd["in_channels"], out_ch=dd["out_ch"], ch=dd["ch"],
            ch_mult=dd["ch_mult"], num_res_blocks=dd["num_res_blocks"],
            attn_resolutions=dd["attn_resolutions"] or (), dropout=dd.get("dropout", 0.0),
            double_z=dd.get("double_z", False),
        )
    except KeyError as err:
        where = "model.params" if err.args[0] in ("embed_dim", "n_embed") else "model.params.ddconfig"
        raise ValueError(f"{source} lacks {where}.{err.args[0]}; is it a taming VQGAN config?") from None
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
