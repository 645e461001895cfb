"""Experiment: decide full steps during sampling from a cheap signal, with the budget B as a cap.

Rule (by default decided for the whole batch, which shares one base pass): step 0 is full. At every
later step the shortcut predicts the next feature anyway (it is cheap); the relative size of
the change it predicts, mean over the batch of ||pred - prev|| / ||prev|| per position, is
added to a drift account since the last full step. When the account reaches ``tau`` and
full steps are left, the step runs the base model instead (the prediction is dropped) and
the account starts again. ``tau`` is set per regime from one chunk of seeds the evaluation
never uses (100 images): about the smallest value whose uncapped rule spends at most B full
steps, so the rule places about B full steps without being cut off by the cap.

``--per-image`` decides for each image on its own: every image keeps its own account and cap,
and a step runs the base model on the sub-batch of the images whose account is full, so each
image spends its base passes where its own prediction drifts. ``tau`` is then tuned so that
the uncapped rule spends at most B full steps per image on average; the rule is compared with
the paper's and the shortcut file's placement. On the shipped pair it was no better than the
file's placements (``docs/results/fmnist_adaptive_per_image.md``).

It is compared with the paper's even placement at the same N and B, on the same seeds, by
FD-FMNIST (the sweep's metric), all images and two seed blocks. An experiment, not a sampler
option: ``--write-placements`` stores the placement the batch rule chose in a shortcut file,
where ``placement="calibrated"`` finds it.

    python -m training.fmnist.adaptive --steps 16 --budget 4 --images 1000 --out runs/fmnist/adaptive.json
    python -m training.fmnist.adaptive --per-image --regimes uncond --steps 16 --budget 4 --images 5000 \
        --out runs/fmnist/per_image_uncond_16_4.json
    python -m training.fmnist.adaptive --rows runs/fmnist/per_image_*.json --markdown TABLE.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from shortcut_core import load_migm, load_shortcut
from shortcut_core.placement import sampled_with
from training.calibrate import stored_placements, write_into
from training.fmnist.ablation import quick_fd, sample_chunks, second_block_start
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import fd_and_blocks, reference_stats
from training.fmnist.sweep import (DEFAULT_MIGM, DEFAULT_SHORTCUT, REGIMES, block_noise, regime_classes, to_uint8,
                                   verdict)

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


def row_change(pred: torch.Tensor, feats: torch.Tensor, images: int) -> torch.Tensor:
    """(images,) relative feature change the shortcut predicts for each image, mean over its
    positions and, when guided, over its two base rows."""
    change = (pred - feats).norm(dim=-1) / feats.norm(dim=-1).clamp(min=1e-6)  # (rows, T)
    return change.view(-1, images, change.shape[-1]).mean(dim=(0, 2))


@torch.inference_mode()
def per_image_run(migm, shortcut, classes, *, steps: int, budget: int | None, tau: float, seed: int):
    """The rule decided for each image on its own: (images, each image's full-step indices).

    Every image keeps its own drift account and cap; a step runs the base model only on the
    rows of the images whose account is full (a sub-batch, so the base cost is what those images
    spend), and the others take the shortcut's prediction. MaskGIT family only: it slices the
    state's tokens and classes for the sub-batch."""
    generator = torch.Generator(device=migm.device).manual_seed(seed)
    state = migm.start(classes, steps=steps, generator=generator)
    images = state.batch
    feats = migm.base_features(state)
    migm.advance(state, feats, 0, generator)
    account = torch.zeros(images, device=migm.device)
    spent = torch.ones(images, dtype=torch.long, device=migm.device)
    full = [[0] for _ in range(images)]
    for step in range(1, steps):
        pred = migm.shortcut_features(shortcut, feats, state)
        account += row_change(pred, feats, images)
        due = account >= tau
        if budget is not None:
            due &= spent < budget
        picked = due.nonzero()[:, 0]
        if len(picked):
            sub = replace(state, tokens=state.tokens[picked], classes=state.classes[picked])
            base = migm.batched_features(sub)
            rows = picked.repeat(feats.shape[0] // images) + torch.arange(
                feats.shape[0] // images, device=picked.device).repeat_interleave(len(picked)) * images
            pred[rows] = base
            account[picked] = 0.0
            spent[picked] += 1
            for i in picked.tolist():
                full[i].append(step)
        feats = pred
        migm.advance(state, feats, step, generator)
    return migm.decode(state), full


def tune_tau(migm, shortcut, regime: str, steps: int, budget: int, batch: int = 100,
             per_image: bool = False) -> tuple[float, list]:
    """About the smallest tau whose uncapped rule spends at most ``budget`` full steps (per image
    on average, for ``per_image``), by bisection in log tau (the count falls as tau grows)."""
    classes = regime_classes(regime, batch)
    run = per_image_run if per_image else adaptive_run

    def full_at(tau: float) -> list:
        return run(migm, shortcut, classes, steps=steps, budget=None, tau=tau, seed=TUNING_SEED)[1]

    def spent(full: list) -> float:
        return float(np.mean([len(f) for f in full])) if per_image else len(full)

    lo, hi = np.log(0.01), np.log(50.0)
    at_hi = full_at(float(np.exp(hi)))
    if spent(at_hi) > budget:
        raise ValueError(f"no tau up to 50 keeps the rule within {budget} full steps")
    for _ in range(12):
        mid = (lo + hi) / 2
        at_mid = full_at(float(np.exp(mid)))
        if spent(at_mid) > budget:
            lo = mid
        else:
            hi, at_hi = mid, at_mid
    return float(np.exp(hi)), at_hi


def evaluate(migm, shortcut, regime: str, steps: int, budget: int, images: int, batch: int, classifier, ref,
             plain: bool = False, per_image: bool = False, seed: int = 0) -> dict:
    """The rule vs the paper's placement (and, per image, the file's) on the same seeds (chunk k
    has seed ``seed`` + k, as the sweep's)."""
    tau, tuning_full = tune_tau(migm, shortcut, regime, steps, budget, per_image=per_image)
    half = second_block_start(images, batch)
    chunks = -(-images // batch)
    out, placements, seconds = [], [], 0.0
    for chunk in range(chunks):
        started = time.perf_counter()
        imgs, full = (per_image_run if per_image else adaptive_run)(
            migm, shortcut, regime_classes(regime, batch), steps=steps, budget=budget, tau=tau, seed=seed + chunk)
        seconds += time.perf_counter() - started
        out.append(to_uint8(imgs))
        if per_image:
            placements.extend(full)
        else:
            placements.append(full)
    fd_rule, blocks_rule = fd_and_blocks(np.concatenate(out)[:images], half, classifier, ref)
    paper = sample_chunks(migm, shortcut, regime, steps, budget, images, batch, placement="paper", seed=seed)[0]
    fd_paper, blocks_paper = fd_and_blocks(paper, half, classifier, ref)
    row = {"regime": regime, "steps": steps, "budget": budget, "images": images, "seed": seed, "tau": tau,
           "rule": "per image" if per_image else "batch", "fd_adaptive": fd_rule, "fd_adaptive_blocks": blocks_rule,
           "fd_paper": fd_paper, "fd_paper_blocks": blocks_paper}
    if per_image:  # a placement per image is not a placement to store: keep the spend and the commonest ones
        counts = [len(f) for f in placements[:images]]
        row.update(tuning_mean_full=float(np.mean([len(f) for f in tuning_full])), mean_full=float(np.mean(counts)),
                   full_histogram={str(k): v for k, v in sorted(Counter(counts).items())},
                   common_placements=[[list(p), n] for p, n in Counter(map(tuple, placements)).most_common(5)],
                   ms_per_image_with_decode=seconds / (chunks * batch) * 1e3)
        filed = sample_chunks(migm, shortcut, regime, steps, budget, images, batch, placement="auto", seed=seed)[0]
        row["fd_file"], row["fd_file_blocks"] = fd_and_blocks(filed, half, classifier, ref)
    else:
        row.update(tuning_placement=tuning_full, placements=placements)
    if plain:
        row["fd_plain"] = quick_fd(migm, None, regime, steps, None, images, batch, classifier, ref, seed=seed)[0]
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
    p.add_argument("--per-image", action="store_true",
                   help="decide for each image on its own (base passes on sub-batches; B caps each image and tau is "
                        "tuned on the mean spend); compared with the paper's and the file's placements, not storable")
    p.add_argument("--seed", type=int, default=0, help="first chunk's seed (the sweep uses 0..)")
    p.add_argument("--out", type=Path, default=Path("runs/fmnist/adaptive.json"))
    p.add_argument("--rows", nargs="+", help="JSON file(s) previous runs wrote with --out: use their rows instead of "
                                             "sampling (to store a placement, or to tabulate them with --markdown)")
    p.add_argument("--markdown", type=Path, help="also write the rows as a table (rule, paper's and, per image, the "
                                                 "file's placement; block noise and verdicts as the sweep's)")
    p.add_argument("--write-placements", help="store the placement the rule chose most often for (--steps, "
                                              "--budget) as the calibrated placement of this shortcut file (created "
                                              "from --shortcut; a table another method wrote is replaced)")
    p.add_argument("--for-regime", choices=REGIMES,
                   help="with --write-placements: store it for this regime only (its rows' votes), where it overrides "
                        "the placement both regimes share (default: shared, from every regime's votes)")
    args = p.parse_args(argv)
    if not 1 <= args.budget < args.steps:
        p.error(f"--budget must be between 1 and --steps - 1, got {args.budget}")
    if args.per_image and args.write_placements:
        p.error("--per-image places full steps differently in every image: there is no one placement to store")
    if args.rows and not (args.write_placements or args.markdown):
        p.error("--rows reads saved rows instead of sampling: give --write-placements or --markdown to use them")
    if args.for_regime and not args.write_placements:
        p.error("--for-regime says where --write-placements stores the placement; give --write-placements too")
    if args.for_regime and not args.rows and args.for_regime not in args.regimes.split(","):
        p.error(f"--for-regime {args.for_regime} chooses from that regime's runs; add it to --regimes")
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    made_at = sampled_with(migm.sampling_defaults)  # the rule samples at the file's settings
    if args.rows:  # saved evaluations: tabulate them, or store a placement, without sampling again
        rows = [r for path in args.rows for r in json.loads(Path(path).read_text())]
        if args.markdown:
            write_markdown(args.markdown, rows, args.shortcut)
        if args.write_placements:
            rows = [r for r in rows if (r["steps"], r["budget"]) == (args.steps, args.budget)]
            if not [r for r in rows if args.for_regime in (None, r["regime"])]:
                p.error(f"--rows {' '.join(args.rows)} hold no rows for --steps {args.steps} --budget {args.budget}"
                        + (f" in the {args.for_regime} regime" if args.for_regime else ""))
            if any(r.get("rule") == "per image" for r in rows):
                p.error("those rows come from --per-image runs, which place full steps differently in every image: "
                        "there is no one placement to store")
            write_placements(args, rows, made_at, argv)
        return rows
    shortcut = load_shortcut(args.shortcut, migm)
    classifier = load_classifier()
    ref = reference_stats(classifier)
    rows = []
    for regime in args.regimes.split(","):
        row = evaluate(migm, shortcut, regime.strip(), args.steps, args.budget, args.images, args.batch, classifier,
                       ref, plain=args.plain, per_image=args.per_image, seed=args.seed)
        rows.append(row)
        blocks = (lambda key: f" (blocks {row[key][0]:.1f} / {row[key][1]:.1f})")  # noqa: E731
        chosen = (f"mean full steps {row['mean_full']:.2f}, commonest {row['common_placements'][:3]}" if args.per_image
                  else f"placements {sorted(set(map(tuple, row['placements'])))}")
        print(f"{regime}: N={args.steps} B<={args.budget}: adaptive ({row['rule']}) FD {row['fd_adaptive']:.1f}"
              f"{blocks('fd_adaptive_blocks')} (tau {row['tau']:.3g}, {chosen}),"
              f" paper FD {row['fd_paper']:.1f}{blocks('fd_paper_blocks')}"
              + (f", file's FD {row['fd_file']:.1f}{blocks('fd_file_blocks')}" if args.per_image else "")
              + (f", plain N={args.steps} FD {row['fd_plain']:.1f}" if args.plain else ""), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        write_markdown(args.markdown, rows, args.shortcut)
    if args.write_placements:
        write_placements(args, rows, made_at, argv)
    return rows


def write_markdown(path: Path, rows: list[dict], shortcut: str) -> None:
    """The rule against the paper's placement (and, per image, the file's) as the sweep judges a
    pair: better or worse only beyond the larger gap between either row's two seed blocks."""
    def cell(fd, blocks):
        return f"{fd:.1f} ({blocks[0]:.1f} / {blocks[1]:.1f})"

    def against(fd_key: str) -> str:
        pair = {"fd_shortcut": r["fd_adaptive"], "fd_plain": r[fd_key],
                "noise": block_noise({"fd_blocks": r["fd_adaptive_blocks"]}, {"fd_blocks": r[fd_key + "_blocks"]})}
        return f"{pair['noise']:.1f}: {verdict(pair)}"

    per_image = any("fd_file" in r for r in rows)
    lines = [f"Adaptive rule ({'decided per image' if per_image else 'decided per batch'}) against fixed placements; "
             f"FD-FMNIST, seed blocks in brackets; shortcut `{shortcut}`.", "",
             "| regime | N/B | images, seeds | tau | mean full steps | rule | paper's | noise: rule vs paper |"
             + (" file's | noise: rule vs file's |" if per_image else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if per_image else "")]
    for r in sorted(rows, key=lambda r: (r["regime"], r["steps"], r["budget"])):
        spent = r["mean_full"] if "mean_full" in r else float(np.mean([len(p) for p in r["placements"]]))
        lines.append(f"| {r['regime']} | {r['steps']}/{r['budget']} | {r['images']}, {r.get('seed', 0)}.. | "
                     f"{r['tau']:.3g} | {spent:.2f} | {cell(r['fd_adaptive'], r['fd_adaptive_blocks'])} | "
                     f"{cell(r['fd_paper'], r['fd_paper_blocks'])} | {against('fd_paper')} |"
                     + (f" {cell(r['fd_file'], r['fd_file_blocks'])} | {against('fd_file')} |"
                        if "fd_file" in r else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


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
    source, table, provenance = stored_placements(Path(args.shortcut), target, args.for_regime)
    same_method = provenance.get("method") == RULE  # a table another method wrote is replaced, not mixed in
    table = table if same_method else {}
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
