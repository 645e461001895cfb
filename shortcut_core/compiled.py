"""Compiled sampling: ``torch.compile`` on the base forward and the shortcut network.

Opt-in, by measurement: on this project's 2-core CPU the base forward already runs at
about 95 % of the machine's fp32 matrix-multiply peak, and inductor gains 0-5 % for a
compile of 30-60 s (``docs/results/bench_compile.md``); on CUDA, ``mode="reduce-overhead"``
replays the small kernels of a shortcut step as CUDA graphs. The base forward's shapes are
fixed per batch; a shortcut step's number of new tokens changes every step, so the
shortcut is compiled for dynamic shapes. The results equal eager ones within float
rounding (tests compare the tokens).
"""
from __future__ import annotations

import functools

import torch

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def default_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


def _compiled(fn, mode: str, dynamic: bool, device: torch.device):
    compiled = torch.compile(fn, mode=mode, dynamic=dynamic)
    if device.type == "cuda" and mode in ("reduce-overhead", "max-autotune"):
        # A CUDA graph's outputs are overwritten by its next replay, and the sampler keeps
        # each step's feature for the next step: hand out copies.
        @functools.wraps(fn)
        def call(*args, **kwargs):
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs).clone()

        call.compile_mode = mode
        return call
    compiled.compile_mode = mode
    return compiled


def compiled_mode(migm, shortcut=None) -> str | None:
    """The mode ``migm`` (and ``shortcut``, when given) are compiled with; None when either runs eager."""
    modes = {getattr(migm.model.__dict__.get("features"), "compile_mode", None)}
    if shortcut is not None:
        modes.add(getattr(shortcut.__dict__.get("forward"), "compile_mode", None))
    return modes.pop() if len(modes) == 1 else None


def use_compiled(migm, shortcut=None, compiled: bool = True) -> str | None:
    """Compile (mode for the device) or go back to eager, doing nothing when already so; returns the mode.

    For callers that run the same loaded models again and again (the ComfyUI sampler): a second
    call with the same choice keeps the compiled functions and their caches.
    """
    if not compiled:
        uncompile_sampling(migm, shortcut)
        return None
    mode = default_mode(migm.device)
    return mode if compiled_mode(migm, shortcut) == mode else compile_sampling(migm, shortcut, mode)


def compile_sampling(migm, shortcut=None, mode: str | None = None) -> str:
    """Compile ``migm``'s base forward (and ``shortcut``'s network) in place; returns the mode.

    ``mode=None`` picks ``reduce-overhead`` on CUDA and ``default`` elsewhere. Undo with
    ``uncompile_sampling``. The first run of each shape pays the compile.
    """
    mode = default_mode(migm.device) if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"compile mode must be one of {', '.join(MODES)}, got {mode!r}")
    uncompile_sampling(migm, shortcut)  # so the methods below are the eager ones
    migm.model.features = _compiled(migm.model.features, mode, False, migm.device)
    if shortcut is not None:
        shortcut.forward = _compiled(shortcut.forward, mode, True, migm.device)
    return mode


def uncompile_sampling(migm, shortcut=None) -> None:
    """Back to eager: drop the compiled wrappers set by ``compile_sampling``."""
    migm.model.__dict__.pop("features", None)
    if shortcut is not None:
        shortcut.__dict__.pop("forward", None)
