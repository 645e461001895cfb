"""Plain sampling quality of the embedded model over its sampling settings (guidance, reveal temperature).

A model file's recommended settings decide what every caller samples with by default, so they
are chosen for the best plain sampling at the default N, never for how a shortcut compares:
this scans cfg x r_temp (x sm_temp, the token temperature) class-conditionally and r_temp
(x sm_temp) unconditionally (guidance does nothing there), at a few step counts, with
FD-FMNIST on two halves of the images so the noise is visible, and the class consistency.
Resumable: every finished row is appended to ``--out`` (JSON lines) and skipped on the next
run; the markdown table goes next to it.

    python -m training.fmnist.settings_scan --dtype bf16 --images 2000 --seed 500 \\
        --out docs/results/fmnist_settings_scan/scan.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from shortcut_core import load_migm
from training.fmnist.ablation import sample_chunks
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import (class_consistency, extract_features, feature_stats, frechet_distance_stats,
                                halves_fd, reference_stats)
from training.fmnist.sweep import DEFAULT_MIGM, regime_classes


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def grid(args) -> list[dict]:
    rows = [{"regime": "uncond", "cfg": None, "r_temp": r} for r in args.r_temps]
    rows += [{"regime": "cond", "cfg": c, "r_temp": r} for r in args.r_temps for c in args.cfgs]
    return [{**row, "sm_temp": t, "steps": n} for row in rows for t in args.sm_temps for n in args.steps]


def sm_temp_of(row: dict) -> float:
    return row.get("sm_temp", 1.0)  # rows written before the scan had the option sampled at 1


def row_key(row: dict) -> str:
    # sm_temp 1 keeps the key rows had before the option existed, so they are not measured again
    sm = "" if sm_temp_of(row) == 1.0 else f"|sm_temp={sm_temp_of(row)}"
    return f"{row['regime']}|cfg={row['cfg']}|r_temp={row['r_temp']}{sm}|N={row['steps']}"


def measure(migm, row: dict, args, classifier, ref) -> dict:
    options = {"r_temp": row["r_temp"], "sm_temp": row["sm_temp"]} | ({} if row["cfg"] is None else {"cfg": row["cfg"]})
    images, seconds = sample_chunks(migm, None, row["regime"], row["steps"], None, args.images, args.batch,
                                    seed=args.seed, **options)
    half = len(images) // 2 // args.batch * args.batch or len(images) // 2  # whole chunks: balanced classes
    feats = extract_features(images, classifier)  # once; the halves are slices of it
    consistency = None
    if row["regime"] == "cond":
        labels = np.concatenate([regime_classes("cond", args.batch)] * -(-args.images // args.batch))
        consistency = class_consistency(images, labels[:len(images)], classifier)
    return {**row, "key": row_key(row), "images": len(images), "seed": args.seed, "batch": args.batch,
            "fd": frechet_distance_stats(feature_stats(feats), ref), "fd_halves": halves_fd(feats, half, ref), "class_consistency": consistency,
            "ms_per_image": seconds / len(images) * 1e3, "dtype": args.dtype}


def markdown(rows: list[dict], current: dict) -> str:
    """One table per regime and block of seeds (rows of different seeds or counts are not comparable)."""
    out = [f"Recommended in the file now: {json.dumps(current, sort_keys=True)}.", ""]
    blocks = sorted({(r["images"], r["seed"], r["batch"], r["dtype"]) for r in rows})
    for images, seed, batch, dtype in blocks:
        for regime in ("uncond", "cond"):
            mine = [r for r in rows if r["regime"] == regime and (r["images"], r["seed"], r["batch"], r["dtype"]) == (images, seed, batch, dtype)]
            if not mine:
                continue
            steps = sorted({r["steps"] for r in mine})
            extra = " / class consistency" if regime == "cond" else ""
            out += [f"### {regime}: {images} images, seeds {seed}-{seed + -(-images // batch) - 1} (chunks of {batch}), {dtype}",
                    "", "| cfg | r_temp | sm_temp | " + " | ".join(f"FD N={n} (halves){extra}" for n in steps) + " |",
                    "|---|---|---|" + "---|" * len(steps)]
            settings = {(r["cfg"], r["r_temp"], sm_temp_of(r)) for r in mine}
            for cfg, r_temp, sm_temp in sorted(settings, key=lambda t: (t[2], t[1], t[0] or 0)):
                cells = []
                for n in steps:
                    hit = [r for r in mine if (r["cfg"], r["r_temp"], sm_temp_of(r), r["steps"]) == (cfg, r_temp, sm_temp, n)]
                    r = hit[-1] if hit else None
                    cells.append("" if r is None else
                                 f"{r['fd']:.1f} ({r['fd_halves'][0]:.1f} / {r['fd_halves'][1]:.1f})"
                                 + (f" / {r['class_consistency'] * 100:.1f} %" if r["class_consistency"] is not None else ""))
                out.append(f"| {'-' if cfg is None else cfg} | {r_temp} | {sm_temp} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.settings_scan", description=__doc__.split("\n\n")[0])
    p.add_argument("--migm", default=str(DEFAULT_MIGM))
    p.add_argument("--cfgs", type=floats, default=floats("0,0.5,1,1.5,2,3"), help="class-conditional guidance scales")
    p.add_argument("--r-temps", type=floats, default=floats("3,4.5,6"), help="reveal (choice) temperatures")
    p.add_argument("--sm-temps", type=floats, default=[1.0],
                   help="token temperatures; they multiply the logits (the reference's convention: < 1 flattens)")
    p.add_argument("--steps", type=lambda t: [int(v) for v in t.split(",")], default=[4, 16], help="step counts N")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=500, help="chunk k uses seed + k (keep it off the sweep's seeds)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/fmnist/settings_scan/scan.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    done = {(r["key"], r["images"], r["seed"], r["batch"], r["dtype"]) for r in rows}
    migm = load_migm(args.migm, dtype=args.dtype)
    classifier = load_classifier()
    ref = reference_stats(classifier)
    for row in grid(args):
        if (row_key(row), args.images, args.seed, args.batch, args.dtype) in done:
            continue
        result = measure(migm, row, args, classifier, ref)
        print(json.dumps(result), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        rows.append(result)
    out.with_suffix(".md").write_text(markdown(rows, migm.sampling_defaults))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
