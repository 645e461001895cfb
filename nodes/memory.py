"""ComfyUI's model management for MIGM weights (the host's public route, nothing from ``comfy.ldm``).

Every loaded base model and shortcut gets a ``comfy.model_patcher.ModelPatcher``, the way
ComfyUI's own CLIP-vision and upscale models are handled. Before sampling, ``bring`` asks
``comfy.model_management.load_models_gpu`` for them: ComfyUI moves them to its torch device,
unloading other models first if the memory is short. They then stay loaded, next to
any other models, until ComfyUI needs the memory, "Unload models" / ``POST /free`` with
``unload_models`` is asked for, or the models are dropped; then ComfyUI moves them back to
the offload device. They are always loaded whole: these are plain torch layers, which
ComfyUI's low-VRAM mode cannot stream piece by piece.
"""
from __future__ import annotations

import logging
import weakref

import torch
import comfy.model_management
import comfy.model_patcher

log = logging.getLogger("migm_shortcut")


class MIGMWeights(torch.nn.Module):
    """The torch modules of one base model (transformer, image decoder) as one module, so that
    one patcher moves them together. The name shows in ComfyUI's log ("Requested to load …")."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class ShortcutWeights(MIGMWeights):
    """A shortcut's own weights (it reads the base model's embeddings, which stay with the base)."""


_PATCHERS: "weakref.WeakKeyDictionary[object, comfy.model_patcher.ModelPatcher]" = weakref.WeakKeyDictionary()


def devices(choice: str, pinned: torch.device) -> tuple[torch.device, torch.device]:
    """(load, offload) devices: ComfyUI's own for 'auto', else the pinned device and the CPU."""
    if choice == "auto":
        return comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()
    return pinned, torch.device("cpu")


def manage_migm(migm, load_device: torch.device, offload_device: torch.device) -> None:
    """Hand a freshly loaded base model to ComfyUI; it starts out where it was loaded."""
    modules = {name: m for name, m in vars(migm).items() if isinstance(m, torch.nn.Module)}
    _PATCHERS[migm] = _patcher(MIGMWeights(modules), migm.device, load_device, offload_device)


def manage_shortcut(shortcut: torch.nn.Module, migm) -> None:
    """Hand a shortcut to ComfyUI with its base model's load and offload devices."""
    base = _PATCHERS.get(migm)
    load_device, offload_device = (base.load_device, base.offload_device) if base else (migm.device, migm.device)
    param = next(shortcut.parameters())
    _PATCHERS[shortcut] = _patcher(ShortcutWeights({"shortcut": shortcut}), param.device, load_device, offload_device)


def _patcher(weights: torch.nn.Module, now: torch.device, load_device, offload_device):
    weights.device = now  # where ModelPatcher believes the weights are
    return comfy.model_patcher.ModelPatcher(weights, load_device=load_device, offload_device=offload_device)


def bring(*models) -> None:
    """Load ``models`` (base models, shortcuts; None skipped) onto their device through ComfyUI
    before sampling, and say in the console which had to be (re)loaded."""
    managed = {getattr(m, "name", "shortcut"): _PATCHERS[m] for m in models if m is not None and m in _PATCHERS}
    if not managed:
        return
    already = {id(p) for p in comfy.model_management.loaded_models()}
    comfy.model_management.load_models_gpu(list(managed.values()), force_full_load=True)
    fresh = [name for name, p in managed.items() if id(p) not in already]
    log.info("MIGM-Shortcut: weights on %s: %s", next(iter(managed.values())).load_device,
             f"loaded {', '.join(fresh)}" if fresh else f"already loaded ({', '.join(managed)})")
