"""Lumina-DiMOO (8B text-to-image masked generation) and its MIGM shortcut.

    from shortcut_core import load_migm, load_shortcut, generate
    migm = load_migm("models/Lumina-DiMOO")                 # folder: config, shards, tokenizer, vqvae/
    shortcut = load_shortcut("models/dimoo-shortcut.pth", migm)
    result = generate(migm, prompts="a red fox in snow", steps=64, full_steps=11, shortcut=shortcut,
                      height=1024, width=1024, cfg=4.0)

Importing this package costs nothing beyond torch and safetensors; ``tokenizers`` is
needed only to turn prompt text into ids (``PromptTokenizer``).
"""
from .config import LLADA_PRESETS, SHORTCUT_PRESETS, DiMOOShortcutConfig, LLaDAConfig
from .family import DiMOOMIGM, DiMOOState, keep_masked
from .llada import LLaDA
from .loader import load_dimoo_folder, load_dimoo_parts, load_dimoo_shortcut, load_llada, load_vq
from .prompt import PromptTokenizer, build_sequence, token_grid
from .shortcut import DiMOOShortcut
from .vq import VQConfig, VQDecoder

__all__ = [
    "LLaDAConfig", "DiMOOShortcutConfig", "LLADA_PRESETS", "SHORTCUT_PRESETS",
    "LLaDA", "DiMOOShortcut", "VQConfig", "VQDecoder", "DiMOOMIGM", "DiMOOState", "keep_masked",
    "load_dimoo_folder", "load_dimoo_parts", "load_dimoo_shortcut", "load_llada", "load_vq",
    "PromptTokenizer", "build_sequence", "token_grid",
]
