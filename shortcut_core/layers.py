"""Building blocks shared by the MaskGIT base model and its shortcut.

Attribute names follow the published checkpoints (``norm``, ``fn.mha.in_proj_weight``,
``fn.net.0`` ...) so that importing a released state dict is a plain key copy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PackedMultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s packed parameters.

    The published weights store q, k and v projections stacked in one
    ``in_proj_weight`` (3C, C); we keep that layout but run the attention through
    ``scaled_dot_product_attention`` so the fused kernels are used.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, Tq, C = query.shape
        if context is None:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj_weight.split([C, 2 * C])
            b_q, b_kv = self.in_proj_bias.split([C, 2 * C])
            q = F.linear(query, w_q, b_q)
            k, v = F.linear(context, w_kv, b_kv).chunk(2, dim=-1)
        # (B, T, C) -> (B, H, T, C/H)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        # (B, H, T, C/H) -> (B, T, C)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class Attention(nn.Module):
    """Holds the attention under the name ``mha`` as the published checkpoints do."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.mha = PackedMultiheadAttention(dim, heads, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.mha(x, context)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gelu, drop_hidden, down, drop_out = self.net
        hidden = up(x)
        if hidden.requires_grad:
            hidden = gelu(hidden)
        else:
            # In place when autograd needs nothing: a fresh buffer four times the width per layer
            # costs page faults on a CPU, about a tenth of a MaskGIT-512 forward; same values.
            hidden = torch.ops.aten.gelu_(hidden, approximate=gelu.approximate)
        return drop_out(down(drop_hidden(hidden)))


class PreNorm(nn.Module):
    """LayerNorm on the input only; a cross-attention context passes through unnormalised.

    This matches the reference, where the shortcut's keys and values are the raw
    (not normalised) new tokens or features.
    """

    def __init__(self, dim: int, fn: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fn = fn

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x), *context)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a (B,) tensor of possibly fractional times -> (B, dim), [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """DiT-style MLP over the sinusoidal embedding; hidden width round(sqrt(out * freq))."""

    def __init__(self, out_dim: int, frequency_size: int = 256):
        super().__init__()
        mid = round(math.sqrt(out_dim * frequency_size))
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, mid), nn.SiLU(), nn.Linear(mid, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
