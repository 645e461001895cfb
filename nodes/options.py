"""Node inputs -> library arguments: presets, full-step plans, condition lists, output names.

Plain Python (no ComfyUI import), shared by the nodes' ``validate_inputs`` and
``execute`` so that a bad setting is refused before the prompt runs, with the same
words the library would use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

from ..shortcut_core.schedules import full_step_indices, parse_full_steps

STEPS_MIN, STEPS_MAX = 1, 4096
SEED_MAX = 2**64 - 1
MODEL_DEFAULT = -1.0  # a sampler option at this value takes the model's recommended one
# Published sampler settings, used when a model file recommends none (MaskGIT-512, Lumina-DiMOO).
FAMILY_SAMPLING = {"maskgit": {"cfg": 2.8, "sm_temp": 1.0, "r_temp": 7.0}, "dimoo": {"cfg": 4.0, "temperature": 1.0}}


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

    'custom' uses ``steps`` N and ``full_steps`` B, or the explicit ``full_step_list``
    ("0,3,5,8") when it is not empty; 'off' keeps N and runs every step in full; the
    other presets fix N and B and ignore the three inputs.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
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
        raise ValueError(f"{exc}. Lower 'full_steps' to at most 'steps' ({n}), or pick a preset") from None
    return StepPlan(n, b)


def with_model_defaults(family: str, info: dict | None, **chosen: float) -> dict[str, float]:
    """The chosen sampler options, each negative one replaced by the model's recommended value.

    Recommended: the model file's ``info["sampling_defaults"]`` (the embedded Fashion-MNIST
    model carries its own), else the family's published settings (``FAMILY_SAMPLING``).
    """
    recommended = {**FAMILY_SAMPLING.get(family, {}), **(info or {}).get("sampling_defaults", {})}
    out = {}
    for key, value in chosen.items():
        if value < 0:
            if key not in recommended:
                raise ValueError(f"{key}: {family} models have no default for it; set a value of 0 or more")
            value = recommended[key]
        out[key] = float(value)
    return out


def family_options(migm, *, cfg: float, sm_temp: float, r_temp: float, temperature: float, schedule: str,
                   width: int, height: int) -> dict:
    """The sampling options of the node inputs that ``migm``'s family uses, defaults resolved.

    Both sampling nodes show every family's inputs; each family ignores the others' ones.
    """
    if migm.family == "dimoo":
        return dict(**with_model_defaults(migm.family, migm.info, cfg=cfg, temperature=temperature),
                    height=height, width=width)
    return dict(**with_model_defaults(migm.family, migm.info, cfg=cfg, sm_temp=sm_temp, r_temp=r_temp),
                schedule=schedule)


def _check_range(name: str, value: int, lo: int, hi: int) -> int:
    """ComfyUI's own range check, repeated for the inputs a validator takes over."""
    if value < lo:
        raise ValueError(f"{name}: Value {value} smaller than min of {lo}")
    if value > hi:
        raise ValueError(f"{name}: Value {value} bigger than max of {hi}")
    return int(value)


def parse_classes(text: str) -> list[int | str] | None:
    """'all' -> None (every class); '3' / '0,7' / '2-5' / 'sandal, bag' -> a list of indices and names."""
    text = (text or "").strip()
    if text.lower() == "all":
        return None
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            if int(hi) < int(lo):
                raise ValueError(f"class range {part!r} runs backwards; write it as {hi.strip()}-{lo.strip()}")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part) if part.isdigit() else part)
    if not out:
        raise ValueError("no class given: write a class index or name, a comma list such as '0,7', or 'all'")
    return out


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
    parts = PurePath(name).parts
    if not name or PurePath(name).is_absolute() or ".." in parts:
        raise ValueError(f"output name {name!r} must be a relative folder name under ComfyUI's output folder, "
                         f"e.g. 'migm_trajectories/run1' (no '..', not absolute)")
    return Path(output_dir).joinpath(*parts)
