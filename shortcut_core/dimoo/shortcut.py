"""The DiMOO shortcut (``dimoo-shortcut.pth``): predicts the next ``ln_f`` feature.

    x   = proj_in(prev_feat)                                   # 4096 -> 2048
    new = new_token_proj_in(wte[new_ids])                      # 4096 -> 2048
    x   = x + cross.attend(q = attn_norm(x), k = v = attn_norm(new))   # RoPE below
    x   = cross.feed_forward(x)                                # SwiGLU
    x   = self_attn(x)                                         # a standard LLaDA block
    x   = ln_f(x)
    x   = x · (1 + scale) + shift,  (scale, shift) = adaLN_modulation(time_embedder(1000 · mask_ratio))
    out = proj_out(x) + prev_feat

RoPE: queries sit at 0…L−1; each key sits at its new token's absolute position in the
sequence of its own branch (the unconditional prompt is shorter, so one image token
has different positions in the two branches), row by row so batches work.
Embeddings come from the base model's ``wte``, bound with ``bind`` (never stored here).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointError
from ..layers import TimestepEmbedder
from .config import DiMOOShortcutConfig, LLaDAConfig
from .llada import LLaDABlock, RMSNorm, rope_angles


class ShortcutBlock(nn.Module):
    """A cross-attention LLaDA block over the new tokens, then a self-attention LLaDA block."""

    def __init__(self, c: DiMOOShortcutConfig):
        super().__init__()
        self.cross_attn = LLaDABlock(c.width, c.heads, c.mlp_hidden, c.rms_eps)
        self.self_attn = LLaDABlock(c.width, c.heads, c.mlp_hidden, c.rms_eps)

    def forward(self, x, new, q_rope, k_rope, new_valid, seq_valid) -> torch.Tensor:
        norm = self.cross_attn.attn_norm  # the same norm for queries and for keys/values
        x = x + self.cross_attn.attend(norm(x), norm(new), q_rope, k_rope, new_valid)
        x = self.cross_attn.feed_forward(x)
        return self.self_attn(x, q_rope, seq_valid)


class DiMOOShortcut(nn.Module):
    def __init__(self, config: DiMOOShortcutConfig = DiMOOShortcutConfig()):
        super().__init__()
        self.config = c = config
        self.proj_in = nn.Linear(c.dim, c.width)
        self.new_token_proj_in = nn.Linear(c.dim, c.width)
        self.blocks = nn.ModuleList(ShortcutBlock(c) for _ in range(c.n_block))
        self.ln_f = RMSNorm(c.width, c.rms_eps)
        if c.embed_t:
            self.time_embedder = TimestepEmbedder(c.width, c.frequency_size)
            if self.time_embedder.mlp[0].out_features != c.time_hidden:
                raise ValueError(
                    f"time MLP hidden {c.time_hidden} differs from round(sqrt({c.width}*{c.frequency_size})) = "
                    f"{self.time_embedder.mlp[0].out_features}, the only width this shortcut supports"
                )
            self.adaLN_modulation = nn.Linear(c.width, 2 * c.width)
        self.proj_out = nn.Linear(c.width, c.dim)
        object.__setattr__(self, "_wte", None)  # plain attribute: not a parameter, not saved, not cast

    def bind(self, wte: torch.Tensor | nn.Embedding) -> "DiMOOShortcut":
        """Attach the base model's token table (V, dim); it is shared, never copied."""
        weight = wte.weight if isinstance(wte, nn.Embedding) else wte
        if weight.dim() != 2 or weight.shape[1] != self.config.dim:
            raise ValueError(
                f"shortcut expects base features of width {self.config.dim}, but the base embedding table is "
                f"{tuple(weight.shape)}; pick a shortcut trained for this model"
            )
        object.__setattr__(self, "_wte", weight.detach())
        return self

    @property
    def wte(self) -> torch.Tensor | None:
        return self._wte

    def forward(
        self,
        prev_feat: torch.Tensor,
        new_ids: torch.Tensor,
        new_positions: torch.Tensor,
        new_valid: torch.Tensor | None = None,
        mask_ratio: torch.Tensor | None = None,
        *,
        seq_valid: torch.Tensor | None = None,
        wte: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the next feature of one branch.

        prev_feat (B, L, dim): the branch's current feature (``ln_f`` output).
        new_ids (B, n) long: vocabulary ids of the new tokens (cond branch: the whole
            prompt before BOA, then the image tokens revealed at the previous step; uncond
            branch: those image tokens only), in sequence order.
        new_positions (B, n) long: each new token's position in this branch's sequence.
        new_valid (B, n) bool or None: False marks padding when rows have different
            counts; padded entries are ignored (their ids and positions may be anything
            in range).
        mask_ratio (B,): masked image tokens / image tokens, in [0, 1].
        seq_valid (B, L) bool or None: False for right padding of the sequence itself
            (prompts of different lengths in one batch); those keys are ignored.
        wte: the base embedding table, if none was bound with ``bind``.
        Returns (B, L, dim) in ``prev_feat``'s dtype.
        """
        c = self.config
        table = wte if wte is not None else self._wte
        if table is None:
            raise RuntimeError("the DiMOO shortcut has no base embedding table; call bind(base.wte) or pass wte=")
        B, L, _ = prev_feat.shape
        if new_ids.shape != new_positions.shape or new_ids.shape[0] != B:
            raise ValueError(f"new_ids {tuple(new_ids.shape)} and new_positions {tuple(new_positions.shape)} "
                             f"must both be (B={B}, n)")
        if c.embed_t and mask_ratio is None:
            raise ValueError("this shortcut is conditioned on the mask ratio: pass mask_ratio (B,)")
        dtype = self.proj_in.weight.dtype
        new = F.embedding(new_ids, table).to(dtype)  # (B, n, dim)
        new = self.new_token_proj_in(new)
        x = self.proj_in(prev_feat.to(dtype))
        q_rope = rope_angles(torch.arange(L, device=x.device).expand(B, L), c.head_dim, c.rope_theta)
        k_rope = rope_angles(new_positions, c.head_dim, c.rope_theta)
        for block in self.blocks:
            x = block(x, new, q_rope, k_rope, new_valid, seq_valid)
        x = self.ln_f(x)
        if c.embed_t:
            emb = self.time_embedder(mask_ratio.to(x.device).float() * 1000)
            scale, shift = self.adaLN_modulation(emb.to(dtype))[:, None].chunk(2, dim=-1)  # (B, 1, width) each
            x = x * (1 + scale) + shift
        return (self.proj_out(x) + prev_feat.to(dtype)).to(prev_feat.dtype)


def shortcut_config_from_state_dict(sd: dict, base: LLaDAConfig | None = None) -> DiMOOShortcutConfig:
    """Architecture of a bare DiMOO shortcut state dict, read off its shapes.

    Head count and RoPE base are not visible in shapes: they follow ``base`` (the
    published recipe keeps the base model's 32 heads and θ) or the defaults.
    """
    need = ("proj_in.weight", "blocks.0.cross_attn.q_proj.weight", "blocks.0.self_attn.ff_proj.weight")
    if any(k not in sd for k in need):
        raise CheckpointError("this is not a DiMOO shortcut state dict (no proj_in / blocks.0.cross_attn.q_proj keys)")
    width, dim = sd["proj_in.weight"].shape
    mlp_hidden = sd["blocks.0.self_attn.ff_proj.weight"].shape[0]
    n_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    embed_t = "adaLN_modulation.weight" in sd
    time_hidden = sd["time_embedder.mlp.0.weight"].shape[0] if embed_t else round(math.sqrt(width * 256))
    defaults = DiMOOShortcutConfig()
    heads = base.n_heads if base is not None else defaults.heads
    if width % heads or (width // heads) % 2:
        heads = defaults.heads if width % defaults.heads == 0 else 1
    return DiMOOShortcutConfig(
        dim=int(dim), width=int(width), heads=heads, mlp_hidden=int(mlp_hidden), n_block=n_block,
        time_hidden=int(time_hidden), embed_t=embed_t,
        rope_theta=base.rope_theta if base is not None else defaults.rope_theta,
        rms_eps=base.rms_eps if base is not None else defaults.rms_eps,
    )
