"""The LLaDA-shaped bidirectional transformer behind Lumina-DiMOO.

Parameter names follow the published checkpoint, so loading is a key copy:
``model.transformer.wte``, ``model.transformer.blocks.{i}.{attn_norm, q_proj, k_proj,
v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out}``, ``model.transformer.ln_f``,
``model.transformer.ff_out``.

The feature the shortcut predicts is the output of ``ln_f`` over the whole sequence
(prompt, specials and image tokens); image logits are ``ff_out`` rows
``image_offset … image_offset + codebook_size - 1`` applied at the positions asked for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LLaDAConfig


class RMSNorm(nn.Module):
    """``weight * x / rms(x)``; the normalisation runs in float32, as upstream."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n) integer positions -> (cos, sin), each (B, 1, n, head_dim) float32.

    Frequencies ``theta^(-2i/d)`` for i < d/2, laid out twice ([f, f]) for the
    half-rotation convention LLaDA uses.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    freqs = positions.float()[..., None] * inv_freq  # (B, n, d/2)
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, n, d)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate (B, H, n, d) by the angles of ``rope_angles`` in float32: x·cos + rotate_half(x)·sin."""
    cos, sin = rope
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Non-causal attention over (B, H, n, d); ``key_mask`` (B, nk) bool, True = attend.

    A row whose mask has no True key gets a zero output (nothing to attend to) instead
    of the NaN a fully masked softmax gives.
    """
    if k.shape[-2] == 0:
        return torch.zeros_like(q)
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    has_key = key_mask.any(dim=-1)  # (B,)
    safe = key_mask | ~has_key[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :])
    return out * has_key[:, None, None, None].to(out.dtype)


class LLaDABlock(nn.Module):
    """Pre-norm attention + SwiGLU feed-forward, no biases.

    ``forward`` is the self-attention block of the base model; ``attend`` and
    ``feed_forward`` are exposed so the shortcut's cross-attention block can reuse the
    same parameters with keys and values taken from other tokens.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.attn_norm = RMSNorm(dim, eps)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.ff_norm = RMSNorm(dim, eps)
        self.ff_proj = nn.Linear(dim, mlp_hidden, bias=False)  # gated: silu(ff_proj(x))
        self.up_proj = nn.Linear(dim, mlp_hidden, bias=False)
        self.ff_out = nn.Linear(mlp_hidden, dim, bias=False)

    def attend(self, x_normed: torch.Tensor, kv_normed: torch.Tensor, q_rope, k_rope,
               key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output (before the residual) of queries from ``x_normed`` over ``kv_normed``."""
        # (B, n, C) -> (B, H, n, C/H)
        q, k, v = (
            proj(t).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for proj, t in ((self.q_proj, x_normed), (self.k_proj, kv_normed), (self.v_proj, kv_normed))
        )
        q, k = apply_rope(q, q_rope), apply_rope(k, k_rope)
        out = attention(q, k, v, key_mask)
        # (B, H, n, C/H) -> (B, n, C)
        return self.attn_out(out.transpose(1, 2).flatten(2))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + ff_out(silu(ff_proj(h)) * up_proj(h))`` with ``h = ff_norm(x)``."""
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))

    def forward(self, x: torch.Tensor, rope, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.attend(h, h, rope, rope, key_mask)
        return self.feed_forward(x)


class LLaDA(nn.Module):
    """Lumina-DiMOO's base transformer. ``features`` -> ``ln_f`` output; ``image_logits`` -> head."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = c = config
        self.model = nn.Module()  # nesting of the published names: model.transformer.*
        self.model.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.d_model),
            blocks=nn.ModuleList(LLaDABlock(c.d_model, c.n_heads, c.mlp_hidden, c.rms_eps) for _ in range(c.n_layers)),
            ln_f=RMSNorm(c.d_model, c.rms_eps),
            ff_out=nn.Linear(c.d_model, c.vocab_size, bias=False),
        ))

    @property
    def transformer(self) -> nn.ModuleDict:
        return self.model.transformer

    @property
    def wte(self) -> nn.Embedding:
        return self.model.transformer.wte

    @property
    def image_head_weight(self) -> torch.Tensor:
        """(codebook_size, d_model): the head rows of the image codes."""
        c = self.config
        return self.transformer.ff_out.weight[c.image_offset: c.image_offset + c.codebook_size]

    def features(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, L, d_model) output of ``ln_f``.

        ``positions`` (B, L) long, default 0…L−1 per row. ``attention_mask`` (B, L) bool,
        True for real tokens; padded keys are never attended to (padded queries give
        values nobody should read).
        """
        B, L = ids.shape
        if positions is None:
            positions = torch.arange(L, device=ids.device).expand(B, L)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        t = self.transformer
        rope = rope_angles(positions, self.config.head_dim, self.config.rope_theta)
        x = t.wte(ids)
        for block in t.blocks:
            x = block(x, rope, attention_mask)
        return t.ln_f(x)

    def image_logits(self, feat: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, L, d) features and (B, k) positions -> (B, k, codebook_size) image-code logits."""
        picked = feat.gather(1, positions[..., None].expand(-1, -1, feat.shape[-1]))  # (B, k, d)
        weight = self.image_head_weight
        return F.linear(picked.to(weight.dtype), weight)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.features(ids, positions, attention_mask)
