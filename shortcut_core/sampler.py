"""One sampling loop for every MIGM family, plain or accelerated.

The loop decides, step by step, whether the base model runs (a full step) or the
shortcut predicts the feature (a shortcut step); the family adapter does everything
model specific (see ``docs/DESIGN.md``).
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .placement import AUTO, CALIBRATED, resolve_placement
from .schedules import resolve_full_steps


def finite_number(name: str, value) -> float:
    """A sampler setting as float; booleans, non-numbers, NaN and infinities are refused by name."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def whole_number(name: str, value, minimum: int | None = None) -> int:
    """An integer setting; booleans, floats (even 2.0) and strings are refused by name, not truncated."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    value = int(value.__index__())
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_options(migm, options: dict) -> None:
    """Refuse option names the family's ``start`` does not take, listing the ones it does."""
    accepted = [n for n, p in inspect.signature(migm.start).parameters.items()
                if p.kind == p.KEYWORD_ONLY and n not in ("steps", "generator")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"unknown sampling option(s) {', '.join(map(repr, unknown))} for a {migm.family} model; "
                        f"valid: {', '.join(accepted)}")


def check_same_place(migm, shortcut) -> None:
    """The shortcut feeds the base model's head: it must sit on the same device, in the same dtype."""
    param = next(shortcut.parameters(), None)
    if param is not None and (param.device != migm.device or param.dtype != migm.dtype):
        raise ValueError(f"the shortcut is {str(param.dtype).removeprefix('torch.')} on {param.device} but the MIGM is "
                         f"{str(migm.dtype).removeprefix('torch.')} on {migm.device}; load the shortcut after moving "
                         f"the MIGM (load_shortcut follows it) or call shortcut.to(device, dtype)")


def gumbel_noise(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Standard Gumbel noise from the sampler's generator (same seed, same device, same result).

    Adding it to log-probabilities and taking the argmax samples from the softmax.
    """
    u = torch.rand(shape, generator=generator, device=device).clamp_(min=1e-20)
    return -torch.log(-torch.log(u))


def categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One code per row of ``probs`` (..., K) -> (...) long, by inverse CDF.

    One uniform per draw where Gumbel-max needs K of them and two logs each; with few
    positions and a cheap network that difference is most of a shortcut step.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device, dtype=cdf.dtype)
    # right=True never picks a zero-probability code at u = 0; the clamp covers rounding in the last bin.
    return torch.searchsorted(cdf, u * cdf[..., -1:], right=True).clamp_(max=probs.shape[-1] - 1)[..., 0]


def masked_positions(masked: torch.Tensor, count: int) -> torch.Tensor:
    """(B, T) bool with ``count`` True per row -> (B, count) their positions, increasing.

    The families know ``count`` from their schedules, so unlike ``nonzero()`` this never
    waits for the device inside the sampling loop.
    """
    T = masked.shape[1]
    index = torch.arange(T, device=masked.device).expand_as(masked)
    return index.masked_fill(~masked, T).sort(dim=1).values[:, :count]


class FeatureCache:
    """A training-free stand-in for a shortcut: every skipped step reuses the last full step's
    feature unchanged (the copy-previous baseline the shortcut is trained to beat), so its
    tokens come from the base model's distribution at the last full step. Pass it as
    ``shortcut=FeatureCache()`` to measure what a trained shortcut adds over caching."""

    def __repr__(self) -> str:
        return "FeatureCache()"


@dataclass
class SamplingStats:
    steps: int
    full_step_indices: list[int]
    base_passes: int = 0  # base-model forward passes actually run
    memo_passes: int = 0  # full steps whose features came from memory (step 0, see first_step.py)
    plain_base_passes: int = 0  # what plain sampling would have run
    shortcut_steps: int = 0  # steps that skipped the base model (filled by the shortcut or the feature cache)
    skipped_by: str = "shortcut"  # what filled them: "shortcut" or "cache" (FeatureCache)
    seconds: float = 0.0  # sampling loop only (base, shortcut, head, sampling)
    decode_seconds: float = 0.0  # tokens -> pixels
    batch: int = 1
    placement: str = ""  # how the full steps were chosen, when it is not the paper's or an explicit list

    @property
    def full_steps(self) -> int:
        return len(self.full_step_indices)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.batch, 1)

    @property
    def pass_reduction(self) -> float:
        return self.plain_base_passes / max(self.base_passes, 1)

    def report(self) -> str:
        """One line that proves what ran, e.g. for a log or a node's report output."""
        return (
            f"full {self.full_steps}/{self.steps}, {self.skipped_by} {self.shortcut_steps}, "
            f"base passes {self.base_passes}" + (f" + {self.memo_passes} from memory" if self.memo_passes else "")
            + f" (plain: {self.plain_base_passes}), {self.pass_reduction:.2f}x fewer base passes, {self.seconds:.2f} s "
            f"({self.seconds_per_image:.3f} s/image)" + (f"; {self.placement}" if self.placement else "")
        )

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "full_steps": self.full_steps,
            "full_step_indices": self.full_step_indices,
            "shortcut_steps": self.shortcut_steps,
            "skipped_by": self.skipped_by,
            "base_passes": self.base_passes,
            "memo_passes": self.memo_passes,
            "plain_base_passes": self.plain_base_passes,
            "seconds": self.seconds,
            "seconds_per_image": self.seconds_per_image,
            "decode_seconds": self.decode_seconds,
            "batch": self.batch,
            "placement": self.placement,
        }


@dataclass
class StepInfo:
    """What a per-step callback sees: raise from the callback to stop sampling."""

    step: int
    steps: int
    full: bool
    state: Any  # the family's sampling state, after this step's reveal
    feats: torch.Tensor | Sequence[torch.Tensor]  # feature(s) computed at this step, before the reveal
    # The base model's feature(s) of the same state, when sampling was asked for them at every step
    # (``sample(base_every_step=True)``): the labels of on-policy training data. ``feats`` itself on full steps.
    base_feats: torch.Tensor | Sequence[torch.Tensor] | None = None


@dataclass
class GenerationResult:
    images: torch.Tensor | None  # (B, H, W, 3) float32 in [0, 1], on the CPU; None if decode=False
    tokens: torch.Tensor  # final code ids, family layout (MaskGIT: (B, grid, grid))
    stats: SamplingStats
    extras: dict = field(default_factory=dict)


def sample(
    migm,
    conditions,
    *,
    steps: int,
    full_steps: int | str | Sequence[int] | None = None,
    shortcut=None,
    seed: int = 0,
    callback: Callable[[StepInfo], None] | None = None,
    decode: bool = True,
    placement: str = AUTO,
    base_every_step: bool = False,
    **options,
) -> GenerationResult:
    """Run ``steps`` sampling steps; only the steps in ``full_steps`` run the base model.

    ``full_steps``: None (every step), an int B (placed as in the paper), or an explicit
    list / "0,3,5" string. Without a shortcut every step is full whatever ``full_steps``
    says, so "off" is exactly plain sampling; ``shortcut=FeatureCache()`` skips the same steps
    without a shortcut (training-free baseline). With a count B, ``placement`` says where the B
    full steps go (``shortcut_core.placement``): "auto" (default) where the shortcut file's
    calibration says when it covers (N, B) for this run's regime (``migm.placement_regime``:
    conditional, unconditional or mixed), else as the paper; "paper"; "calibrated" (the
    file's, falling back to the paper's with a note in the report).
    ``base_every_step``: shortcut steps run the base model too, on the same state, and hand its
    feature to the callback (``StepInfo.base_feats``) while the tokens still follow the shortcut's
    prediction (on-policy recording; counted in ``base_passes``). ``options`` go to the family
    (guidance, temperatures, schedule ...).
    """
    check_options(migm, options)
    steps = whole_number("steps", steps, 1)
    seed = whole_number("seed", seed)
    if full_steps is not None and not isinstance(full_steps, str):
        if hasattr(full_steps, "__iter__"):
            full_steps = [whole_number("full-step list entry", v) for v in full_steps]
        else:
            full_steps = whole_number("full_steps", full_steps)
    full_list = resolve_full_steps(steps, full_steps)
    cache = isinstance(shortcut, FeatureCache)
    if cache and placement == CALIBRATED:
        raise ValueError(f"placement={placement!r} reads a shortcut file's calibration, and a feature cache has none; "
                         f"pass the full steps as a list (e.g. full_steps=[0, 2, 4, 8]) to place them")
    if shortcut is not None and not cache:
        migm.check_shortcut(shortcut)
        check_same_place(migm, shortcut)
    generator = torch.Generator(device=migm.device).manual_seed(int(seed) % 2**64)
    state = migm.start(conditions, steps=steps, generator=generator, **options)
    calibrated, placement_note = resolve_placement(steps, full_steps, placement, shortcut,
                                                   migm.placement_regime(state), migm.sampling_settings(state))
    if calibrated is not None:
        full_list = calibrated
    if shortcut is None:
        full_list = list(range(steps))
    full_set = set(full_list)
    if cache and full_list != list(range(steps)):
        placement_note = "; ".join(filter(None, ["skipped steps reuse the last full step's feature (feature cache, "
                                                 "no shortcut)", placement_note]))
    stats = SamplingStats(steps=steps, full_step_indices=full_list, batch=state.batch, placement=placement_note,
                          skipped_by="cache" if cache else "shortcut")
    stats.plain_base_passes = steps * migm.passes_per_full_step(state)

    if migm.device.type == "cuda":
        torch.cuda.synchronize(migm.device)
    start = time.perf_counter()
    feats = None

    def base_pass():
        out = migm.base_features(state)
        if state.extras.pop("from_memory", False):
            stats.memo_passes += migm.passes_per_full_step(state)
        else:
            stats.base_passes += migm.passes_per_full_step(state)
        return out

    with torch.inference_mode():
        for step in range(steps):
            full = step in full_set
            base_feats = None
            if full:
                feats = base_feats = base_pass()
            else:
                if not cache:
                    feats = migm.shortcut_features(shortcut, feats, state)
                stats.shortcut_steps += 1
                if base_every_step:
                    base_feats = base_pass()
            migm.advance(state, feats, step, generator)
            if callback is not None:
                callback(StepInfo(step, steps, full, state, feats, base_feats if base_every_step else None))
        if migm.device.type == "cuda":
            torch.cuda.synchronize(migm.device)
        stats.seconds = time.perf_counter() - start
        images = migm.decode(state) if decode else None
    stats.decode_seconds = time.perf_counter() - start - stats.seconds
    return GenerationResult(images=images, tokens=migm.final_tokens(state), stats=stats)
