"""Calibrate where a shortcut's full steps go, from its measured drift on held-out trajectories.

    python -m training.calibrate --data TRAJ [TRAJ ...] --migm BASE --shortcut SC \
        --steps 16 24 --budgets 3 4 6 [--metric tokens|mse] [--out SC_CALIBRATED]

On held-out recorded trajectories (the split the shortcut's own training held out, read
from its file, unless given) it runs the shortcut as the sampler does: from the recorded
feature of a full step s it chains k shortcut steps, each fed the previous prediction and
the tokens the trajectory revealed, and measures at every (s, k) how far the prediction
drifted from the recorded feature. Two metrics:

- ``mse`` (default): the feature MSE at the still-masked positions;
- ``tokens`` (MaskGIT): how often the head's most likely code at a still-masked position
  differs between the prediction and the recorded feature.

Each entry is weighted by the share of the image the step commits (its reveal count / L):
a drifted step that reveals many tokens costs more. Dynamic programming then picks the B
full steps of least total error for every requested (N, B) (``shortcut_core.placement``).

Recordings have N_train steps. Another N is handled by carrying the table over through the
mask ratio: each step of the N-step run sits at the fractional training step with the same
fraction of the image still masked, and the table is interpolated there
(``shortcut_core.placement.remap_errors``); recording at that N instead and passing it as
``--data`` measures it directly.

The placements (and the error table) are written into the shortcut file's metadata; the
weights are unchanged. ``generate(..., placement="calibrated")`` uses them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from shortcut_core import load_migm, load_shortcut, reveal_counts
from shortcut_core.checkpoints import CheckpointError, read_safetensors_metadata, rewrite_info
from shortcut_core.placement import (REGIME_WORDS, REGIMES, masked_before, optimal_placement, placement_cost,
                                     remap_errors, sampled_with)
from shortcut_core.schedules import full_step_indices

from .data import Recording, gather_pairs
from .trajectories import ManifestError, ShardError

METRICS = ("mse", "tokens")


@torch.no_grad()
def drift_table(migm, shortcut, recording: Recording, rows: dict[int, list[int]], *, metric: str, batch: int = 256,
                log=print) -> tuple[np.ndarray, int]:
    """(N, N) mean drift after k chained shortcut steps from a recorded feature at s, and the
    number of trajectory branches it averages (unweighted by reveal counts)."""
    steps = recording.steps
    sums = np.zeros((steps, steps))
    counts = np.zeros((steps, steps))
    if metric == "tokens" and not hasattr(migm.model, "head"):
        raise ValueError(f"the 'tokens' metric needs a model with a MaskGIT head; use --metric mse for {migm.family}")
    branches = 0
    for k in sorted(rows):
        cache = {k: recording.load(k)}
        for branch in recording.shard_branches(k):
            branches += len(rows[k])
            for b0 in range(0, len(rows[k]), batch):
                chunk = [(k, j) for j in rows[k][b0:b0 + batch]]
                for s in range(steps - 1):
                    pb = gather_pairs(recording, cache, chunk, branch, s, torch.device(migm.device), span=steps - 1)
                    pred = pb.prev.to(migm.dtype)
                    for depth, (target, inputs, mask) in enumerate([(pb.target, pb.inputs, pb.loss_mask), *pb.later]):
                        pred = shortcut(pred, **inputs)
                        drift = per_row_drift(migm, pred.float(), target, mask, metric)
                        sums[s, depth + 1] += float(drift.sum())
                        counts[s, depth + 1] += drift.numel()
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), branches


def per_row_drift(migm, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, metric: str) -> torch.Tensor:
    """(B,) drift of each row at its still-masked image positions."""
    m = mask.float()
    n = m.sum(1).clamp(min=1)
    if metric == "mse":
        return ((pred - target) ** 2).mean(-1).mul(m).sum(1) / n
    L = migm.config.num_image_tokens
    head = migm.model.head
    differ = head(pred[:, :L]).argmax(-1) != head(target[:, :L].to(pred.dtype)).argmax(-1)  # (B, L)
    return (differ.float() * m[:, :L]).sum(1) / n


def weighted(table: np.ndarray, counts: list[int]) -> np.ndarray:
    """Entry (s, k) times the share of the image step s+k reveals."""
    share = np.asarray(counts, dtype=np.float64) / float(sum(counts))
    out = np.zeros_like(table)
    n = table.shape[0]
    for s in range(n):
        for k in range(1, n - s):
            out[s, k] = table[s, k] * share[s + k]
    return out


def held_out_rows(recording: Recording, shortcut, val_fraction: float | None, val_max: int | None):
    training = (getattr(shortcut, "info", None) or {}).get("training", {})
    fraction = val_fraction if val_fraction is not None else training.get("val_fraction", 0.02)
    most = val_max if val_max is not None else training.get("val_max", 64)
    _, val = recording.split(fraction, most)
    if not val:
        raise ManifestError(f"no held-out trajectories with --val-fraction {fraction}; raise it")
    return val, fraction, most


def calibrate(args) -> dict:
    torch.set_num_threads(args.threads) if args.threads else None
    recording = Recording(args.data)
    migm = load_migm(args.migm)
    if migm.fingerprint != recording.fingerprint:
        raise CheckpointError(f"{', '.join(map(str, recording.roots))} was recorded from base model "
                              f"{recording.fingerprint}, but --migm {args.migm} is {migm.fingerprint}; calibrate on "
                              f"trajectories of the shortcut's own base model")
    shortcut = load_shortcut(args.shortcut, migm)
    if args.for_regime:
        found = {recording.recipe.placement_regime(migm, m["conditions"]) for m in recording.manifests}
        if found != {args.for_regime}:
            kinds = ", ".join(sorted(REGIME_WORDS.get(r, "mixed conditions") for r in found))
            raise ValueError(f"--for-regime {args.for_regime} calibrates {REGIME_WORDS[args.for_regime]}, but "
                             f"--data holds recordings of {kinds}; pass recordings of that regime only")
    rows, fraction, most = held_out_rows(recording, shortcut, args.val_fraction, args.val_max)
    n_train = recording.steps
    too_many = [b for b in args.budgets if b >= max(args.steps)]
    if too_many:
        raise ValueError(f"--budgets {too_many} leave no shortcut step at any of --steps {args.steps} (B must be "
                         f"below N; B = N is plain sampling): lower them")
    raw, branches = drift_table(migm, shortcut, recording, rows, metric=args.metric, batch=args.batch)
    sampler = recording.manifest.get("sampler", {})
    schedule = sampler.get("schedule", "arccos")
    train_counts = recording.manifest.get("reveal_counts") or reveal_counts(recording.num_image_tokens, n_train, schedule)
    base_table = weighted(raw, train_counts)
    placements: dict[str, dict[str, list[int]]] = {}
    summary = []
    for n in args.steps:
        counts = reveal_counts(recording.num_image_tokens, n, schedule)
        if n == n_train:
            table, how = base_table, "measured"
        else:
            # Remap the unweighted drift through the mask ratio, then weight with this N's reveal counts.
            table = weighted(remap_errors(raw, masked_before(train_counts), masked_before(counts)), counts)
            how = f"carried over from N={n_train} through the mask ratio"
        for b in args.budgets:
            if not 1 <= b < n:
                continue
            best = optimal_placement(table, b)
            paper = full_step_indices(n, b)
            placements.setdefault(str(n), {})[str(b)] = best
            summary.append({"steps": n, "budget": b, "calibrated": best, "paper": paper, "table": how,
                            "cost_calibrated": placement_cost(table, best), "cost_paper": placement_cost(table, paper)})
    return {"placements": placements, "summary": summary, "drift": raw.round(6).tolist(), "metric": args.metric,
            "recorded_steps": n_train, "held_out": {"val_fraction": fraction, "val_max": most,
                                                    "trajectory_branches": branches},
            "data": [str(r) for r in recording.roots], "schedule": schedule,
            "sampled_with": recorded_settings(recording.manifests)}


def recorded_settings(manifests: list[dict]) -> dict:
    """The sampling settings every recording shares (what the placements are valid for); {} when
    they differ, since no one setting then describes the data."""
    found = [sampled_with(m.get("sampler") or {}) for m in manifests]
    return found[0] if all(f == found[0] for f in found) else {}


def stored_placements(source: Path, target: Path, regime: str | None = None) -> tuple[Path, dict, dict]:
    """What a writer of placements starts from: ``target`` when it exists (placements added one
    run at a time), else ``source``; and that file's table {N: {B: steps}} and its provenance,
    ``regime``'s own (``by_regime``) or the shared one. Both are copies the caller may change."""
    path = target if target.is_file() else source
    stored = (read_safetensors_metadata(path).get("info") or {}).get("placements") or {}
    if regime is None:
        table, provenance = stored.get("table") or {}, stored
    else:
        table = (stored.get("by_regime") or {}).get(regime) or {}
        provenance = (stored.get("by_regime_source") or {}).get(regime) or {}
    return path, {n: dict(row) for n, row in table.items()}, dict(provenance)


def write_into(shortcut_path: Path, out: Path, placements: dict, regime: str | None = None) -> None:
    """Rewrite the shortcut file (or a copy) with ``placements`` (``table`` {N: {B: steps}} and how
    they were found) as its metadata's placements; weights unchanged. Without ``regime`` they
    replace the shared placements; with it, the table becomes that regime's own (``by_regime``,
    how it was found in ``by_regime_source``). Either way the file's other part stays: a
    placement written for one regime is kept until it is rewritten for that regime."""
    def update(info: dict) -> dict:
        old = dict(info.get("placements") or {})
        if regime is None:
            kept = {k: old[k] for k in ("by_regime", "by_regime_source") if k in old}
            return {**info, "placements": {**placements, **kept}}
        source = {k: v for k, v in placements.items() if k != "table"}
        old["by_regime"] = {**(old.get("by_regime") or {}), regime: placements["table"]}
        old["by_regime_source"] = {**(old.get("by_regime_source") or {}), regime: source}
        return {**info, "placements": old}

    rewrite_info(shortcut_path, out, "shortcut", update)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, nargs="+", action="extend", help="trajectory folder(s) of the base model")
    p.add_argument("--migm", required=True, help="the base model the trajectories were recorded from")
    p.add_argument("--shortcut", required=True, help="the shortcut .safetensors to calibrate")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="step counts N to calibrate for")
    p.add_argument("--budgets", type=int, nargs="+", required=True, help="full-step counts B (those < N are used)")
    p.add_argument("--metric", choices=METRICS, default="mse", help="drift measure (default mse)")
    p.add_argument("--val-fraction", type=float, help="held-out share (default: the shortcut training's own)")
    p.add_argument("--val-max", type=int, help="at most this many held-out trajectories (default: the training's)")
    p.add_argument("--batch", type=int, default=256, help="trajectories per shortcut call (default 256)")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--out", help="write the calibrated shortcut here (default: update --shortcut in place; the "
                                 "weights are unchanged)")
    p.add_argument("--report", help="also write the drift table and the placements as JSON here")
    p.add_argument("--for-regime", choices=REGIMES,
                   help="store the placements for this regime only (cond: class- or text-conditional sampling, "
                        "uncond: unconditional), over the ones both share; --data must be recordings of it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        for name in ("steps", "budgets"):
            if any(v < 1 for v in getattr(args, name)):
                raise ValueError(f"--{name} values must be at least 1")
        result = calibrate(args)
        command = " ".join(["python -m training.calibrate", *argv])
        out = Path(args.out or args.shortcut)
        write_into(Path(args.shortcut), out, {
            "table": result["placements"], "method": "dynamic programme over the drift table",
            "metric": result["metric"], "data": result["data"], "recorded_steps": result["recorded_steps"],
            "held_out": result["held_out"], "sampled_with": result["sampled_with"], "command": command},
            args.for_regime)
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(result, indent=1))
        for row in result["summary"]:
            print(f"N={row['steps']} B={row['budget']}: calibrated {row['calibrated']} (expected drift "
                  f"{row['cost_calibrated']:.4f}) vs paper {row['paper']} ({row['cost_paper']:.4f}); {row['table']}")
        print(f"wrote the placements into {out}" + (f" for {REGIME_WORDS[args.for_regime]} only" if args.for_regime
                                                    else "") + " (weights unchanged)")
        return 0
    except (ValueError, ManifestError, ShardError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
