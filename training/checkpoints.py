"""Training checkpoints: a run folder of ``ckpt-STEP.safetensors`` (model, EMA, optimizer
tensors, RNG states) + ``ckpt-STEP.json`` (step, settings), from which a run resumes bit-exactly.

Shared by the shortcut trainer (``training.train``, several ranks) and the embedded model's
single-process trainers (``ResumableRun``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError

from shortcut_core.checkpoints import CheckpointError, write_safetensors_atomic

from .trajectories import write_json_atomic

CKPT_FORMAT = "migm-shortcut-train-checkpoint"


class TrainingError(RuntimeError):
    """The run stopped; the message says why and what to do."""


def checkpoint_paths(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, json path) of complete checkpoints, oldest first."""
    out = []
    for p in run_dir.glob("ckpt-*.json"):
        try:
            step = int(p.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        if p.with_suffix(".safetensors").exists():
            out.append((step, p))
    return sorted(out)


def state_tensors(model, ema, opt, generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A training state as flat tensors for safetensors, and the optimizer's param groups for JSON
    (``ema`` None: a run without one). With ``generator`` (a single-process run's data
    generator), it and the global CPU generator are saved too."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if generator is not None:
        tensors.update({"rng.generator": generator.get_state(), "rng.cpu": torch.get_rng_state()})
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_sd = opt.state_dict()
    for i, state in opt_sd["state"].items():
        for name, value in state.items():
            tensors[f"optim.{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt_sd["param_groups"]]
    return tensors, groups


def restore_state(tensors: dict[str, torch.Tensor], param_groups: list[dict], model, ema, opt,
                  generator: torch.Generator | None = None) -> None:
    """The inverse of ``state_tensors``."""
    if generator is not None:
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.cpu"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def write_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], record: dict, keep: int) -> Path:
    """``ckpt-STEP.safetensors`` then its ``.json`` (a checkpoint exists once both do), each written
    atomically; then all but the newest ``keep`` are removed (0: keep all). Returns the JSON path."""
    base = run_dir / f"ckpt-{step:08d}"
    write_safetensors_atomic(base.with_suffix(".safetensors"), tensors)
    record = {"format": CKPT_FORMAT, "version": 1, "step": step, **record, "tensors": base.with_suffix(".safetensors").name,
              "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        write_json_atomic(base.with_suffix(".json"), record)
    except OSError:
        base.with_suffix(".safetensors").unlink()  # tensors without their record are no checkpoint
        raise
    for old_step, old in checkpoint_paths(run_dir)[:-keep] if keep > 0 else []:
        if old_step != step:
            old.with_suffix(".safetensors").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
    return base.with_suffix(".json")


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(record, tensors) of a checkpoint written by ``write_checkpoint``."""
    from safetensors.torch import load_file

    record = json.loads(path.read_text())
    if record.get("format") != CKPT_FORMAT:
        raise TrainingError(f"{path} is not a training checkpoint")
    return record, load_file(str(path.with_name(record["tensors"])))


def load_newest_valid(path: Path, run_dir: Path, spec: str, load: Callable[[Path], object], log) -> tuple[object, Path]:
    """Load ``path``; with ``--resume`` (auto), a damaged newest checkpoint (truncated, malformed)
    is skipped with a warning for the one before it."""
    candidates = [path]
    if spec == "auto":
        candidates += [p for _, p in reversed(checkpoint_paths(run_dir)) if p != path]
    for i, candidate in enumerate(candidates):
        try:
            return load(candidate), candidate
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, CheckpointError, TrainingError,
                SafetensorError) as exc:
            if i + 1 == len(candidates):
                raise TrainingError(f"cannot resume: checkpoint {candidate} is damaged ({exc}) and no older one is "
                                    f"readable; start a new run (another --run-dir)") from None
            log(f"warning: checkpoint {candidate} is damaged ({type(exc).__name__}: {exc}); resuming from the one "
                f"before it, {candidates[i + 1]}")
    raise AssertionError("unreachable")


def resolve_resume(spec: str | None, run_dir: Path) -> Path | None:
    if spec is None:
        return None
    if spec == "auto":
        found = checkpoint_paths(run_dir)
        if not found:
            raise TrainingError(f"--resume: {run_dir} holds no checkpoint; start without --resume")
        return found[-1][1]
    path = Path(spec)
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise TrainingError(f"--resume {spec}: no checkpoint file {path}")
    return path


def add_resume_arguments(p, ckpt_every: int | None = 250) -> None:
    """``--resume`` (and, with ``ckpt_every``, ``--ckpt-every``/``--keep-ckpts``) of a trainer using ``ResumableRun``."""
    p.add_argument("--resume", nargs="?", const="auto", help="continue bit-exactly from the newest checkpoint in the "
                   "run folder (or the one given); the run's settings must be the same, and on a CPU its --threads "
                   "too for bit-exactness (another count is allowed and recorded in the output file)")
    if ckpt_every is not None:
        p.add_argument("--ckpt-every", type=int, default=ckpt_every, help="steps between checkpoints (0: none)")
        p.add_argument("--keep-ckpts", type=int, default=2, help="newest checkpoints kept (0: all)")


class ResumableRun:
    """The checkpoints of one single-process run in ``run_dir``.

    ``exact`` holds the settings a resumption must share with the run (or it would be
    another run); ``resume`` is the CLI's ``--resume`` (None, "auto" or a checkpoint path).
    """

    def __init__(self, run_dir: Path, resume: str | None, exact: dict, keep: int, log: Callable[[str], None]):
        self.run_dir, self.exact, self.keep, self.log = Path(run_dir), exact, keep, log
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume_spec = resume
        self.resume_path = resolve_resume(resume, self.run_dir)
        # torch's CPU kernels split their reductions by thread count, so a run continued with
        # other threads is no longer bit-exact with an uninterrupted one: the file says so.
        self.threads_by_step = [{"step": 0, "threads": torch.get_num_threads()}]
        if self.resume_path is None and checkpoint_paths(self.run_dir):
            raise TrainingError(f"{self.run_dir} already holds checkpoints of a run; pass --resume to continue it, "
                                f"or choose another --out / --run-dir")

    def restore(self, load: Callable[[dict, dict[str, torch.Tensor]], None]) -> dict | None:
        """The newest readable checkpoint's record after ``load(record, tensors)`` restored the
        state; None for a new run. Settings are compared before anything is loaded, so a changed
        setting is named as such, not mistaken for a damaged file."""
        if self.resume_path is None:
            return None
        (record, tensors), path = load_newest_valid(self.resume_path, self.run_dir, self.resume_spec,
                                                    read_checkpoint, self.log)
        changed = {k: (record["exact"].get(k), v) for k, v in self.exact.items() if record["exact"].get(k) != v}
        if changed:
            raise TrainingError(f"cannot resume {path} exactly, these settings differ (checkpoint, now): {changed}; "
                                f"resume with the run's settings, or start a new run (another --run-dir)")
        load(record, tensors)
        self.log(f"resumed from {path} at step {record['step']}")
        now = torch.get_num_threads()
        self.threads_by_step = record.get("threads_by_step") or [{"step": 0, "threads": None}]
        before = self.threads_by_step[-1]["threads"]
        if before != now:
            self.threads_by_step.append({"step": record["step"], "threads": now})
            self.log(f"warning: the run used {before or 'an unrecorded number of'} CPU threads, this one {now}; "
                     f"CPU reductions run in another order, so from step {record['step']} on the result is not "
                     f"bit-exact with an uninterrupted run (the output file records the change)")
        return record

    def provenance(self) -> dict:
        """What the output file's info must add to the run's command: the thread counts by step,
        when a resumption changed them."""
        return {"threads_by_step": self.threads_by_step} if len(self.threads_by_step) > 1 else {}

    def save(self, step: int, tensors: dict[str, torch.Tensor], record: dict) -> Path:
        path = write_checkpoint(self.run_dir, step, tensors,
                                {"exact": self.exact, "threads_by_step": self.threads_by_step, **record}, self.keep)
        self.log(f"checkpoint {path}")
        return path
