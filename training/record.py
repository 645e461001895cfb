"""Record base-model trajectories for shortcut training.

    python -m training.record --migm BASE.safetensors --out data/traj --count 2000 [--resume]
    python -m training.record --migm models/Lumina-DiMOO --prompts prompts.txt --out data/dimoo --count 500
    torchrun --nproc_per_node=4 -m training.record --migm BASE --out DIR --count 20000

Runs plain sampling (every step full) at N_train steps over a list of conditions and
stores, per trajectory and guidance branch, the feature at every step, the step that
revealed each position and the final ids (format: ``training/trajectories.py``).

``--policy-shortcut SC --policy-full-steps B`` records on-policy instead: the tokens follow
shortcut sampling with B full steps (as a user samples), while the base model still runs at
every step to label each visited state with its true feature. A shortcut trained on plain
trajectories only has never seen the states its own token choices lead to; these are them.

Trajectory i's condition is ``classes[i % len(classes)]`` (Lumina-DiMOO: ``prompts[i %
len(prompts)]``, ``--prompts FILE``); it is sampled in the batch ``i // batch_size`` whose
seed derives from (run seed, batch index) only. Shards hold whole batches and are written
atomically, so an interrupted run leaves every finished shard valid and ``--resume``
records exactly the missing ones. Under torchrun, shard j goes to rank j % K.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from shortcut_core import REVEAL_MODES, fingerprint, sample
from shortcut_core.placement import PLACEMENTS, resolve_placement
from shortcut_core.schedules import resolve_full_steps
from shortcut_core.progress import ProgressBar

from .distributed import setup, share
from .pairs import recipe_for
from .trajectories import (
    FORMAT,
    MANIFEST,
    TMP_SUFFIX,
    VERSION,
    ManifestError,
    ShardError,
    bytes_per_trajectory,
    dtype_name,
    feature_dtype as torch_feature_dtype,
    human_bytes,
    load_shard,
    read_manifest,
    read_shard_header,
    shard_name,
    write_json_atomic,
    write_shard,
)

# Sampler settings (cfg, temperatures, schedule) not given come from the model (``migm.sampling_defaults``).
DEFAULTS = {"steps": 15, "seed": 0, "batch_size": 8, "feature_dtype": "float16"}
# Lumina-DiMOO: its sampler's defaults (T=64, cfg 4, temperature 1, 1024 px); batch 1 = one seed per trajectory.
DIMOO_DEFAULTS = {"steps": 64, "height": 1024, "width": 1024, "seed": 0,
                  "batch_size": 1, "feature_dtype": "float16"}
FAMILY_DEFAULTS = {"maskgit": DEFAULTS, "dimoo": DIMOO_DEFAULTS}
SHARD_TARGET_BYTES = 256e6  # auto shard size aims at about this much per shard
# Settings that must not change between a run and its --resume: they decide what trajectory i is.
RESUME_KEYS = ("family", "base_fingerprint", "steps", "sampler", "conditions", "seed", "batch_size", "shard_size",
               "feature_dtype", "branches", "feature_shapes", "policy")


class RecordingStopped(Exception):
    """Raised inside the sampler callback when the caller asks to stop."""


@dataclass
class RecordResult:
    out_dir: Path
    planned: int  # trajectories in the whole recording
    mine: int  # trajectories assigned to this rank
    already: int  # of those, found complete on disk
    written: int  # of those, recorded by this call
    shards_written: list[str] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    complete: bool = False  # the whole recording (all ranks) is on disk, as far as rank 0 saw at the end

    @property
    def trajectories_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        state = "interrupted" if self.interrupted else ("complete" if self.complete else "done (this rank)")
        return (f"{state}: wrote {self.written} trajectories in {len(self.shards_written)} shards "
                f"({human_bytes(self.bytes_written)}, {self.trajectories_per_second:.2f} traj/s); "
                f"{self.already} were already on disk; {self.planned} planned in {self.out_dir}")


class RecordingLock:
    """An exclusive lock on a recording folder (``.record.lock``), held while a recorder writes.

    A second recorder on the same folder is refused with the holder named. The operating
    system drops the lock when its process ends, so a crashed recorder leaves no stale lock.
    """

    NAME = ".record.lock"

    def __init__(self, root: Path):
        import fcntl

        self.path = Path(root) / self.NAME
        while True:
            self.file = open(self.path, "a+")
            try:
                fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.seek(0)
                holder = self.file.read().strip() or "another process"
                self.file.close()
                raise ManifestError(f"{root} is being recorded by {holder}; wait for it to finish, or record "
                                    f"into another folder") from None
            # A releasing holder unlinks the file; a lock won on that old file guards nothing.
            if self._still_linked():
                break
            self.file.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {platform.node()} since {_now()}")
        self.file.flush()

    def _still_linked(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if not self.file.closed:
            self.path.unlink(missing_ok=True)  # leave the folder as the recording alone
            self.file.close()  # closing the descriptor drops the lock


def derive_seed(seed: int, index: int) -> int:
    """A 63-bit sampler seed from (run seed, index), the same on every platform."""
    digest = hashlib.sha256(f"migm-shortcut:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def plan_shards(count: int, shard_size: int) -> list[tuple[int, int, int]]:
    """(shard index, first trajectory, trajectories) for ``count`` trajectories."""
    return [(j, first, min(shard_size, count - first)) for j, first in enumerate(range(0, count, shard_size))]


def auto_shard_size(bytes_per_traj: int, count: int, batch_size: int) -> int:
    """About SHARD_TARGET_BYTES per shard, and at least 8 shards when there is enough to split."""
    by_bytes = max(1, int(SHARD_TARGET_BYTES // max(bytes_per_traj, 1)))
    size = min(by_bytes, max(1, math.ceil(count / 8)))
    return max(1, size // batch_size) * batch_size


def _software() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _scan(root: Path, plan, settings: dict, verify: bool, log) -> dict[int, dict]:
    """Planned shards already complete on disk: j -> manifest entry. Damaged ones are reported."""
    done = {}
    for j, first, n in plan:
        path = root / shard_name(j)
        if not path.exists():
            continue
        try:
            header = read_shard_header(path)
            if verify:
                load_shard(path, verify=True)
        except ShardError as exc:
            log(f"warning: {exc.path.name} will be recorded again ({exc.reason})")
            continue
        if (header["first"], header["count"], header["fingerprint"]) != (first, n, settings["base_fingerprint"]):
            log(f"warning: {path.name} holds trajectories {header['first']}..+{header['count']} of base "
                f"{header['fingerprint']}, not {first}..+{n}; it will be recorded again")
            continue
        done[j] = {k: header[k] for k in ("file", "first", "count", "bytes", "checksum")}
    return done


def _manifest(settings: dict, extra: dict, done: dict[int, dict], plan) -> dict:
    shards = [done[j] for j in sorted(done)]
    trajectories = sum(e["count"] for e in shards)
    steps, branches = settings["steps"], settings["branches"]
    return {
        "format": FORMAT,
        "version": VERSION,
        **settings,
        **extra,
        "num_trajectories": sum(n for _, _, n in plan),
        "num_shards": len(plan),
        "shards": shards,
        "counts": {
            "trajectories": trajectories,
            "shards": len(shards),
            "pairs": trajectories * len(branches) * (steps - 1),
            "bytes": sum(e["bytes"] for e in shards),
        },
        "complete": len(shards) == len(plan),
        "updated": _now(),
    }


def record_trajectories(
    migm,
    out_dir,
    *,
    count: int,
    classes: Sequence | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    sm_temp: float | None = None,
    r_temp: float | None = None,
    schedule: str | None = None,
    randomize: str | None = None,
    seed: int = DEFAULTS["seed"],
    batch_size: int | None = None,
    shard_size: int | None = None,
    feature_dtype: str = DEFAULTS["feature_dtype"],
    resume: bool = False,
    verify: bool = False,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    show_progress: bool = True,
    check_disk_space: bool = True,
    log: Callable[[str], None] = print,
    command: str | None = None,
    prompts: Sequence[str] | None = None,
    temperature: float | None = None,
    height: int | None = None,
    width: int | None = None,
    policy=None,
    policy_full_steps: int | None = None,
    policy_placement: str = "auto",
) -> RecordResult:
    """Record ``count`` trajectories of plain sampling into ``out_dir``.

    ``classes``: class indices or names to cycle through (None: every class), for
    class-conditional models (MaskGIT). ``prompts``: prompt strings to cycle through, for
    Lumina-DiMOO (with ``temperature``, ``height``, ``width``). Sampler settings left at
    None take the family's defaults (``DEFAULTS``, ``DIMOO_DEFAULTS``); options of the
    other family are refused (MaskGIT) or ignored (DiMOO ignores schedule, sm_temp,
    r_temp and randomize).
    ``policy``: a shortcut of ``migm``; with ``policy_full_steps`` B (placed as
    ``policy_placement`` says) the tokens follow its sampling and the stored features are the
    base model's at every visited state (on-policy data; see the module doc).
    ``progress(done, total)`` is called after each batch with this rank's trajectory
    counts; ``should_stop()`` is polled at every sampling step and stops cleanly (the
    shard in progress is dropped, every finished shard stays valid). Several processes
    pass ``rank``/``world_size`` (and a ``barrier``) to split the shards between them.
    """
    t_start = time.perf_counter()
    recipe = recipe_for(migm.family)
    defaults = FAMILY_DEFAULTS.get(migm.family, DEFAULTS)

    def pick(value, key):
        """Given value, else the model's recommended sampling setting, else the family's default."""
        if value is not None:
            return value
        return migm.sampling_defaults.get(key, defaults.get(key))

    steps, batch_size = pick(steps, "steps"), pick(batch_size, "batch_size")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    root = Path(out_dir)
    conditions_spec = recipe.resolve_conditions(migm, classes, prompts)
    sampler = recipe.sampler_settings(
        cfg=pick(cfg, "cfg"), sm_temp=pick(sm_temp, "sm_temp"), r_temp=pick(r_temp, "r_temp"),
        schedule=pick(schedule, "schedule"), randomize=pick(randomize, "randomize"),
        temperature=pick(temperature, "temperature"), height=pick(height, "height"), width=pick(width, "width"))
    if conditions_spec.get("unconditional"):
        sampler["cfg"] = 0.0  # only the null class: guidance has nothing to compare against
    cfg, schedule = sampler["cfg"], sampler.get("schedule")
    branches = recipe.branches(sampler)
    shapes = recipe.feature_shapes(migm, branches, sampler=sampler, conditions=conditions_spec)
    num_image_tokens = recipe.num_image_tokens(migm, sampler)
    counts = recipe.reveal_counts(migm, steps, sampler)  # validates steps (and the schedule)
    fdtype = torch_feature_dtype(feature_dtype)
    bpt = bytes_per_trajectory(shapes, steps, num_image_tokens, fdtype) + recipe.extra_bytes(shapes)
    if shard_size is None:
        shard_size = auto_shard_size(bpt, count, batch_size)
    if shard_size < 1 or shard_size % batch_size:
        raise ValueError(f"shard size {shard_size} must be a positive multiple of the batch size {batch_size}, "
                         f"so every shard holds whole batches")
    settings = {
        "family": migm.family,
        "base_fingerprint": migm.fingerprint,
        "steps": steps,
        "sampler": sampler,
        "conditions": conditions_spec,
        "seed": int(seed),
        "batch_size": batch_size,
        "shard_size": shard_size,
        "feature_dtype": dtype_name(fdtype),
        "branches": branches,
        "feature_shapes": shapes,
    }
    if not migm.fingerprint:
        raise ValueError(f"base model {migm.name!r} has no fingerprint; load it with shortcut_core.load_migm")
    settings["policy"] = policy_settings(migm, policy, steps, policy_full_steps, policy_placement,
                                         recipe.placement_regime(migm, conditions_spec))
    plan = plan_shards(count, shard_size)

    manifest_path = root / MANIFEST
    created = _now()
    if manifest_path.exists():
        if not resume:
            raise ManifestError(f"{root} already holds a recording; pass --resume (resume=True) to continue it, "
                                f"or choose a new folder")
        old = read_manifest(root)
        changed = [k for k in RESUME_KEYS if old.get(k) != settings[k]]
        if changed:
            detail = "; ".join(f"{k}: recorded {old.get(k)!r}, now {settings[k]!r}" for k in changed)
            raise ManifestError(f"{root} was recorded with other settings ({detail}); resume with the same "
                                f"settings (the CLI takes them from the manifest when not given) or use a new folder")
        created = old.get("created", created)
    elif any(root.glob("shard-*.safetensors")):
        raise ManifestError(f"{root} holds shards but no {MANIFEST}; it is not a recording this tool can continue")
    extra = {
        "base": {"name": migm.name, "family": migm.family, "config": migm.config.to_dict()},
        "num_image_tokens": num_image_tokens,
        "reveal_counts": counts,
        **recipe.manifest_extra(migm, sampler, conditions_spec),
        "created": created,
        "command": command or "",
        "software": _software(),
    }
    lock = None
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        lock = RecordingLock(root)
        # Leftovers of this tool's own interrupted writes; nothing else in the folder is touched.
        for tmp in [*root.glob(f"shard-*.safetensors{TMP_SUFFIX}"), *root.glob(f"{MANIFEST}{TMP_SUFFIX}")]:
            tmp.unlink()
    try:
        if barrier is not None:
            barrier()
        done = _scan(root, plan, settings, verify, log)
        mine = share(plan, rank, world_size)
        todo = [p for p in mine if p[0] not in done]
        mine_total = sum(n for _, _, n in mine)
        already = sum(n for j, _, n in mine if j in done)
        if rank == 0:
            remaining_all = sum(n for j, _, n in plan if j not in done)
            free = shutil.disk_usage(root).free
            log(f"recording {count} trajectories of {migm.name} ({', '.join(branches)}; N={steps} steps, "
                f"{schedule or migm.family}, cfg {cfg}) into {root}: {human_bytes(bpt)} per trajectory, "
                f"{human_bytes(bpt * count)} in all in {len(plan)} shards of {shard_size}; "
                f"{sum(n for j, _, n in plan if j in done)} already on disk; about {human_bytes(bpt * remaining_all)} "
                f"to write, {human_bytes(free)} free" + (f"; {world_size} processes" if world_size > 1 else "")
                + ("" if policy is None else f"; on-policy: tokens from the shortcut with full steps "
                   f"{','.join(map(str, settings['policy']['full_step_indices']))}, base features at every step"))
            if check_disk_space and bpt * remaining_all > free:
                raise ManifestError(f"recording needs about {human_bytes(bpt * remaining_all)} but {root} has only "
                                    f"{human_bytes(free)} free; record fewer trajectories (--count), free space, "
                                    f"or pass --no-disk-check")
            write_json_atomic(manifest_path, _manifest(settings, extra, done, plan))

        result = RecordResult(out_dir=root, planned=count, mine=mine_total, already=already, written=0)
        bar = ProgressBar(mine_total, desc=f"record[{rank}]" if world_size > 1 else "record", unit="traj",
                          start=already, enabled=show_progress)
        done_mine = already
        if progress is not None:
            progress(done_mine, mine_total)

        def stop_requested() -> bool:
            return should_stop is not None and bool(should_stop())

        try:
            for j, first, n in todo:
                buffers = {b: torch.empty((n, steps, *shapes[b]), dtype=fdtype) for b in branches}
                revealed = {b: torch.empty((n, shapes[b][0]), dtype=torch.int16) for b in branches}
                conditions = {b: torch.empty(n, dtype=torch.int64) for b in branches}
                final_ids = torch.empty((n, num_image_tokens), dtype=torch.int32)
                seeds = torch.empty(n, dtype=torch.int64)
                extra_tensors: dict[str, torch.Tensor] = {}  # family-specific per-branch tensors ({b}.{name})
                for b0 in range(first, first + n, batch_size):
                    nb = min(batch_size, first + n - b0)
                    lo = b0 - first
                    batch_seed = derive_seed(seed, b0 // batch_size)
                    batch_conditions = [recipe.condition_of(conditions_spec, i) for i in range(b0, b0 + nb)]
                    last = {}

                    def collect(info, lo=lo, nb=nb, last=last):
                        feats = info.feats if policy is None else info.base_feats
                        for b, feat in recipe.split_features(feats, branches, info.state).items():
                            seq = feat.shape[1]  # shorter than the layout when the family pads (DiMOO)
                            buffers[b][lo:lo + nb, info.step, :seq] = feat.to(fdtype).cpu()  # cast first: half the copy
                            if seq < buffers[b].shape[2]:
                                buffers[b][lo:lo + nb, info.step, seq:] = 0
                        last["state"] = info.state
                        if stop_requested():
                            raise RecordingStopped

                    on_policy = {} if policy is None else dict(
                        shortcut=policy, full_steps=settings["policy"]["full_step_indices"], base_every_step=True)
                    res = sample(migm, batch_conditions, steps=steps, seed=batch_seed, callback=collect, decode=False,
                                 **on_policy, **sampler)
                    records = recipe.branch_records(migm, last["state"], branches, shapes=shapes, first=b0,
                                                    conditions=conditions_spec)
                    for b, rec in records.items():
                        revealed[b][lo:lo + nb] = rec["revealed_at"].to("cpu", torch.int16)
                        conditions[b][lo:lo + nb] = rec["condition"].to("cpu", torch.int64)
                        for key, t in rec.items():
                            if key in ("revealed_at", "condition"):
                                continue
                            name = f"{b}.{key}"
                            if name not in extra_tensors:
                                extra_tensors[name] = torch.empty((n, *t.shape[1:]), dtype=t.dtype)
                            extra_tensors[name][lo:lo + nb] = t.cpu()
                    final_ids[lo:lo + nb] = recipe.final_ids(res).to("cpu", torch.int32)
                    seeds[lo:lo + nb] = batch_seed
                    done_mine += nb
                    bar.update(nb)
                    if progress is not None:
                        progress(done_mine, mine_total)
                tensors = {"final_ids": final_ids, "index": torch.arange(first, first + n, dtype=torch.int64),
                           "seed": seeds}
                for b in branches:
                    tensors[f"{b}.features"] = buffers[b]
                    tensors[f"{b}.revealed_at"] = revealed[b]
                    tensors[f"{b}.condition"] = conditions[b]
                tensors.update(extra_tensors)
                entry = write_shard(root / shard_name(j), tensors, first=first, count=n, fingerprint=migm.fingerprint)
                done[j] = entry
                result.written += n
                result.shards_written.append(entry["file"])
                result.bytes_written += entry["bytes"]
                if rank == 0:
                    write_json_atomic(manifest_path, _manifest(settings, extra, done, plan))
        except RecordingStopped:
            result.interrupted = True
            log(f"stopped on request; {len(done)} of {len(plan)} shards are complete; continue with --resume")
        except OSError as exc:  # a full disk, a folder gone read-only: what is complete stays, and says so
            raise OSError(f"recording stopped: {exc}; {len(done)} of {len(plan)} shards are complete and kept; "
                          f"make room (or move the folder) and continue with --resume") from None
        finally:
            bar.close()
        if barrier is not None and not result.interrupted:
            barrier()
        if rank == 0:
            final = _scan(root, plan, settings, False, log)
            write_json_atomic(manifest_path, _manifest(settings, extra, final, plan))
            result.complete = len(final) == len(plan)
    finally:
        if lock is not None:
            lock.release()
    result.seconds = time.perf_counter() - t_start
    return result


def policy_settings(migm, policy, steps: int, full_steps: int | None, placement: str,
                    regime: str | None = None) -> dict | None:
    """What decides an on-policy recording's tokens: the shortcut (by fingerprint) and its full steps
    (``regime``: the recording's, for a shortcut file with per-regime placements)."""
    if policy is None:
        if full_steps is not None:
            raise ValueError("--policy-full-steps needs --policy-shortcut (the shortcut whose sampling to follow)")
        return None
    if full_steps is None:
        raise ValueError("--policy-shortcut needs --policy-full-steps B: how many of the N steps run the base model "
                         "when the shortcut samples")
    if not 1 <= full_steps < steps:
        raise ValueError(f"--policy-full-steps must be between 1 and steps - 1 = {steps - 1} (some steps must be "
                         f"shortcut steps), got {full_steps}")
    migm.check_shortcut(policy)
    calibrated, _ = resolve_placement(steps, full_steps, placement, policy, regime)
    if placement == "calibrated" and calibrated is None:
        raise ValueError(f"the policy shortcut has no calibrated placement for N={steps}, B={full_steps}; use "
                         f"--policy-placement paper or calibrate it first (training.calibrate)")
    indices = calibrated or resolve_full_steps(steps, full_steps)
    return {"shortcut_fingerprint": fingerprint(policy.state_dict(), policy.config.to_dict()),
            "full_step_indices": [int(i) for i in indices], "placement": "calibrated" if calibrated else "paper"}


# -- command line -------------------------------------------------------------------


def read_prompts(path) -> list[str]:
    """One prompt per line (UTF-8); blank lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--prompts {path}: cannot read the file ({exc})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt (one prompt per line)")
    return prompts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.record",
        description="Record plain-sampling trajectories of a base model for shortcut training. "
                    "Settings left out on --resume are taken from the folder's manifest.",
    )
    p.add_argument("--migm", required=True, help="base model: native .safetensors, the published MaskGIT .pth, "
                                                 "or a Lumina-DiMOO checkpoint folder")
    p.add_argument("--out", required=True, help="dataset folder (created; holds manifest.json and shard-*.safetensors)")
    p.add_argument("--count", type=int, help="trajectories to record in all (required for a new folder)")
    p.add_argument("--classes", help="classes to cycle through: 'all' (default), '0-9', '0,3,7', class names, "
                                         "or 'none' for unconditional sampling (one branch, no guidance)")
    p.add_argument("--prompts", metavar="FILE", help="Lumina-DiMOO: a text file with one prompt per line; trajectory i "
                                                     "gets line i, cycling")
    p.add_argument("--steps", type=int, help=f"N_train sampling steps (default {DEFAULTS['steps']}, the paper's "
                                             f"MaskGIT setting; Lumina-DiMOO: {DIMOO_DEFAULTS['steps']})")
    p.add_argument("--cfg", type=float, help="guidance scale w (default: the model's recommended value; MaskGIT-512 "
                                             "2.8, Lumina-DiMOO 4.0); 0 records only the conditional branch, and "
                                             "--classes none ignores it")
    p.add_argument("--temperature", type=float, help="Lumina-DiMOO sampling temperature (default: the model's, 1.0)")
    p.add_argument("--height", type=int, help=f"Lumina-DiMOO image height in pixels, a multiple of 16 (default "
                                              f"{DIMOO_DEFAULTS['height']})")
    p.add_argument("--width", type=int, help=f"Lumina-DiMOO image width in pixels, a multiple of 16 (default "
                                             f"{DIMOO_DEFAULTS['width']})")
    p.add_argument("--sm-temp", type=float, help="softmax temperature (default: the model's; MaskGIT-512 1.0)")
    p.add_argument("--r-temp", type=float, help="Gumbel randomization temperature (default: the model's; MaskGIT-512 7.0)")
    p.add_argument("--schedule", choices=REVEAL_MODES, help="reveal schedule (default: the model's; arccos)")
    p.add_argument("--randomize", choices=("linear", "none"), help="confidence randomization (default: the model's; linear)")
    p.add_argument("--seed", type=int, help=f"run seed; trajectory i depends only on it and i (default {DEFAULTS['seed']})")
    p.add_argument("--batch", type=int, help=f"trajectories sampled together (default {DEFAULTS['batch_size']}; "
                                             f"Lumina-DiMOO: {DIMOO_DEFAULTS['batch_size']})")
    p.add_argument("--shard-size", type=int, help="trajectories per shard, a multiple of --batch (default: about 256 MB per shard, at least 8 shards)")
    p.add_argument("--dtype", choices=("fp16", "bf16"), help="stored feature dtype (default fp16)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--base-dtype", choices=("fp32", "bf16", "fp16"), help="compute dtype of the base model (default fp32; "
                                                                      "Lumina-DiMOO: bf16 on GPUs, fp32 on the CPU)")
    p.add_argument("--policy-shortcut", metavar="SC", help="record on-policy: tokens follow this shortcut's sampling "
                                                         "(with --policy-full-steps), features are the base model's "
                                                         "at every step; give it again on --resume")
    p.add_argument("--policy-full-steps", type=int, metavar="B", help="full steps of the policy's sampling")
    p.add_argument("--policy-placement", choices=PLACEMENTS, default="auto",
                   help="where the policy's B full steps go, as the sampler's placement (default auto: the "
                        "shortcut file's calibrated placement for (N, B) when it has one, else the paper's)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted recording in --out")
    p.add_argument("--verify", action="store_true", help="with --resume: re-read every finished shard and re-record any that fails its checksum")
    p.add_argument("--no-disk-check", action="store_true", help="record even when the estimate exceeds the free disk space")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


MASKGIT_ONLY = ("classes", "sm_temp", "r_temp", "schedule", "randomize")
DIMOO_ONLY = ("prompts", "temperature", "height", "width")


def family_of(path) -> str:
    """The base model family of a --migm path, without loading it (a folder is Lumina-DiMOO)."""
    return "dimoo" if Path(path).is_dir() else "maskgit"


def resolve_settings(args, manifest: dict | None, family: str = "maskgit") -> dict:
    """CLI values, else the manifest's (on --resume), else the family's defaults."""
    old = manifest or {}
    old_sampler = old.get("sampler", {})
    dtype_key = {"fp16": "float16", "bf16": "bfloat16", None: None}[args.dtype]
    defaults = FAMILY_DEFAULTS.get(family, DEFAULTS)
    wrong = MASKGIT_ONLY if family == "dimoo" else DIMOO_ONLY
    given = [f"--{k.replace('_', '-')}" for k in wrong if getattr(args, k, None) is not None]
    if given:
        kind = "Lumina-DiMOO (text-to-image)" if family == "dimoo" else "MaskGIT (class-conditional)"
        raise ValueError(f"{', '.join(given)} do(es) not apply to {kind} base models")

    def pick(value, key, recorded):
        if value is not None:
            return value
        return recorded if recorded is not None else defaults[key]

    count = args.count if args.count is not None else old.get("num_trajectories")
    if count is None:
        raise ValueError("--count is required for a new recording")
    common = {
        "count": count,
        "steps": pick(args.steps, "steps", old.get("steps")),
        "cfg": args.cfg if args.cfg is not None else old_sampler.get("cfg"),
        "seed": pick(args.seed, "seed", old.get("seed")),
        "batch_size": pick(args.batch, "batch_size", old.get("batch_size")),
        "shard_size": args.shard_size if args.shard_size is not None else old.get("shard_size"),
        "feature_dtype": pick(dtype_key, "feature_dtype", old.get("feature_dtype")),
    }
    if family == "dimoo":
        prompts = read_prompts(args.prompts) if args.prompts is not None else old.get("conditions", {}).get("prompts")
        if prompts is None:
            raise ValueError("--prompts FILE (one prompt per line) is required for a new Lumina-DiMOO recording")
        sampler_keys = ("temperature", "height", "width")
        common["prompts"] = prompts
    else:
        sampler_keys = ("sm_temp", "r_temp", "schedule", "randomize")
        common["classes"] = args.classes if args.classes is not None else old.get("conditions", {}).get("classes")
    for key in sampler_keys:  # None: the model's recommended value (record_trajectories resolves it)
        value = getattr(args, key)
        common[key] = value if value is not None else old_sampler.get(key, defaults.get(key))
    return common


def main(argv: Sequence[str] | None = None) -> int:
    from shortcut_core import load_migm, load_shortcut
    from shortcut_core.devices import resolve_dtype
    from shortcut_core.checkpoints import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        d = setup(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = print if d.is_main else (lambda msg: None)
    try:
        manifest = None
        if args.resume and (Path(args.out) / MANIFEST).exists():
            manifest = read_manifest(args.out)
        family = family_of(args.migm)
        settings = resolve_settings(args, manifest, family)
        dtype_name_ = args.base_dtype or ("fp32" if family == "maskgit" else None)  # DiMOO: the loader's choice
        base_dtype = resolve_dtype(dtype_name_)
        migm = load_migm(args.migm, device=d.device, dtype=base_dtype)
        policy = None
        if args.policy_shortcut:
            policy = load_shortcut(args.policy_shortcut, migm)
        command = " ".join(shlex.quote(a) for a in ["python", "-m", "training.record", *argv])
        if d.world_size > 1:
            command = f"torchrun --nproc_per_node={d.world_size} " + command.removeprefix("python ")
        result = record_trajectories(
            migm, args.out, **settings, resume=args.resume, verify=args.verify, rank=d.rank,
            world_size=d.world_size, barrier=d.barrier if d.active else None,
            show_progress=not args.no_progress, check_disk_space=not args.no_disk_check, log=log, command=command,
            policy=policy, policy_full_steps=args.policy_full_steps, policy_placement=args.policy_placement,
        )
        print(f"[rank {d.rank}] {result.report()}" if d.active else result.report(), flush=True)
        return 0
    except (ValueError, ManifestError, ShardError, CheckpointError, OSError) as exc:  # OSError: disk full, no access
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        d.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
