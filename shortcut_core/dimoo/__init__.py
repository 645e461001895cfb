"""Lumina-DiMOO (8B text-to-image masked generation) and its MIGM shortcut.

Importing this package costs nothing beyond torch; ``tokenizers`` is needed only to
turn prompt text into ids (``PromptTokenizer``).
"""
from .config import LLADA_PRESETS, SHORTCUT_PRESETS, DiMOOShortcutConfig, LLaDAConfig
from .llada import LLaDA
from .shortcut import DiMOOShortcut
from .vq import VQConfig, VQDecoder

__all__ = [
    "LLaDAConfig", "DiMOOShortcutConfig", "LLADA_PRESETS", "SHORTCUT_PRESETS",
    "LLaDA", "DiMOOShortcut", "VQConfig", "VQDecoder",
]
