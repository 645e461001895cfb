"""Held-out check of a shortcut file's placements before the sampler uses them by default.

For each (N, B) given, the shortcut samples with its file's placement and with the paper's,
in both regimes, on seeds the sweep does not use (chunk k has seed ``--seed`` + k). Reports
FD-FMNIST to the data on all images and on two seed blocks (the larger gap between either
row's blocks is the noise), and FD to the base model's own samples (plain N=16 at seeds no
row uses). The sampler's ``placement="auto"`` takes a file's placement for (N, B) whenever
it has one, so a placement belongs in a shipped file only if it is no worse beyond the noise
in either regime.

    python -m training.fmnist.placement_check --shortcut runs/fmnist/placed.safetensors \\
        --settings 16:2,16:3,24:4 --images 2000 --seed 100 --out runs/fmnist/placement_check
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from shortcut_core import load_migm, load_shortcut
from shortcut_core.placement import calibrated_indices
from training.fmnist.ablation import base_samples, sample_chunks, second_block_start, write_rows
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import extract_features, feature_stats, frechet_distance_stats, halves_fd, reference_stats
from training.fmnist.sweep import DEFAULT_MIGM, DEFAULT_SHORTCUT, REGIMES, block_noise, fd_text, verdict


def check(migm, shortcut, regime: str, steps: int, budget: int, images: int, batch: int, seed: int,
          classifier, ref, base) -> dict:
    """The file's placement against the paper's at (steps, budget), on the same seeds."""
    row = {"regime": regime, "steps": steps, "budget": budget, "images": images, "batch": batch, "seed": seed,
           "placement": calibrated_indices(shortcut, steps, budget, regime)}
    if row["placement"] is None:
        raise ValueError(f"the shortcut has no placement for N={steps}, B={budget} in the {regime} regime")
    half = second_block_start(images, batch)
    for name in ("paper", "calibrated"):
        generated, seconds = sample_chunks(migm, shortcut, regime, steps, budget, images, batch, placement=name,
                                           seed=seed)
        feats = extract_features(generated, classifier)  # once: all images, the blocks and the base share it
        stats = feature_stats(feats)
        row[name] = {"fd": frechet_distance_stats(stats, ref), "blocks": halves_fd(feats, half, ref),
                     "to_base": frechet_distance_stats(stats, base), "ms_per_image": seconds / images * 1e3}
    paper, cal = row["paper"], row["calibrated"]
    row["noise"] = block_noise({"fd_blocks": paper["blocks"]}, {"fd_blocks": cal["blocks"]})
    row["verdict"] = verdict({"fd_shortcut": cal["fd"], "fd_plain": paper["fd"], "noise": row["noise"]})
    return row


def markdown(rows: list[dict], args) -> str:
    lines = [f"Placement check: {args.images} images per row, seeds {args.seed}.. (chunks of {args.batch}); FD-FMNIST "
             f"to the data (seed blocks), and to plain N={args.base_steps}'s own samples ('to base'). Shortcut `{args.shortcut}`.", "",
             "| regime | N/B | file's placement | paper: FD (blocks) | file's: FD (blocks) | noise | verdict | "
             "to base: paper | file's |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, c = r["paper"], r["calibrated"]
        lines.append(f"| {r['regime']} | {r['steps']}/{r['budget']} | {','.join(map(str, r['placement']))} | "
                     f"{fd_text(p)} | {fd_text(c)} | {r['noise']:.2f} | {r['verdict']} | "
                     f"{p['to_base']:.2f} | {c['to_base']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.placement_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--migm", default=str(DEFAULT_MIGM))
    p.add_argument("--shortcut", default=str(DEFAULT_SHORTCUT))
    p.add_argument("--settings", required=True, help="N:B pairs the file carries placements for, e.g. 16:2,16:3")
    p.add_argument("--regimes", default="uncond,cond", help="comma list of: " + ", ".join(REGIMES))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=100, help="first chunk's seed (the sweep uses 0..)")
    p.add_argument("--base-steps", type=int, default=16, help="plain N of the 'to base' reference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/fmnist/placement_check"), help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    if -(-args.images // args.batch) < 2:
        p.error(f"--images {args.images} in chunks of {args.batch} is one seed block; give at least two chunks")
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    shortcut = load_shortcut(args.shortcut, migm)
    pairs = [tuple(int(v) for v in item.split(":")) for item in args.settings.split(",") if item.strip()]
    classifier = load_classifier()
    ref = reference_stats(classifier)
    rows = []
    for regime in args.regimes.split(","):
        base = base_samples(migm, regime, args.base_steps, args.images, args.batch, classifier, seed=args.seed)
        for steps, budget in pairs:
            rows.append(check(migm, shortcut, regime, steps, budget, args.images, args.batch, args.seed,
                              classifier, ref, base))
            r = rows[-1]
            print(f"{regime} {steps}/{budget}: paper {r['paper']['fd']:.2f}, file's {r['calibrated']['fd']:.2f} "
                  f"({r['verdict']}, noise {r['noise']:.2f}); to base {r['paper']['to_base']:.2f} vs "
                  f"{r['calibrated']['to_base']:.2f}", flush=True)
    write_rows(args.out, rows, markdown(rows, args))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
