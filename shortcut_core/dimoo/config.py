"""Configs of the Lumina-DiMOO base model (LLaDA-shaped) and of its shortcut.

Both are frozen dataclasses of plain types: ``to_dict`` / ``from_dict`` round-trip
through JSON, so a config can travel in safetensors metadata next to the weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..configs import JsonConfig


@dataclass(frozen=True)
class LLaDAConfig(JsonConfig):
    """A bidirectional LLaDA transformer with Lumina-DiMOO's token layout.

    Blocks are Llama-style: RMSNorm, RoPE (half rotation), SwiGLU feed-forward
    ``ff_out(silu(ff_proj(x)) * up_proj(x))``, no biases, no causal mask. The output head
    ``ff_out`` is untied from the embedding ``wte``; both have ``vocab_size`` rows.
    """

    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    mlp_hidden: int = 12288
    vocab_size: int = 134548  # rows of wte and of the output head (embedding size)
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5
    # Special tokens (Lumina-DiMOO).
    mask_id: int = 126336
    newline_id: int = 126084
    boa_id: int = 126354  # begin of answer
    eoa_id: int = 126355
    boi_id: int = 126349  # begin of image
    eoi_id: int = 126350
    uncondition_id: int = 126351
    system_id: int = 126332
    system_end_id: int = 126333
    user_id: int = 126334
    user_end_id: int = 126335
    pad_id: int = 0  # right padding when prompts of a batch differ in length (never attended to)
    # Image codes: vocab id = image_offset + code.
    image_offset: int = 126356
    codebook_size: int = 8192

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.n_heads} heads")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head width {self.d_model // self.n_heads} must be even for RoPE")
        if self.image_offset + self.codebook_size > self.vocab_size:
            raise ValueError(
                f"image codes {self.image_offset}..{self.image_offset + self.codebook_size - 1} do not fit a "
                f"vocabulary of {self.vocab_size}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads



    @classmethod
    def from_hf_config(cls, hf: dict, vocab_size: int | None = None) -> "LLaDAConfig":
        """Read the checkpoint folder's ``config.json`` (LLaDA's ``ModelConfig`` field names).

        ``vocab_size``: the embedding rows actually stored in the weights, when known; it
        wins over the config (the published config and weights need not agree on it).
        """
        def need(key):
            if key not in hf:
                raise ValueError(f"config.json has no {key!r}: this is not a LLaDA / Lumina-DiMOO config")
            return hf[key]

        d_model, n_heads = int(need("d_model")), int(need("n_heads"))
        n_kv = hf.get("n_kv_heads")
        if hf.get("multi_query_attention") or (n_kv is not None and int(n_kv) != n_heads):
            raise ValueError(f"grouped/multi-query attention (n_kv_heads={n_kv}) is not supported; "
                             f"DiMOO uses {n_heads} key/value heads")
        problems = []
        if str(hf.get("activation_type", "silu")) != "silu":
            problems.append(f"activation_type={hf.get('activation_type')!r} (expected 'silu' with up_proj)")
        if str(hf.get("block_type", "llama")) != "llama":
            problems.append(f"block_type={hf.get('block_type')!r} (expected 'llama')")
        if str(hf.get("layer_norm_type", "rms")) != "rms":
            problems.append(f"layer_norm_type={hf.get('layer_norm_type')!r} (expected 'rms')")
        if hf.get("include_bias") or hf.get("include_qkv_bias"):
            problems.append("biases in linear layers")
        if hf.get("weight_tying"):
            problems.append("weight_tying=true (expected an untied ff_out head)")
        if hf.get("alibi") or hf.get("rope") is False:
            problems.append("no RoPE")
        if hf.get("input_emb_norm") or hf.get("scale_logits") or hf.get("attention_layer_norm"):
            problems.append("input_emb_norm / scale_logits / attention_layer_norm")
        if problems:
            raise ValueError("unsupported LLaDA variant in config.json: " + "; ".join(problems))
        mlp = hf.get("mlp_hidden_size") or int(hf.get("mlp_ratio", 4)) * d_model
        vocab = vocab_size or hf.get("embedding_size") or need("vocab_size")
        kwargs = dict(
            d_model=d_model, n_layers=int(need("n_layers")), n_heads=n_heads, mlp_hidden=int(mlp),
            vocab_size=int(vocab), rope_theta=float(hf.get("rope_theta", 10000.0)),
            rms_eps=float(hf.get("rms_norm_eps", 1e-5)),
        )
        if hf.get("mask_token_id") is not None:
            kwargs["mask_id"] = int(hf["mask_token_id"])
        return cls(**kwargs)


@dataclass(frozen=True)
class DiMOOShortcutConfig(JsonConfig):
    """The DiMOO shortcut: LLaDA blocks at a bottleneck width (``dimoo-shortcut.pth``).

    ``family`` and ``embed_t`` mirror the MaskGIT shortcut config so the generic
    loaders can save and read both.
    """

    family: str = "dimoo"
    dim: int = 4096  # base feature width
    width: int = 2048  # bottleneck = dim / bottleneck_ratio
    heads: int = 32  # head width 64 inside the bottleneck
    mlp_hidden: int = 12288  # SwiGLU hidden stays the base model's
    n_block: int = 1
    time_hidden: int = 724  # round(sqrt(width * 256))
    frequency_size: int = 256
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5
    embed_t: bool = True

    def __post_init__(self):
        if self.family != "dimoo":
            raise ValueError(f"DiMOOShortcutConfig cannot describe a {self.family!r} shortcut")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even width")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads



    @classmethod
    def for_base(cls, base: LLaDAConfig, bottleneck_ratio: float = 2, **overrides) -> "DiMOOShortcutConfig":
        """The published recipe: width = dim / ratio, same heads, SwiGLU hidden and RoPE as the base."""
        width = round(base.d_model / bottleneck_ratio)
        kwargs = dict(dim=base.d_model, width=width, heads=base.n_heads, mlp_hidden=base.mlp_hidden,
                      time_hidden=round(math.sqrt(width * 256)), rope_theta=base.rope_theta, rms_eps=base.rms_eps)
        kwargs.update(overrides)
        return cls(**kwargs)


LLADA_PRESETS = {
    # Lumina-DiMOO 8B as published.
    "full": LLaDAConfig(),
    # For tests on the CPU: the real vocabulary and special ids, tiny widths.
    "tiny": LLaDAConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64),
}

SHORTCUT_PRESETS = {
    "full": DiMOOShortcutConfig(),
    "tiny": DiMOOShortcutConfig.for_base(LLADA_PRESETS["tiny"]),
}


def tiny_config(**overrides) -> LLaDAConfig:
    """The ``tiny`` preset with some fields changed (tests)."""
    return replace(LLADA_PRESETS["tiny"], **overrides)
