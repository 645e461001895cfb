"""A tiny, random, complete Lumina-DiMOO checkpoint folder, for tests and dry runs.

Same file layout, parameter names, special ids and image-token offset as the real
folder, with tiny widths: ``config.json`` (LLaDA field names), sharded safetensors with
``model.safetensors.index.json``, a word-level ``tokenizer.json`` (needs ``tokenizers``)
that knows the special tokens with their real ids, and ``vqvae/`` holding a small
diffusers-style VQModel (decoder weights plus a few encoder keys, which loaders skip).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import LLADA_PRESETS, LLaDAConfig
from .llada import LLaDA
from .prompt import SYSTEM_PROMPT
from .vq import VQConfig, VQDecoder

TINY_VQ = VQConfig(block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                   num_vq_embeddings=8192, norm_num_groups=4, mid_block_add_attention=True)

# Words of the fake tokenizer (ids 1..), besides [UNK] = 0 and the special tokens.
FAKE_WORDS = ("Generate", "an", "image", "according", "to", "the", "text", "prompt", ".", "a", "red", "cat",
              "blue", "dog", "on", "green", "grass")


def hf_config_dict(c: LLaDAConfig) -> dict:
    """``config.json`` in LLaDA's field names, as the published folder has it."""
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "d_model": c.d_model, "n_heads": c.n_heads, "n_kv_heads": c.n_heads, "n_layers": c.n_layers,
        "mlp_hidden_size": c.mlp_hidden, "mlp_ratio": 4, "activation_type": "silu", "block_type": "llama",
        "layer_norm_type": "rms", "rms_norm_eps": c.rms_eps, "rope": True, "rope_theta": c.rope_theta,
        "rope_full_precision": True, "alibi": False, "weight_tying": False, "include_bias": False,
        "include_qkv_bias": False, "vocab_size": c.vocab_size, "embedding_size": c.vocab_size,
        "mask_token_id": c.mask_id, "max_sequence_length": 8192, "attention_dropout": 0.0,
        "residual_dropout": 0.0, "embedding_dropout": 0.0, "torch_dtype": "bfloat16",
    }


def vq_config_dict(c: VQConfig) -> dict:
    n = len(c.block_out_channels)
    return {
        "_class_name": "VQModel", "act_fn": "silu", "block_out_channels": list(c.block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "in_channels": c.in_channels, "out_channels": c.out_channels, "latent_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block, "lookup_from_codebook": True,
        "mid_block_add_attention": c.mid_block_add_attention, "norm_num_groups": c.norm_num_groups,
        "norm_type": "group", "num_vq_embeddings": c.num_vq_embeddings, "sample_size": 32,
        "scaling_factor": 0.18215, "vq_embed_dim": c.vq_embed_dim, "force_upcast": False,
    }


def random_llada(config: LLaDAConfig, seed: int = 0) -> LLaDA:
    """A LLaDA with deterministic random weights (norm weights near 1)."""
    torch.manual_seed(seed)
    model = LLaDA(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.uniform_(0.8, 1.2)
            elif "wte" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, p.shape[-1] ** -0.5)
    return model.eval()


def write_tokenizer(path: Path, c: LLaDAConfig) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = {"<system>": c.system_id, "</system>": c.system_end_id, "<user>": c.user_id,
                "</user>": c.user_end_id, "<uncondition>": c.uncondition_id}
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(FAKE_WORDS)}, **specials}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(specials))
    tok.save(str(path))


def fake_token_ids(text: str) -> list[int]:
    """What the fake tokenizer gives for plain text (whitespace + punctuation split)."""
    import re

    words = re.findall(r"\w+|[^\w\s]+", text)
    return [FAKE_WORDS.index(w) + 1 if w in FAKE_WORDS else 0 for w in words]


def write_fake_dimoo_folder(folder: str | os.PathLike, config: LLaDAConfig = LLADA_PRESETS["tiny"], *,
                            seed: int = 0, shards: int = 2, vq_config: VQConfig = TINY_VQ,
                            tokenizer: bool = True) -> Path:
    """Write the folder; returns its path. ``tokenizer=False`` skips tokenizer.json (no ``tokenizers``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2))
    sd = {k: v.contiguous() for k, v in random_llada(config, seed).state_dict().items()}
    keys = list(sd)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if tokenizer:
        write_tokenizer(folder / "tokenizer.json", config)
    vq_dir = folder / "vqvae"
    vq_dir.mkdir(exist_ok=True)
    (vq_dir / "config.json").write_text(json.dumps(vq_config_dict(vq_config), indent=2))
    torch.manual_seed(seed + 1)
    vq = VQDecoder(vq_config)
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_()
    vq_sd = {k: v.contiguous() for k, v in vq.state_dict().items()}
    vq_sd["encoder.conv_in.weight"] = torch.zeros(vq_config.block_out_channels[0], 3, 3, 3)
    vq_sd["quant_conv.weight"] = torch.zeros(vq_config.embed_dim, vq_config.latent_channels, 1, 1)
    save_file(vq_sd, str(vq_dir / "diffusion_pytorch_model.safetensors"))
    return folder


__all__ = ["write_fake_dimoo_folder", "random_llada", "fake_token_ids", "hf_config_dict", "vq_config_dict",
           "TINY_VQ", "SYSTEM_PROMPT", "FAKE_WORDS"]
