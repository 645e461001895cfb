"""Node inputs -> library arguments: presets, full-step plans, condition lists, output names.

Plain Python (no ComfyUI import), shared by the nodes' ``validate_inputs`` and
``execute`` so that a bad setting is refused before the prompt runs, with the same
words the library would use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePath

from ..shortcut_core.conditions import parse_class_spec
from ..shortcut_core.schedules import full_step_indices, parse_full_steps

STEPS_MIN, STEPS_MAX = 1, 4096
SEED_MAX = 2**64 - 1
MODEL_DEFAULT = -1.0  # a sampler option at this value takes the model's recommended one


@dataclass(frozen=True)
class Preset:
    """Acceleration settings a preset fixes; guidance, temperatures and size stay the user's."""

    steps: int | None  # N; None keeps the 'steps' input
    full_steps: int | None  # B; None means plain sampling (every step runs the base model)
    note: str


CUSTOM = "custom"
OFF = "off (plain)"
PRESETS: dict[str, Preset | None] = {
    CUSTOM: None,
    OFF: Preset(None, None, "every step runs the base model: exactly the unaccelerated result"),
    "MaskGIT paper N=32 B=12": Preset(32, 12, "the paper's best MaskGIT point (FID 6.84 vs 8.08 plain at N=32)"),
    "MaskGIT paper N=32 B=9": Preset(32, 9, "faster MaskGIT point of the paper (FID 6.97)"),
    "DiMOO T=64 B=14": Preset(64, 14, "Lumina-DiMOO, closest to plain"),
    "DiMOO T=64 B=11": Preset(64, 11, "Lumina-DiMOO, the paper's main point (about 4.9x)"),
    "DiMOO T=64 B=9": Preset(64, 9, "Lumina-DiMOO, fastest published point"),
}


@dataclass(frozen=True)
class StepPlan:
    """What the sampler runs: N steps, and which of them are full (None: all of them)."""

    steps: int
    full_steps: int | list[int] | None

    @property
    def plain(self) -> bool:
        return self.full_steps is None


def step_plan(preset: str, steps: int, full_steps: int, full_step_list: str = "") -> StepPlan:
    """Resolve the sampler's step inputs; raises ValueError with a message meant for the user.

    Every message starts with the input at fault ("full_steps: ..."): ComfyUI shows a
    validator's message on each input the validator reads, and the pack's web extension
    (web/js/errors_once.js) keeps only the copy on the input the message names.

    'custom' uses ``steps`` N and ``full_steps`` B, or the explicit ``full_step_list``
    ("0,3,5,8") when it is not empty; 'off' keeps N and runs every step in full; the
    other presets fix N and B and ignore the three inputs.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    if chosen is not None:
        n = chosen.steps if chosen.steps is not None else _check_range("steps", steps, STEPS_MIN, STEPS_MAX)
        return StepPlan(n, chosen.full_steps)
    n = _check_range("steps", steps, STEPS_MIN, STEPS_MAX)
    if full_step_list and full_step_list.strip():
        try:
            return StepPlan(n, parse_full_steps(full_step_list, n))
        except ValueError as exc:
            raise ValueError(f"full_step_list: {exc}") from None
    b = _check_range("full_steps", full_steps, STEPS_MIN, STEPS_MAX)
    try:
        full_step_indices(n, b)
    except ValueError as exc:
        raise ValueError(f"full_steps: {exc}. Lower 'full_steps' to at most 'steps' ({n}), or pick a preset") from None
    return StepPlan(n, b)


def unused_step_inputs(preset: str, full_step_list: str = "") -> list[str]:
    """The step inputs a preset overrides, for the report: an artist who typed N=20 should see why
    it did not count. 'custom' uses them all (full_steps yields to a non-empty list)."""
    chosen = PRESETS.get(preset)
    listed = bool(full_step_list and full_step_list.strip())
    if chosen is None:
        return ["full_steps"] if listed else []
    unused = [] if chosen.steps is None else ["steps"]
    return unused + ["full_steps"] + (["full_step_list"] if listed else [])


def given_options(**chosen: float) -> dict[str, float]:
    """The sampler options the user set; one left at ``MODEL_DEFAULT`` (negative) is left out, so
    the model applies its own recommended value (``migm.sampling_defaults``)."""
    # NaN passes ComfyUI's min/max check and fails every comparison: it goes on, to be refused by name
    return {key: float(value) for key, value in chosen.items() if value >= 0 or math.isnan(value)}


def family_options(migm, *, cfg: float, sm_temp: float, r_temp: float, temperature: float, schedule: str) -> dict:
    """The sampling options of the node inputs that ``migm``'s family uses.

    Both sampling nodes show every family's inputs; each family ignores the others' ones.
    """
    if migm.family == "dimoo":
        return given_options(cfg=cfg, temperature=temperature)
    return dict(**given_options(cfg=cfg, sm_temp=sm_temp, r_temp=r_temp), schedule=schedule)


def _check_range(name: str, value: int, lo: int, hi: int) -> int:
    """ComfyUI's own range check, repeated for the inputs a validator takes over."""
    if value < lo:
        raise ValueError(f"{name}: Value {value} smaller than min of {lo}")
    if value > hi:
        raise ValueError(f"{name}: Value {value} bigger than max of {hi}")
    return int(value)


def parse_classes(text: str, num_classes: int) -> list[int | str]:
    """'3' / '0,7' / '2-5' / 'sandal, bag' / 'all' / 'none' -> indices, names and 'none' (unconditional)."""
    return parse_class_spec(text, num_classes, name="classes")


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompt given: this text-to-image model needs a prompt (one per line for several)")
    return prompts


def repeat_each(conditions: list, times: int) -> list:
    """[a, b] x 2 -> [a, a, b, b]: ``times`` images per condition."""
    return [c for c in conditions for _ in range(times)]


def default_first(names: list[str], default: str) -> list[str]:
    """The list with ``default`` moved to the front when present."""
    return [default, *(n for n in names if n != default)] if default in names else list(names)


def output_folder(output_dir: str | Path, name: str) -> Path:
    """A folder under ComfyUI's output directory for a user-given relative name."""
    name = (name or "").strip().replace("\\", "/")
    parts = PurePath(name).parts  # '.' has none: it would be the output folder itself
    if not parts or PurePath(name).is_absolute() or ".." in parts:
        raise ValueError(f"output_name {name!r} must name a folder under ComfyUI's output folder, "
                         f"e.g. 'migm_trajectories/run1' (relative, no '..', not the output folder itself)")
    return Path(output_dir).joinpath(*parts)
