"""Experiment: how closely must a shortcut track the base model for N/B to sample like plain N?

On every skipped step the probe also runs the base model (cost is not the point here) and
samples from ``truth + t * (filler - truth)``, where ``filler`` is what a sampler without the
base pass would have: the shortcut's chained prediction (fed its own previous predictions since
the last full step, exactly as the sampler does) or the feature cache (the last full step's
feature). ``t = 0`` is plain N=steps token for token; ``t = 1`` is the shortcut (or the cache)
at those full steps. Scaling t scales the feature error's size and keeps its direction, so FD
against t says what error a better-trained shortcut would need to reach, and the per-step
error is reported as the training validation reports it: MSE at the still-masked positions
over the MSE of copying the previous step's true feature.

    python -m training.fmnist.tracking_probe --regimes uncond --steps 16 --full-steps 0,2,4,8 \\
        --t 0,0.25,0.5,0.75,1 --images 2000 --seed 100 --out runs/fmnist/tracking_probe
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from shortcut_core import load_migm, load_shortcut
from training.fmnist.ablation import second_block_start, write_rows
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import fd_and_blocks, reference_stats
from training.fmnist.sweep import DEFAULT_MIGM, DEFAULT_SHORTCUT, REGIMES, fd_text, regime_classes, to_uint8

FILLERS = ("shortcut", "cache")


@torch.inference_mode()
def blended_run(migm, shortcut, classes, *, steps: int, full_steps: list[int], t: float, seed: int,
                filler: str = "shortcut", blend_steps: set[int] | None = None):
    """(images, error, copy): one batch sampled from the blend on skipped steps; ``error`` and
    ``copy`` sum, over skipped steps, the blend's and copy-previous's squared error to the true
    feature at the still-masked positions (their ratio is the error training validation reports).
    ``blend_steps``: blend only on these skipped steps and use the filler unblended on the others
    (which stretch of a run needs the accuracy); None: every skipped step."""
    if filler not in FILLERS:
        raise ValueError(f"unknown filler {filler!r}; choose from {', '.join(FILLERS)}")
    generator = torch.Generator(device=migm.device).manual_seed(seed)
    state = migm.start(classes, steps=steps, generator=generator)
    full = set(full_steps)
    image = slice(0, migm.config.num_image_tokens)  # the class token's slot after them is never sampled
    chain = previous_truth = None
    error = copy = torch.zeros((), device=migm.device)  # summed on the device: one host sync per run
    for step in range(steps):
        truth = migm.base_features(state)
        if step in full:
            feats = chain = truth
        else:
            if filler == "shortcut":
                chain = migm.shortcut_features(shortcut, chain, state)
            weight = t if blend_steps is None or step in blend_steps else 1.0
            feats = truth + weight * (chain - truth)
            masked = (state.tokens == migm.config.mask_id).repeat(truth.shape[0] // state.batch, 1)
            rows = truth[:, image][masked]
            error = error + (feats[:, image][masked] - rows).float().pow(2).sum()
            copy = copy + (previous_truth[:, image][masked] - rows).float().pow(2).sum()
        previous_truth = truth
        migm.advance(state, feats, step, generator)
    return migm.decode(state), float(error), float(copy)


def probe(migm, shortcut, regime: str, *, steps: int, full_steps: list[int], t: float, filler: str, images: int,
          batch: int, seed: int, classifier, ref, blend_steps: set[int] | None = None) -> dict:
    """FD-FMNIST (all images, two seed blocks) and the per-step error ratio of one blend."""
    half = second_block_start(images, batch)
    out, error, copy = [], 0.0, 0.0
    for chunk in range(-(-images // batch)):
        imgs, e, c = blended_run(migm, shortcut, regime_classes(regime, batch), steps=steps, full_steps=full_steps,
                                 t=t, seed=seed + chunk, filler=filler, blend_steps=blend_steps)
        out.append(to_uint8(imgs))
        error, copy = error + e, copy + c
    fd, blocks = fd_and_blocks(np.concatenate(out)[:images], half, classifier, ref)
    return {"regime": regime, "steps": steps, "full_steps": full_steps, "filler": filler, "t": t,
            "blend_steps": None if blend_steps is None else sorted(blend_steps), "fd": fd, "blocks": blocks,
            "error_ratio": error / copy if copy else None}


def markdown(rows: list[dict], args) -> str:
    lines = [f"Tracking probe: {args.images} images per row, seeds {args.seed}.. (chunks of {args.batch}); full steps "
             f"{args.full_steps} of N={args.steps}; on skipped steps the sampler uses truth + t * (filler - truth). "
             f"Error ratio: the blend's MSE to the true feature at the still-masked positions over copy-previous's "
             f"(one step), averaged over skipped steps. FD-FMNIST to the data (seed blocks).", "",
             "| regime | filler | t | blended on | error ratio | FD (blocks) |", "|---|---|---|---|---|---|"]
    for r in rows:
        where = "every skipped step" if r["blend_steps"] is None else "steps " + ",".join(map(str, r["blend_steps"]))
        lines.append(f"| {r['regime']} | {r['filler']} | {r['t']:g} | {where} | {r['error_ratio']:.3f} | "
                     f"{fd_text(r)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.tracking_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--migm", default=str(DEFAULT_MIGM))
    p.add_argument("--shortcut", default=str(DEFAULT_SHORTCUT))
    p.add_argument("--regimes", default="uncond", help="comma list of: " + ", ".join(REGIMES))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--full-steps", default="0,2,4,8", help="comma list of full-step indices (step 0 first)")
    p.add_argument("--t", default="0,0.25,0.5,0.75,1", help="comma list of blend weights for the shortcut")
    p.add_argument("--cache-t", default="0.5,1", help="comma list of blend weights for the feature cache ('' for none)")
    p.add_argument("--blend-steps", default="", help="comma list of skipped steps the blend applies to; the "
                                                      "others use the filler unblended (default: every skipped step)")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=100, help="first chunk's seed (the sweep uses 0..)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/fmnist/tracking_probe"), help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    full_steps = [int(v) for v in args.full_steps.split(",")]
    if full_steps[0] != 0 or sorted(set(full_steps)) != full_steps or full_steps[-1] >= args.steps:
        p.error(f"--full-steps must start at 0 and increase below --steps {args.steps}, got {args.full_steps}")
    blend_steps = {int(v) for v in args.blend_steps.split(",") if v.strip()} or None
    if blend_steps and blend_steps & set(full_steps):
        p.error(f"--blend-steps {args.blend_steps} names full steps ({sorted(blend_steps & set(full_steps))}); "
                f"the blend applies to skipped steps only")
    settings = [("shortcut", float(v)) for v in args.t.split(",") if v.strip()]
    settings += [("cache", float(v)) for v in args.cache_t.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    shortcut = load_shortcut(args.shortcut, migm)
    classifier = load_classifier()
    ref = reference_stats(classifier)
    rows = []
    for regime in args.regimes.split(","):
        for filler, t in settings:
            rows.append(probe(migm, shortcut, regime.strip(), steps=args.steps, full_steps=full_steps, t=t,
                              filler=filler, images=args.images, batch=args.batch, seed=args.seed,
                              classifier=classifier, ref=ref, blend_steps=blend_steps))
            r = rows[-1]
            print(f"{r['regime']} {filler} t={t:g}: error ratio {r['error_ratio']:.3f}, FD {r['fd']:.2f} "
                  f"(blocks {r['blocks'][0]:.1f} / {r['blocks'][1]:.1f})", flush=True)
    write_rows(args.out, rows, markdown(rows, args))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
