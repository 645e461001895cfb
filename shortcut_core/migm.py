"""Loading and saving base models (MIGMs) and shortcuts.

Native format: ``.safetensors`` whose metadata carries the architecture config, so a
file describes itself. Published pickles (``MaskGIT_ImageNet_512.pth``, taming
``last.ckpt``, ``maskgit-shortcut.pth``) load unchanged through the safe reader.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoints import (
    CheckpointError,
    check_keys,
    fingerprint,
    load_any_state_dict,
    load_pickle_checkpoint,
    extract_state_dict,
    save_safetensors,
)
from .devices import resolve_device, resolve_dtype
from .maskgit import MASKGIT_PRESETS, MaskGIT, MaskGITConfig
from .maskgit_family import MaskGITMIGM
from .vqgan import VQGAN, VQGANConfig, infer_vqgan_config, parse_taming_yaml

VQGAN_PREFIX = "vqgan."


def infer_maskgit_config(sd: dict, path) -> MaskGITConfig:
    """Config of a published MaskGIT state dict, read off its shapes."""
    for key in ("tok_emb.weight", "pos_emb", "bias"):
        if key not in sd:
            raise CheckpointError(f"{path} is not a MaskGIT checkpoint: it has no {key!r} (keys: {sorted(sd)[:6]} ...)")
    vocab, hidden = sd["tok_emb.weight"].shape
    seq = sd["pos_emb"].shape[1]
    grid = round((seq - 1) ** 0.5)
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.layers."))
    mlp = sd["transformer.layers.0.1.fn.net.0.weight"].shape[0]
    for preset in MASKGIT_PRESETS.values():
        if (preset.vocab_size, preset.hidden, preset.seq_len, preset.depth, preset.mlp_dim) == (vocab, hidden, seq, depth, mlp):
            return preset
    raise CheckpointError(
        f"{path}: a MaskGIT of width {hidden}, depth {depth}, vocabulary {vocab}, {grid}x{grid} tokens matches no "
        f"published preset, and a bare pickle does not say its codebook size or head count; save it as "
        f".safetensors with its config (shortcut_core.save_migm) instead"
    )


def load_vqgan(path: str | os.PathLike, device="cpu") -> VQGAN:
    """A VQGAN from native .safetensors or a taming Lightning ``last.ckpt`` (+ ``model.yaml`` beside it)."""
    path = Path(path)
    sd, meta = load_any_state_dict(path)
    if meta.get("kind") == "migm" and any(k.startswith(VQGAN_PREFIX) for k in sd):
        sd = {k[len(VQGAN_PREFIX):]: v for k, v in sd.items() if k.startswith(VQGAN_PREFIX)}
        config = VQGANConfig.from_dict(meta["vqgan_config"])
    elif "config" in meta:
        if meta.get("kind") != "vqgan":
            raise CheckpointError(f"{path} is a {meta.get('kind')!r} file, not a VQGAN")
        config = VQGANConfig.from_dict(meta["config"])
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
        yaml_path = path.with_name("model.yaml")
        if yaml_path.is_file():
            config = parse_taming_yaml(yaml_path.read_text(), str(yaml_path))
        else:
            config = infer_vqgan_config(sd)
    model = VQGAN(config)
    check_keys(model, sd, "VQGAN", path)
    model.load_state_dict(sd)
    return model.to(device).eval()


def load_migm(path: str | os.PathLike, vq_path: str | os.PathLike | None = None, *, device="cpu",
              dtype: torch.dtype | None = None, name: str | None = None, config: MaskGITConfig | None = None):
    """Load a base model with its tokenizer.

    ``path``: a native ``.safetensors`` MIGM (its VQGAN may be bundled), the published
    ``MaskGIT_ImageNet_512.pth``, or a Lumina-DiMOO checkpoint folder. ``vq_path``: the
    VQGAN when it is not bundled (``.safetensors`` or taming ``last.ckpt``). ``config``
    describes a bare pickle that matches no published preset.
    """
    path = Path(path)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if path.is_dir():
        from .dimoo.loader import load_dimoo_folder  # only DiMOO users pay for its imports

        return load_dimoo_folder(path, device=device, dtype=dtype)
    sd, meta = load_any_state_dict(path)
    info = meta.get("info", {}) if isinstance(meta.get("info"), dict) else {}
    if meta:
        if meta.get("kind") != "migm" or meta.get("family", "maskgit") != "maskgit":
            raise CheckpointError(
                f"{path} is a {meta.get('kind')!r} file of family {meta.get('family')!r}, not a MaskGIT base model; "
                f"pick it in the matching loader (shortcuts go to load_shortcut)"
            )
        config = MaskGITConfig.from_dict(meta["config"])
    elif config is None:
        config = infer_maskgit_config(sd, path)
    base_sd = {k: v for k, v in sd.items() if not k.startswith(VQGAN_PREFIX)}
    with torch.device("meta"):
        model = MaskGIT(config)
    check_keys(model, base_sd, "MaskGIT", path)
    model.load_state_dict(base_sd, assign=True)
    vqgan = None
    if vq_path is not None:
        vqgan = load_vqgan(vq_path)
    elif any(k.startswith(VQGAN_PREFIX) for k in sd):
        vqgan = load_vqgan(path)
    migm = MaskGITMIGM(
        model, vqgan, name=name or info.get("name") or path.stem, class_names=info.get("class_names"),
        fingerprint=fingerprint(base_sd, config.to_dict()), info=info,
    )
    return migm.to(device=device, dtype=dtype)


def save_migm(migm: MaskGITMIGM, path: str | os.PathLike, *, include_vqgan: bool = True, info: dict | None = None) -> None:
    """Write a MaskGIT MIGM as self-describing safetensors (base keys as published, VQGAN under ``vqgan.``)."""
    tensors = dict(migm.model.state_dict())
    meta = {"family": migm.family, "fingerprint": migm.fingerprint}
    if include_vqgan and migm.vqgan is not None:
        tensors.update({VQGAN_PREFIX + k: v for k, v in migm.vqgan.state_dict().items()})
        meta["vqgan_config"] = migm.vqgan.config.to_dict()
    merged = {**migm.info, **(info or {}), "name": migm.name}
    if migm.class_names:
        merged["class_names"] = migm.class_names
    save_safetensors(path, tensors, "migm", migm.config.to_dict(), info=merged, **meta)


def save_vqgan(vqgan: VQGAN, path: str | os.PathLike, info: dict | None = None) -> None:
    save_safetensors(path, vqgan.state_dict(), "vqgan", vqgan.config.to_dict(), info=info or {})


def save_shortcut(shortcut, path: str | os.PathLike, *, base_fingerprint: str | None = None,
                  info: dict | None = None) -> None:
    """Write a shortcut with its config and the fingerprint of the base model it was trained for."""
    save_safetensors(path, shortcut.state_dict(), "shortcut", shortcut.config.to_dict(),
                     family=shortcut.config.family, base_fingerprint=base_fingerprint, info=info or {})


def load_shortcut(path: str | os.PathLike, migm, *, allow_fingerprint_mismatch: bool = False):
    """Load a shortcut for ``migm``: native .safetensors or the published ``*-shortcut.pth``.

    Refuses a shortcut whose shapes do not fit the base model, and one recorded for a
    different base model (by weight fingerprint) unless ``allow_fingerprint_mismatch``.
    """
    path = Path(path)
    sd, meta = load_any_state_dict(path)
    if meta:
        if meta.get("kind") != "shortcut":
            raise CheckpointError(f"{path} is a {meta.get('kind')!r} file, not a shortcut; pick a shortcut file")
        config = migm.shortcut_config_from_dict(meta["config"])
        recorded = meta.get("base_fingerprint")
        if recorded and migm.fingerprint and recorded != migm.fingerprint and not allow_fingerprint_mismatch:
            raise CheckpointError(
                f"{path} was trained for a base model with fingerprint {recorded}, but {migm.name!r} has "
                f"{migm.fingerprint}; use the shortcut trained for this model, or pass "
                f"allow_fingerprint_mismatch=True (--allow-fingerprint-mismatch) if you know they match"
            )
    else:
        config = migm.shortcut_config_from_state_dict(sd)
    shortcut = migm.build_shortcut(config)
    try:
        check_keys(shortcut, sd, f"{migm.family} shortcut", path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. The shortcut does not fit MIGM {migm.name!r}; pick one trained for it") from None
    shortcut.load_state_dict(sd)
    shortcut.info = meta.get("info", {})
    shortcut.base_fingerprint = meta.get("base_fingerprint")
    return shortcut.to(dtype=migm.dtype).eval()


__all__ = [
    "load_migm", "load_vqgan", "load_shortcut", "save_migm", "save_vqgan", "save_shortcut", "infer_maskgit_config",
    "load_pickle_checkpoint", "extract_state_dict",
]
