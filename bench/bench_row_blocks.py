"""A wide batch on a CPU: one base pass over every row against the sampler's row blocks, side by side.

    python bench/bench_row_blocks.py                     # the embedded model, batch 500 and 250
    python bench/bench_row_blocks.py --batches 500 --repeats 5 --json docs/results/bench_row_blocks.json

On a CPU, ``MaskGITMIGM`` runs a base pass in blocks of rows whose feed-forward activations
stay within ``CPU_BLOCK_BYTES`` (``shortcut_core/maskgit_family.py``). This script times the
same sampling calls with that on (``row blocks``) and off (``one pass``,
``migm.cpu_block_bytes = None``), alternating run by run in one process so a drifting machine
hits both alike, and checks that both sample the same tokens. Both regimes (class-conditional
with the model's guidance: 2 rows an image; unconditional: 1), plain N and shortcut N/B.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_timer import add_embedded_model_arguments, load_model_arguments, write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_embedded_model_arguments(p)
    p.add_argument("--batches", default="500,250", help="comma list of images per call")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--full-steps", type=int, default=4, help="B of the shortcut rows")
    p.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from shortcut_core import generate
    from shortcut_core.maskgit_family import CPU_BLOCK_BYTES, cpu_row_blocks

    migm, shortcut = load_model_arguments(args)
    variants = {"one pass": None, "row blocks": CPU_BLOCK_BYTES}  # migm.cpu_block_bytes of each
    if migm.family != "maskgit" or migm.device.type != "cpu":
        p.error("row blocks are a MaskGIT model's, on a CPU")
    settings = [(None, "plain"), (args.full_steps, f"shortcut {args.steps}/{args.full_steps}")]
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        for regime in ("cond", "uncond"):
            classes = [i % migm.config.num_classes for i in range(batch)] if regime == "cond" else ["none"] * batch
            rows = batch * (2 if regime == "cond" else 1)
            blocks = cpu_row_blocks(rows, migm.config, migm.device, migm.dtype, CPU_BLOCK_BYTES)
            for full, label in settings:
                call = dict(steps=args.steps, full_steps=full, shortcut=shortcut if full else None, decode=False)
                times, tokens = {v: [] for v in variants}, {}
                for rep in range(args.repeats + 1):  # round 0 warms up (step 0's memo, allocator)
                    for variant, budget in variants.items():
                        migm.cpu_block_bytes = budget
                        res = generate(migm, classes, seed=rep, **call)
                        if rep:
                            times[variant].append(res.stats.seconds_per_image * 1e3)
                        tokens.setdefault(rep, []).append(res.tokens)
                same = all(torch.equal(*pair) for pair in tokens.values())
                row = {"batch": batch, "regime": regime, "rows": rows, "blocks": blocks, "setting": label,
                       "same_tokens": same, **{f"{v} ms/image": statistics.median(t) for v, t in times.items()},
                       "rounds": times}
                row["speed-up"] = row["one pass ms/image"] / row["row blocks ms/image"]
                results.append(row)
                print(f"batch {batch:>4} {regime:<6} ({rows} rows, {blocks} blocks) {label:<14} one pass "
                      f"{row['one pass ms/image']:7.2f} ms/image, row blocks {row['row blocks ms/image']:7.2f} "
                      f"ms/image: {row['speed-up']:.2f}x, same tokens: {same}", flush=True)
    if args.json:
        write_json(args.json, args, results)
    return 0 if all(r["same_tokens"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
