"""Compare candidate shortcuts of the embedded model: tracking error, step cost and a quick FD.

For every shortcut file it reads the held-out validation its training wrote into the file
(single-step MSE ratio to copy-previous, and after 2..k chained shortcut steps), times one
shortcut step against one full step (head and sampling included), and samples a small
FD-FMNIST check of shortcut N/B against plain N and plain B in both regimes, with the same
seeds for every candidate (with the file's calibrated placement for N/B when it has one),
and against the training-free feature cache at the candidate's own full steps (the control a
shortcut has to beat). Each FD is also taken against plain N's own samples at seeds no row
uses ('to base'): how faithfully the candidate reproduces the base model, which FD against
the data cannot tell apart from landing near the data by chance. Writes a markdown table
(and JSON) for ``docs/results``.

    python -m training.fmnist.ablation A.safetensors B.safetensors --names a,b --out runs/fmnist/ablation.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from shortcut_core import FeatureCache, full_step_indices, generate, load_migm, load_shortcut
from shortcut_core.placement import calibrated_indices
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import frechet_distance_stats, image_stats, reference_stats
from training.fmnist.sweep import DEFAULT_MIGM, FIDELITY_SEED_OFFSET, REGIMES, regime_classes, step_costs, to_uint8


def sample_chunks(migm, shortcut, regime: str, steps: int, full, images: int, batch: int,
                  placement: str = "auto", seed: int = 0, **options) -> tuple[np.ndarray, float]:
    """(uint8 images, sampling seconds) of ``images`` images in chunks of ``batch`` (chunk k has seed
    ``seed`` + k, as the sweep's); placement as the sampler's (default auto: the file's calibrated one
    for (steps, full) when it has one); ``options``: sampling settings other than the model's recommended ones."""
    out, seconds = [], 0.0
    for chunk in range(-(-images // batch)):
        r = generate(migm, regime_classes(regime, batch), steps=steps, full_steps=full,
                     shortcut=shortcut if full is not None else None, seed=seed + chunk, placement=placement,
                     **options)
        out.append(to_uint8(r.images))
        seconds += r.stats.seconds
    return np.concatenate(out)[:images], seconds


def second_block_start(images: int, batch: int) -> int:
    """Index where the second seed block of ``sample_chunks``' images begins: after half the chunks,
    so each block holds whole chunks (whole class cycles). Fewer than two chunks is an error, as
    there would be one block and no noise to measure."""
    chunks = -(-images // batch)
    if chunks < 2:
        raise ValueError(f"--images {images} in chunks of {batch} is one seed block; give at least two chunks")
    return chunks // 2 * batch


def quick_fd(migm, shortcut, regime: str, steps: int, full, images: int, batch: int, classifier,
             ref, placement: str = "auto", base=None, seed: int = 0) -> tuple[float, float, float | None]:
    """(FD-FMNIST, sampling ms per image, FD to ``base``) of ``sample_chunks``' images; ``base``: the
    feature statistics of the base model's own samples (``base_samples``), or None."""
    generated, seconds = sample_chunks(migm, shortcut, regime, steps, full, images, batch, placement, seed)
    stats = image_stats(generated, classifier)
    fd_base = None if base is None else frechet_distance_stats(stats, base)
    return frechet_distance_stats(stats, ref), seconds / images * 1e3, fd_base


def base_samples(migm, regime: str, steps: int, images: int, batch: int, classifier, seed: int = 0):
    """Feature statistics of plain N=``steps`` samples at seeds no row uses (the sweep's fidelity reference)."""
    generated, _ = sample_chunks(migm, None, regime, steps, None, images, batch, seed=FIDELITY_SEED_OFFSET + seed)
    return image_stats(generated, classifier)


def write_rows(out: Path, rows: list[dict], markdown: str) -> None:
    """An experiment's report: OUT.json (the rows) and OUT.md (their table)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(markdown)
    print(f"wrote {out.with_suffix('.md')}")


def placement_text(by_regime: dict) -> str:
    """'0,2,4,8', or 'cond 0,2,5; uncond paper' when the regimes differ."""
    shown = {regime: p if p == "paper" else ",".join(map(str, p)) for regime, p in by_regime.items()}
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    return "; ".join(f"{regime} {text}" for regime, text in shown.items())


def describe(shortcut) -> dict:
    info = getattr(shortcut, "info", {}) or {}
    val = (info.get("metrics") or {}).get("val") or {}
    training = info.get("training", {})
    chains = val.get("chain", {})
    return {
        "parameters": sum(p.numel() for p in shortcut.parameters()),
        "width": shortcut.config.width, "n_block": shortcut.config.n_block,
        "iters": training.get("iters"), "rollout": training.get("rollout", 1),
        "input_noise": training.get("input_noise", 0.0), "cos_weight": training.get("cos_weight", 0.0),
        "data": (info.get("data") or {}).get("path"),
        "val_single": val.get("mse_ratio"), "val_chain": {k: v["mse_ratio"] for k, v in chains.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("shortcuts", nargs="+", help="shortcut files of --migm")
    p.add_argument("--names", help="comma-separated row names (default: file stems)")
    p.add_argument("--migm", default=str(DEFAULT_MIGM))
    p.add_argument("--steps", type=int, default=16, help="N of the quick FD check")
    p.add_argument("--full-steps", type=int, default=4, help="B of the quick FD check")
    p.add_argument("--images", type=int, default=1000, help="images per FD (small: compare rows, not with the sweep)")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="chunk k uses seed + k (the sweep's are 0..: choose others "
                                                       "to pick a candidate without looking at the sweep's images)")
    p.add_argument("--out", default="runs/fmnist/ablation.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.names.split(",") if args.names else [Path(s).stem for s in args.shortcuts]
    if len(names) != len(args.shortcuts):
        p.error(f"--names lists {len(names)} names for {len(args.shortcuts)} shortcuts")
    migm = load_migm(args.migm)
    classifier = load_classifier()
    ref = reference_stats(classifier)
    n, b = args.steps, args.full_steps
    base = {regime: base_samples(migm, regime, n, args.images, args.batch, classifier, args.seed) for regime in REGIMES}
    baselines = {}
    for regime in REGIMES:
        for steps in (n, b):
            baselines[(regime, steps)] = quick_fd(migm, None, regime, steps, None, args.images, args.batch,
                                                  classifier, ref, base=base[regime], seed=args.seed)
            print(f"plain N={steps} {regime}: FD {baselines[(regime, steps)][0]:.2f}, to the base model's own "
                  f"samples {baselines[(regime, steps)][2]:.2f}", flush=True)
    rows, cache_fds = [], {}
    for name, path in zip(names, args.shortcuts):
        shortcut = load_shortcut(path, migm)
        row = {"name": name, "file": str(path), **describe(shortcut)}
        row["placement"] = {regime: calibrated_indices(shortcut, n, b, regime) or "paper" for regime in REGIMES}
        row["step_ratio"] = {regime: step_costs(migm, shortcut, args.batch, 5, regime)["step_ratio"] for regime in REGIMES}
        scores = {regime: quick_fd(migm, shortcut, regime, n, b, args.images, args.batch, classifier, ref,
                                   base=base[regime], seed=args.seed) for regime in REGIMES}
        row["fd"] = {regime: v[0] for regime, v in scores.items()}
        row["fd_base"] = {regime: v[2] for regime, v in scores.items()}
        # the same full steps with each skipped step reusing the last full step's feature
        full = {regime: tuple(full_step_indices(n, b) if placed == "paper" else placed)
                for regime, placed in row["placement"].items()}
        for key in full.items():
            if key not in cache_fds:
                cache_fds[key] = quick_fd(migm, FeatureCache(), key[0], n, list(key[1]), args.images, args.batch,
                                          classifier, ref, placement="paper", base=base[key[0]], seed=args.seed)
        row["cache_full_steps"] = {regime: list(steps) for regime, steps in full.items()}
        row["fd_cache"] = {regime: cache_fds[(regime, steps)][0] for regime, steps in full.items()}
        row["fd_base_cache"] = {regime: cache_fds[(regime, steps)][2] for regime, steps in full.items()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    chain_depths = sorted({k for r in rows for k in r["val_chain"]}, key=int)
    lines = [f"Quick check: N={n}, B={b}, {args.images} images per FD, seeds {args.seed}.. for every row (FD on "
             f"{args.images} images is biased upwards: compare rows of this table only); 'cache': the feature "
             f"cache (no shortcut) at the row's full steps. Plain N={n}: FD "
             f"{baselines[('cond', n)][0]:.2f} (cond) / {baselines[('uncond', n)][0]:.2f} (uncond); plain N={b}: "
             f"{baselines[('cond', b)][0]:.2f} / {baselines[('uncond', b)][0]:.2f}. 'to base': FD to {args.images} "
             f"plain N={n} samples at other seeds (the base model's own; lower = more faithful): plain N={n} itself "
             f"{baselines[('cond', n)][2]:.2f} / {baselines[('uncond', n)][2]:.2f} (the noise floor), plain N={b} "
             f"{baselines[('cond', b)][2]:.2f} / {baselines[('uncond', b)][2]:.2f}.", "",
             "| candidate | params | width x blocks | iters | rollout | input noise | cos weight | placement | "
             "val MSE ratio, "
             "1 step | " + " | ".join(f"after {k} chained" for k in chain_depths) +
             f" | full step / shortcut step (cond, uncond) | FD {n}/{b} cond (cache) | FD {n}/{b} uncond (cache) | "
             f"to base cond (cache) | to base uncond (cache) |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(chain_depths) + "---|---|---|---|---|"]
    for r in rows:
        single = f"{r['val_single']:.3f}" if r["val_single"] is not None else "-"
        chains = " | ".join(f"{r['val_chain'][k]:.3f}" if k in r["val_chain"] else "-" for k in chain_depths)
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['width']} x {r['n_block']} | {r['iters']} | "
                     f"{r['rollout']} | {r['input_noise']} | {r['cos_weight']} | "
                     f"{placement_text(r['placement'])} | "
                     f"{single} | {chains} | "
                     f"{r['step_ratio']['cond']:.1f}x, {r['step_ratio']['uncond']:.1f}x | {r['fd']['cond']:.2f} "
                     f"({r['fd_cache']['cond']:.2f}) | {r['fd']['uncond']:.2f} ({r['fd_cache']['uncond']:.2f}) | "
                     f"{r['fd_base']['cond']:.2f} ({r['fd_base_cache']['cond']:.2f}) | "
                     f"{r['fd_base']['uncond']:.2f} ({r['fd_base_cache']['uncond']:.2f}) |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    report = {"rows": rows, "baselines": {f"{k[0]}_N{k[1]}": v[0] for k, v in baselines.items()},
              "baselines_to_base": {f"{k[0]}_N{k[1]}": v[2] for k, v in baselines.items()},
              "settings": vars(args)}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
