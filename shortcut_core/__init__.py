"""MIGM-Shortcut: faster masked image generation by learning the base model's feature dynamics.

Standalone: imports torch, safetensors, numpy, pillow and einops, never ComfyUI.

    from shortcut_core import load_migm, load_shortcut, generate
    migm = load_migm("models/migm/fmnist_maskgit.safetensors")
    shortcut = load_shortcut("models/migm_shortcut/fmnist_shortcut.safetensors", migm)
    result = generate(migm, classes=[0, 7], steps=16, full_steps=5, shortcut=shortcut, seed=1)
    result.images  # (B, H, W, 3) float in [0, 1]
    print(result.stats.report())
"""
from __future__ import annotations

import warnings

from .checkpoints import CheckpointError, fingerprint, load_pickle_checkpoint, read_safetensors_metadata
from .maskgit import MASKGIT_PRESETS, MaskGIT, MaskGITConfig
from .maskgit_family import MaskGITMIGM
from .migm import load_migm, load_shortcut, load_vqgan, save_migm, save_shortcut, save_vqgan
from .sampler import FeatureCache, GenerationResult, SamplingStats, StepInfo, sample
from .schedules import REVEAL_MODES, full_step_indices, parse_full_steps, resolve_full_steps, reveal_counts
from .shortcut import SHORTCUT_PRESETS, MaskGITShortcut, ShortcutConfig
from .vqgan import VQGAN_PRESETS, VQGAN, VQGANConfig


def generate(migm, classes=None, *, steps: int, full_steps=None, shortcut=None, seed: int = 0, cfg: float | None = None,
             prompts=None, callback=None, decode: bool = True, placement: str = "auto", **options) -> GenerationResult:
    """Generate images; ``full_steps`` B (or a list) of ``steps`` N run the base model.

    ``classes`` for class-conditional models: indices, names, a spec such as ``"0-9"`` or
    ``"all"``, and ``"none"`` for unconditional sampling; ``prompts`` for text-to-image ones.
    With ``shortcut=None`` (or B = N) this is plain sampling. Options left out (``cfg``,
    temperatures, schedule) take the model's recommended values (``migm.sampling_defaults``).
    ``placement``: where B full steps go; "auto" (default) uses the shortcut file's calibrated
    placement for (N, B) when it has one made at this run's sampling settings and the paper's
    otherwise; "paper"; "calibrated".
    """
    conditions = prompts if prompts is not None else classes
    if conditions is None:
        raise ValueError("pass classes=... for a class-conditional model or prompts=... for a text-to-image one")
    if prompts is not None and migm.family == "maskgit":
        raise ValueError(f"{migm.name!r} is a class-conditional MaskGIT: pass classes=... (indices, names, 'all' or "
                         f"'none'), not prompts")
    if classes is not None and prompts is None and migm.family == "dimoo":
        raise ValueError(f"{migm.name!r} is a text-to-image model: pass prompts=..., not classes")
    if cfg is not None:
        options["cfg"] = cfg
    if shortcut is None and full_steps is not None and full_steps != steps:
        warnings.warn(f"full_steps={full_steps!r} without a shortcut: every step runs the base model (plain "
                      f"sampling); pass shortcut=load_shortcut(...) to accelerate", stacklevel=2)
    return sample(migm, conditions, steps=steps, full_steps=full_steps, shortcut=shortcut, seed=seed,
                  callback=callback, decode=decode, placement=placement, **options)


__all__ = [
    "CheckpointError", "FeatureCache", "GenerationResult", "MASKGIT_PRESETS", "MaskGIT", "MaskGITConfig", "MaskGITMIGM",
    "MaskGITShortcut", "REVEAL_MODES", "SHORTCUT_PRESETS", "SamplingStats", "ShortcutConfig", "StepInfo",
    "VQGAN", "VQGANConfig", "VQGAN_PRESETS", "fingerprint", "full_step_indices", "generate", "load_migm",
    "load_pickle_checkpoint", "load_shortcut", "load_vqgan", "parse_full_steps", "read_safetensors_metadata",
    "resolve_full_steps", "reveal_counts", "sample", "save_migm", "save_shortcut", "save_vqgan",
]
