"""Experiment: decide full steps during sampling from a cheap signal, with the budget B as a cap.

Rule (decided for the whole batch, which shares one base pass): step 0 is full. At every
later step the shortcut predicts the next feature anyway (it is cheap); the relative size of
the change it predicts, mean over the batch of ||pred - prev|| / ||prev|| per position, is
added to a drift account since the last full step. When the account reaches ``tau`` and
full steps are left, the step runs the base model instead (the prediction is dropped) and
the account starts again. ``tau`` is set per regime from one chunk of seeds the evaluation
never uses (100 images): about the smallest value whose uncapped rule spends at most B full
steps, so the rule places about B full steps without being cut off by the cap.

It is compared with the paper's even placement at the same N and B, on the same seeds, by
FD-FMNIST (the sweep's metric), all images and two seed blocks. An experiment, not a sampler
option: ``--write-placements`` stores the placement it chose in a shortcut file, where
``placement="calibrated"`` finds it.

    python -m training.fmnist.adaptive --steps 16 --budget 4 --images 1000 --out runs/fmnist/adaptive.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from shortcut_core import load_migm, load_shortcut
from shortcut_core.checkpoints import read_safetensors_metadata
from shortcut_core.placement import sampled_with
from training.calibrate import write_into
from training.fmnist.ablation import quick_fd, sample_chunks
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import fd_and_blocks, reference_stats
from training.fmnist.sweep import DEFAULT_MIGM, DEFAULT_SHORTCUT, REGIMES, regime_classes, to_uint8

TUNING_SEED = 10_000  # far from the evaluation chunks' seeds 0, 1, ...
RULE = "adaptive rule: drift account of the predicted feature change (training.fmnist.adaptive)"


@torch.inference_mode()
def adaptive_run(migm, shortcut, classes, *, steps: int, budget: int | None, tau: float, seed: int):
    """(images or None, full-step indices) of one batch under the rule; budget None: uncapped."""
    generator = torch.Generator(device=migm.device).manual_seed(seed)
    state = migm.start(classes, steps=steps, generator=generator)
    feats, account, full = None, 0.0, []
    for step in range(steps):
        if step > 0:
            pred = migm.shortcut_features(shortcut, feats, state)
            change = (pred - feats).norm(dim=-1) / feats.norm(dim=-1).clamp(min=1e-6)
            account += float(change.mean())
            if account < tau or (budget is not None and len(full) >= budget):
                feats = pred
                migm.advance(state, feats, step, generator)
                continue
        feats = migm.base_features(state)
        full.append(step)
        account = 0.0
        migm.advance(state, feats, step, generator)
    return migm.decode(state), full


def tune_tau(migm, shortcut, regime: str, steps: int, budget: int, batch: int = 100) -> tuple[float, list[int]]:
    """About the smallest tau whose uncapped rule spends at most ``budget`` full steps (bisection
    in log tau; the count falls as tau grows)."""
    classes = regime_classes(regime, batch)

    def full_at(tau: float) -> list[int]:
        return adaptive_run(migm, shortcut, classes, steps=steps, budget=None, tau=tau, seed=TUNING_SEED)[1]

    lo, hi = np.log(0.01), np.log(50.0)
    at_hi = full_at(float(np.exp(hi)))
    if len(at_hi) > budget:
        raise ValueError(f"no tau up to 50 keeps the rule within {budget} full steps")
    for _ in range(12):
        mid = (lo + hi) / 2
        at_mid = full_at(float(np.exp(mid)))
        if len(at_mid) > budget:
            lo = mid
        else:
            hi, at_hi = mid, at_mid
    return float(np.exp(hi)), at_hi


def evaluate(migm, shortcut, regime: str, steps: int, budget: int, images: int, batch: int, classifier, ref,
             plain: bool = False) -> dict:
    """The rule vs the paper's placement on the same seeds (chunk k has seed k, as the sweep's)."""
    tau, tuning_full = tune_tau(migm, shortcut, regime, steps, budget)
    chunks = -(-images // batch)
    if chunks < 2:
        raise ValueError(f"--images {images} in chunks of {batch} is one seed block; give at least two chunks")
    out, placements = [], []
    for chunk in range(chunks):
        imgs, full = adaptive_run(migm, shortcut, regime_classes(regime, batch), steps=steps, budget=budget, tau=tau,
                                  seed=chunk)
        out.append(to_uint8(imgs))
        placements.append(full)
    half = chunks // 2 * batch
    fd_rule, blocks_rule = fd_and_blocks(np.concatenate(out)[:images], half, classifier, ref)
    paper = sample_chunks(migm, shortcut, regime, steps, budget, images, batch, placement="paper")[0]
    fd_paper, blocks_paper = fd_and_blocks(paper, half, classifier, ref)
    row = {"regime": regime, "steps": steps, "budget": budget, "images": images, "tau": tau,
           "tuning_placement": tuning_full, "placements": placements, "fd_adaptive": fd_rule,
           "fd_adaptive_blocks": blocks_rule, "fd_paper": fd_paper, "fd_paper_blocks": blocks_paper}
    if plain:
        row["fd_plain"] = quick_fd(migm, None, regime, steps, None, images, batch, classifier, ref)[0]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.adaptive", description=__doc__.split("\n\n")[0])
    p.add_argument("--migm", default=str(DEFAULT_MIGM))
    p.add_argument("--shortcut", default=str(DEFAULT_SHORTCUT))
    p.add_argument("--regimes", default="cond,uncond", help="comma list of: " + ", ".join(REGIMES))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--budget", type=int, default=4, help="most full steps per run (the cap B)")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plain", action="store_true", help="also plain sampling at --steps (the sweep has it)")
    p.add_argument("--out", type=Path, default=Path("runs/fmnist/adaptive.json"))
    p.add_argument("--rows", help="the JSON a previous run wrote with --out: use its rows instead of sampling")
    p.add_argument("--write-placements", help="store the placement the rule chose most often for (--steps, "
                                              "--budget) as the calibrated placement of this shortcut file (created "
                                              "from --shortcut; a table another method wrote is replaced)")
    p.add_argument("--for-regime", choices=REGIMES,
                   help="with --write-placements: store it for this regime only (its rows' votes), where it overrides "
                        "the placement both regimes share (default: shared, from every regime's votes)")
    args = p.parse_args(argv)
    if not 1 <= args.budget < args.steps:
        p.error(f"--budget must be between 1 and --steps - 1, got {args.budget}")
    if args.for_regime and not args.write_placements:
        p.error("--for-regime says where --write-placements stores the placement; give --write-placements too")
    if args.for_regime and not args.rows and args.for_regime not in args.regimes.split(","):
        p.error(f"--for-regime {args.for_regime} chooses from that regime's runs; add it to --regimes")
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    made_at = sampled_with(migm.sampling_defaults)  # the rule samples at the file's settings
    if args.rows:  # a saved evaluation: store its placement without sampling again
        rows = [r for r in json.loads(Path(args.rows).read_text())
                if (r["steps"], r["budget"]) == (args.steps, args.budget)]
        if not [r for r in rows if args.for_regime in (None, r["regime"])]:
            p.error(f"--rows {args.rows} holds no rows for --steps {args.steps} --budget {args.budget}"
                    + (f" in the {args.for_regime} regime" if args.for_regime else ""))
        if args.write_placements:
            write_placements(args, rows, made_at, argv)
        return rows
    shortcut = load_shortcut(args.shortcut, migm)
    classifier = load_classifier()
    ref = reference_stats(classifier)
    rows = []
    for regime in args.regimes.split(","):
        row = evaluate(migm, shortcut, regime.strip(), args.steps, args.budget, args.images, args.batch, classifier,
                       ref, plain=args.plain)
        rows.append(row)
        blocks = (lambda key: f" (blocks {row[key][0]:.1f} / {row[key][1]:.1f})")  # noqa: E731
        print(f"{regime}: N={args.steps} B<={args.budget}: adaptive FD {row['fd_adaptive']:.1f}"
              f"{blocks('fd_adaptive_blocks')} (tau {row['tau']:.3g}, placements {sorted(set(map(tuple, row['placements'])))}),"
              f" paper FD {row['fd_paper']:.1f}{blocks('fd_paper_blocks')}"
              + (f", plain N={args.steps} FD {row['fd_plain']:.1f}" if args.plain else ""), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    if args.write_placements:
        write_placements(args, rows, made_at, argv)
    return rows


def write_placements(args, rows: list[dict], made_at: dict, argv) -> None:
    """Store the placement the rule chose most often (over every chunk of every regime, or of
    ``--for-regime`` alone, then stored for that regime only) as the shortcut's calibrated one for
    (N, B): a fixed placement, which the sweep then measures as such. ``made_at``: the sampling
    settings the rows were drawn at, stored with it (``sampled_with``)."""
    if args.for_regime:
        rows = [row for row in rows if row["regime"] == args.for_regime]
    votes = Counter(tuple(p) for row in rows for p in row["placements"])
    placement, count = votes.most_common(1)[0]
    print(f"the rule's placements for N={args.steps}, B={args.budget}: "
          + ", ".join(f"{list(p)} in {n} chunk(s)" for p, n in votes.most_common()))
    target = Path(args.write_placements)
    source = target if target.is_file() else Path(args.shortcut)
    stored = (read_safetensors_metadata(source).get("info") or {}).get("placements") or {}
    if args.for_regime:  # that regime's own table, and how it was found
        current = (stored.get("by_regime") or {}).get(args.for_regime) or {}
        provenance = (stored.get("by_regime_source") or {}).get(args.for_regime) or {}
    else:
        current, provenance = stored.get("table") or {}, stored
    same_method = provenance.get("method") == RULE  # a table another method wrote is replaced, not mixed in
    table = {n: dict(row) for n, row in current.items()} if same_method else {}
    runs = dict(provenance.get("runs", {})) if same_method else {}
    table.setdefault(str(args.steps), {})[str(args.budget)] = list(placement)
    command = " ".join(["python -m training.fmnist.adaptive", *(argv or sys.argv[1:])])
    runs[f"{args.steps}/{args.budget}"] = {
        "chosen_in": f"{count} of {sum(votes.values())} chunks", "command": command,
        **{row["regime"]: {"tau": row["tau"], "fd_rule": row["fd_adaptive"], "fd_paper": row["fd_paper"],
                           "images": row["images"]} for row in rows}}
    write_into(source, target, {"table": table, "method": RULE, "runs": runs, "command": command,
                                "sampled_with": made_at}, args.for_regime)
    print(f"wrote the placement {list(placement)} for N={args.steps}, B={args.budget}"
          + (f" ({args.for_regime} only)" if args.for_regime else "") + f" into {target}")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
