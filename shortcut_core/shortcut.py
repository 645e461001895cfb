"""The MaskGIT shortcut: predicts the next step's final-layer feature.

``f_{t+1} = prev + proj_out(adaLN(last_layer(blocks(proj_in(prev), new tokens))))``
where the new tokens are the codes revealed at step t plus their position embeddings,
both taken from the base model (frozen, not stored in the shortcut file).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .configs import JsonConfig
from .layers import Attention, FeedForward, PreNorm, TimestepEmbedder


@dataclass(frozen=True)
class ShortcutConfig(JsonConfig):
    family: str = "maskgit"
    dim: int = 768  # base model feature width
    width: int = 384  # bottleneck width: dim / bottleneck_ratio
    n_block: int = 1
    heads: int = 16
    mlp_ratio: int = 4
    embed_t: bool = True
    dropout: float = 0.0




def infer_shortcut_config(sd: dict) -> ShortcutConfig:
    """Architecture of a bare published MaskGIT shortcut state dict, read off its shapes."""
    if "proj_in.weight" not in sd or "blocks.0.cross_attn.fn.mha.in_proj_weight" not in sd:
        raise ValueError("this is not a MaskGIT shortcut state dict (no proj_in / blocks.0.cross_attn.fn.mha keys)")
    width, dim = sd["proj_in.weight"].shape
    n_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    hidden_ff = sd["blocks.0.cross_attn_ff.fn.net.0.weight"].shape[0]
    # Head count is not stored in the weights; the published models use 16.
    heads = ShortcutConfig.heads if width % ShortcutConfig.heads == 0 else 1
    return ShortcutConfig(dim=dim, width=width, n_block=n_block, heads=heads, mlp_ratio=hidden_ff // width,
                          embed_t="adaLN_modulation.weight" in sd)


SHORTCUT_PRESETS = {
    "maskgit-imagenet512": ShortcutConfig(),
}


class ShortcutBlock(nn.Module):
    """Cross-attention to the new tokens, then self-attention; each with a feed-forward."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.cross_attn = PreNorm(width, Attention(width, heads, dropout))
        self.cross_attn_ff = PreNorm(width, FeedForward(width, width * mlp_ratio, dropout))
        self.self_attn = PreNorm(width, Attention(width, heads, dropout))
        self.self_attn_ff = PreNorm(width, FeedForward(width, width * mlp_ratio, dropout))

    def forward(self, x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(x, new)
        x = x + self.cross_attn_ff(x)
        # Keys and values are the raw features, as in the reference: only queries are normed.
        x = x + self.self_attn(x, x)
        return x + self.self_attn_ff(x)


class MaskGITShortcut(nn.Module):
    def __init__(self, config: ShortcutConfig, tok_emb: torch.Tensor | None = None, pos_emb: torch.Tensor | None = None):
        super().__init__()
        self.config = c = config
        if c.family != "maskgit":
            raise ValueError(f"MaskGITShortcut cannot build a shortcut of family {c.family!r}")
        self.proj_in = nn.Linear(c.dim, c.width)
        self.proj_out = nn.Linear(c.width, c.dim)
        self.new_token_proj_in = nn.Linear(c.dim, c.width)
        self.blocks = nn.ModuleList(ShortcutBlock(c.width, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.n_block))
        self.last_layer = nn.Sequential(
            nn.LayerNorm(c.width, eps=1e-12), nn.Linear(c.width, c.width), nn.GELU(), nn.LayerNorm(c.width, eps=1e-12)
        )
        if c.embed_t:
            self.time_embedder = TimestepEmbedder(c.width)
            self.adaLN_modulation = nn.Linear(c.width, 2 * c.width)
        # Frozen views of the base model's embeddings; never saved with the shortcut.
        self.register_buffer("wte", torch.empty(0), persistent=False)
        self.register_buffer("wpe", torch.empty(0), persistent=False)
        if tok_emb is not None and pos_emb is not None:
            self.bind_embeddings(tok_emb, pos_emb)

    def bind_embeddings(self, tok_emb: torch.Tensor, pos_emb: torch.Tensor) -> None:
        """Attach the base model's token table (V, dim) and position table (1, T, dim)."""
        if tok_emb.shape[-1] != self.config.dim or pos_emb.shape[-1] != self.config.dim:
            raise ValueError(
                f"shortcut expects base features of width {self.config.dim}, but the base embeddings are "
                f"{tuple(tok_emb.shape)} and {tuple(pos_emb.shape)}; pick a shortcut trained for this model"
            )
        self.wte = tok_emb.detach()
        self.wpe = pos_emb.detach().reshape(-1, pos_emb.shape[-1])

    def new_token_embeddings(self, new_ids: torch.Tensor, new_positions: torch.Tensor) -> torch.Tensor:
        """(B, n) ids and sequence positions -> (B, n, dim) token + position embeddings."""
        return self.wte[new_ids] + self.wpe[new_positions]

    def forward(
        self,
        prev_feat: torch.Tensor,
        new_ids: torch.Tensor,
        new_positions: torch.Tensor,
        mask_ratio: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the next feature.

        prev_feat (B, T, dim); new_ids (B, n) at sequence positions new_positions (B, n), in
        increasing position order as the reference's (B, T) map of new tokens gives them;
        mask_ratio (B,) in [0, 1].
        """
        if self.wte.numel() == 0:
            raise RuntimeError("shortcut has no base embeddings; load it with load_shortcut(path, migm)")
        new = self.new_token_proj_in(self.new_token_embeddings(new_ids, new_positions).to(prev_feat.dtype))
        x = self.proj_in(prev_feat)
        for block in self.blocks:
            x = block(x, new)
        x = self.last_layer(x)
        if self.config.embed_t:
            emb = self.time_embedder(mask_ratio.to(prev_feat.device) * 1000)
            scale, shift = self.adaLN_modulation(emb)[:, None].chunk(2, dim=-1)  # (B, 1, width) each
            x = x * (1 + scale) + shift
        return self.proj_out(x) + prev_feat
