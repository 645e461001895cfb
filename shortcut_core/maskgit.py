"""The MaskGIT base transformer (valeoai Halton-MaskGIT v1.0 layout).

Sequence: ``grid*grid`` image tokens (row-major) followed by one class token.
Ids: codes ``0..codebook-1``, ``[MASK] = codebook``, class ``c -> codebook + 1 + c``,
"no class" ``codebook + 1 + num_classes``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .configs import JsonConfig
from .layers import Attention, FeedForward, PreNorm


@dataclass(frozen=True)
class MaskGITConfig(JsonConfig):
    hidden: int = 768
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 3072
    grid: int = 32
    codebook_size: int = 1024
    num_classes: int = 1000
    dropout: float = 0.0

    @property
    def num_image_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def seq_len(self) -> int:
        return self.num_image_tokens + 1

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def null_class(self) -> int:
        """Class index that selects the unconditional ("no class") token."""
        return self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 1 + self.num_classes + 1




MASKGIT_PRESETS = {
    "maskgit-imagenet512": MaskGITConfig(),
    "maskgit-imagenet256": MaskGITConfig(grid=16),
}


class MaskGIT(nn.Module):
    def __init__(self, config: MaskGITConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.hidden)
        self.pos_emb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, c.seq_len, c.hidden), 0.0, 0.02))
        self.first_layer = nn.Sequential(
            nn.LayerNorm(c.hidden, eps=1e-12),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.hidden),
            nn.GELU(),
            nn.LayerNorm(c.hidden, eps=1e-12),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.hidden),
        )
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(c.hidden, Attention(c.hidden, c.heads, c.dropout)),
                    PreNorm(c.hidden, FeedForward(c.hidden, c.mlp_dim, c.dropout)),
                ]
            )
            for _ in range(c.depth)
        )
        self.last_layer = nn.Sequential(
            nn.LayerNorm(c.hidden, eps=1e-12),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.hidden),
            nn.GELU(),
            nn.LayerNorm(c.hidden, eps=1e-12),
        )
        self.bias = nn.Parameter(torch.zeros(c.seq_len, c.vocab_size))

    def sequence(self, tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, grid*grid) image ids and (B,) class indices (``null_class`` = none) -> (B, T) ids."""
        c = self.config
        cls_ids = classes.to(tokens.device, torch.long) + c.codebook_size + 1
        return torch.cat([tokens.flatten(1), cls_ids[:, None]], dim=1)

    def features(self, tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Final-layer feature (the state the shortcut predicts): (B, T, hidden)."""
        x = self.tok_emb(self.sequence(tokens, classes)) + self.pos_emb
        x = self.first_layer(x)
        for attn, ff in self.transformer.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.last_layer(x)

    def logits(self, feat: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Tied head over image codes.

        ``positions`` (B, k) picks image positions so a step pays only for the tokens it
        still has to sample -> (B, k, codebook); None gives every image position.
        """
        if positions is None:
            return self.head(feat[:, : self.config.num_image_tokens])
        return self.head(torch.gather(feat, 1, positions[..., None].expand(-1, -1, feat.shape[-1])), positions)

    def head(self, picked: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Features already picked at image ``positions`` (B, k) (None: all, in order) -> logits, in their dtype."""
        c = self.config
        bias = self.bias[: c.num_image_tokens, : c.codebook_size]
        weight = self.tok_emb.weight[: c.codebook_size].to(picked.dtype)
        if positions is None:
            return picked @ weight.T + bias.to(picked.dtype)
        # The product accumulates into the gathered biases: one pass over the (.., k, codebook)
        # logits fewer than adding them after, which on a small model is a tenth of a sampling step.
        logits = bias[positions].to(picked.dtype)
        return logits.view(-1, logits.shape[-1]).addmm_(picked.reshape(-1, picked.shape[-1]), weight.T).view_as(logits)

    def forward(self, tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(tokens, classes))
