"""Reveal-count schedules and the placement of full (base-model) steps."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

REVEAL_MODES = ("arccos", "cosine", "linear", "square", "root")


def check_reveal_mode(mode: str) -> str:
    if mode not in REVEAL_MODES:
        raise ValueError(f"unknown reveal schedule {mode!r}; choose one of {', '.join(REVEAL_MODES)}")
    return mode


def reveal_counts(num_tokens: int, steps: int, mode: str = "arccos") -> list[int]:
    """How many tokens step i reveals; the counts sum to ``num_tokens``.

    r = linspace(1, 0, N) mapped through the mode, normalised, rounded; zeros become 1
    and the last step absorbs the remainder (MaskGIT's ``adap_sche``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps > num_tokens:
        raise ValueError(f"{steps} steps cannot each reveal a token of a {num_tokens}-token image; use at most {num_tokens}")
    r = torch.linspace(1, 0, steps, dtype=torch.float64)
    if check_reveal_mode(mode) == "arccos":
        v = torch.arccos(r) / (math.pi / 2)
    elif mode == "cosine":
        v = torch.cos(r * math.pi / 2)
    elif mode == "linear":
        v = 1 - r
    elif mode == "square":
        v = 1 - r**2
    else:  # root
        v = 1 - r.sqrt()
    if steps == 1:
        return [num_tokens]
    counts = (v / v.sum() * num_tokens).round()
    counts[counts == 0] = 1
    counts[-1] += num_tokens - counts.sum()
    out = [int(c) for c in counts]
    if out[-1] < 1:
        # Many 1s forced in early can overshoot; take the excess back from the largest steps.
        excess = 1 - out[-1]
        out[-1] = 1
        for i in sorted(range(steps - 1), key=lambda j: -out[j]):
            take = min(excess, out[i] - 1)
            out[i] -= take
            excess -= take
            if not excess:
                break
    return out


def full_step_indices(steps: int, full_steps: int) -> list[int]:
    """Evenly placed full steps: 0, then s_k = max(s_{k-1} + 1, round(N k / B))."""
    if not 1 <= full_steps <= steps:
        raise ValueError(
            f"full steps B={full_steps} must be between 1 and the number of steps N={steps}; "
            f"B=N means plain sampling"
        )
    out = [0]
    for k in range(1, full_steps):
        out.append(max(out[-1] + 1, round(steps * k / full_steps)))
    return out


def parse_full_steps(spec: str | Iterable[int], steps: int) -> list[int]:
    """Validate an explicit full-step list such as ``"0,3,5,8"``."""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.replace(";", ",").split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"full-step list {spec!r} must be comma-separated integers like '0,3,5,8'") from None
    else:
        values = [int(v) for v in spec]
    if not values:
        raise ValueError("full-step list is empty; it must at least contain step 0")
    if values[0] != 0:
        raise ValueError(f"full-step list {values} must start at 0: the first step has no feature to predict from")
    for a, b in zip(values, values[1:]):
        if b <= a:
            raise ValueError(f"full-step list {values} must be strictly increasing ({a} then {b})")
    if values[-1] >= steps:
        raise ValueError(f"full-step list {values} has step {values[-1]}, outside 0..{steps - 1} for N={steps} steps")
    return values


def resolve_full_steps(steps: int, full_steps: int | str | Sequence[int] | None) -> list[int]:
    """One entry point for the sampler: None -> every step; int B -> placement; list -> validated."""
    if full_steps is None:
        return list(range(steps))
    if isinstance(full_steps, int):
        return full_step_indices(steps, full_steps)
    return parse_full_steps(full_steps, steps)
