"""Main-job demo: the embedded Fashion-MNIST model, plain vs shortcut, side by side.

For both regimes (class-conditional: every class; unconditional: class 'none') it
generates the same seeds four ways: plain N steps, the shortcut with B of the N steps
full (where the shortcut file's calibration puts them, else spread evenly), the same full
steps with a feature cache instead of the shortcut (training-free: each skipped step reuses
the last full step's feature — the control that shows what the shortcut itself adds), and
plain B steps (the same number of base passes as the shortcut). It writes a labelled grid with
the timings to ``out/demo_grid.png`` and prints seconds, speed-ups, base passes and the
class consistency (shipped classifier). About a minute on 2 CPU cores.

    bash scripts/demo.sh            # setup + this script
    .venv/bin/python scripts/demo.py --steps 16 --full-steps 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from shortcut_core import FeatureCache, full_step_indices, generate, load_migm, load_shortcut  # noqa: E402
from shortcut_core.placement import COND, UNCOND, calibrated_indices  # noqa: E402
from shortcut_core.progress import ProgressBar  # noqa: E402
from training.fmnist.sweep import image_grid, to_uint8  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--migm", default=str(ROOT / "models/migm/fmnist_maskgit.safetensors"))
    p.add_argument("--shortcut", default=str(ROOT / "models/migm_shortcut/fmnist_shortcut.safetensors"))
    p.add_argument("--steps", type=int, default=16, help="sampling steps N")
    p.add_argument("--full-steps", type=int, default=4, help="base-model steps B of N for the shortcut run")
    p.add_argument("--per-class", type=int, default=20, help="class-conditional images per class and method "
                                                             "(unconditional: 10x as many)")
    p.add_argument("--show", type=int, default=6, help="images per row shown in the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy 2-core machine")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="base model and shortcut precision; bf16 is much faster on CPUs with bf16 matrix units "
                        "(Intel AMX), much slower on CPUs without them (the image decoder stays fp32)")
    p.add_argument("--out", default=str(ROOT / "out/demo_grid.png"))
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error(f"--steps must be at least 2, got {args.steps}")
    if not 1 <= args.full_steps < args.steps:
        p.error(f"--full-steps must be at least 1 and below --steps ({args.steps}), got {args.full_steps}")
    if args.per_class < 1 or not 1 <= args.show <= args.per_class:
        p.error("--per-class must be at least 1 and --show between 1 and --per-class")
    return args


def titled(grid: Image.Image, title: str) -> Image.Image:
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (max(grid.width, 6 * len(title) + 8), grid.height + 16), "white")
    canvas.paste(grid, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), title, fill="black", font=font)
    return canvas


def row_of(panels: list[Image.Image], gap: int = 16) -> Image.Image:
    canvas = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), max(p.height for p in panels)),
                       "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    return canvas


def column_of(panels: list[Image.Image], gap: int = 12) -> Image.Image:
    canvas = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels) + gap * (len(panels) - 1)),
                       "white")
    y = 0
    for panel in panels:
        canvas.paste(panel, (0, y))
        y += panel.height + gap
    return canvas


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm, dtype=args.dtype)
    shortcut = load_shortcut(args.shortcut, migm)
    names = migm.class_names or [str(c) for c in range(migm.config.num_classes)]
    n, b = args.steps, args.full_steps
    regimes = {"class-conditional": ([c for c in range(len(names)) for _ in range(args.per_class)], COND),
               "unconditional": (["none"] * (len(names) * args.per_class), UNCOND)}
    titles = {"plain": f"plain N={n}", "shortcut": f"shortcut N={n}, B={b}", "cache": f"cache N={n}, B={b} (no shortcut)",
              "plain_b": f"plain N={b} (same passes)"}
    generate(migm, list(range(len(names))), steps=2, seed=args.seed)  # warm-up: first-call overhead
    print(f"sampling settings: the model's own ({migm.sampling_defaults}); {migm.dtype}", flush=True)
    report, rows = {}, []
    for regime, (classes, code) in regimes.items():
        # the shortcut file's calibrated placement for (N, B) in this regime when it has one (the paper's otherwise)
        full = calibrated_indices(shortcut, n, b, code) or full_step_indices(n, b)
        runs = {"plain": dict(steps=n), "shortcut": dict(steps=n, full_steps=full, shortcut=shortcut),
                "cache": dict(steps=n, full_steps=full, shortcut=FeatureCache()), "plain_b": dict(steps=b)}
        results = {}
        for key, kw in runs.items():
            bar = ProgressBar(kw["steps"], desc=f"{regime}, {titles[key]}", unit="step")
            results[key] = generate(migm, classes, seed=args.seed, callback=lambda info: bar.update(1), **kw)
            bar.close()
            print(f"{regime:>17}, {titles[key]:<26} {results[key].stats.report()}", flush=True)
        panels = []
        for key, result in results.items():
            images = to_uint8(result.images).reshape(len(names), args.per_class, 28, 28)[:, : args.show]
            labels = list(names) if regime == "class-conditional" and key == "plain" else None
            grid = image_grid(images.reshape(-1, 28, 28), args.show, row_labels=labels)
            where = f" (full {','.join(map(str, result.stats.full_step_indices))})" if key == "shortcut" else ""
            panels.append(titled(grid, f"{titles[key]}{where}: {result.stats.seconds:.1f} s"))
        speedup = results["plain"].stats.seconds / results["shortcut"].stats.seconds
        cache_speedup = results["plain"].stats.seconds / results["cache"].stats.seconds
        rows.append(titled(row_of(panels), f"{regime} ({len(classes)} images per method, {args.show} per class "
                                           f"shown): shortcut {speedup:.1f}x faster than plain N={n}"))
        report[regime] = {k: {"seconds": r.stats.seconds, "base_passes": r.stats.base_passes,
                              "memo_passes": r.stats.memo_passes} for k, r in results.items()}
        report[regime]["speedup"] = speedup
        report[regime]["cache_speedup"] = cache_speedup
        plain, fast = results["plain"].stats, results["shortcut"].stats
        print(f"{regime}: shortcut {speedup:.2f}x faster than plain N={n} ({plain.seconds:.2f} s -> "
              f"{fast.seconds:.2f} s), full steps {plain.full_steps} -> {fast.full_steps} (base passes run "
              f"{plain.base_passes} -> {fast.base_passes}"
              + (", step 0 from memory in each)" if plain.memo_passes and fast.memo_passes else ")")
              + f"; the feature cache at the same full steps: {cache_speedup:.2f}x", flush=True)
        if regime == "class-conditional":
            consistency = class_consistency_or_none({k: r.images for k, r in results.items()}, classes)
            if consistency:
                report[regime]["consistency"] = consistency
                print("class consistency: " + ", ".join(f"{titles[k]} {v * 100:.1f} %" for k, v in consistency.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    column_of(rows).save(out)
    print(f"wrote {out}")
    return report


def class_consistency_or_none(images: dict, classes: list[int]) -> dict | None:
    try:
        from training.fmnist.classifier import DEFAULT_CLASSIFIER, load_classifier
        from training.fmnist.fd import class_consistency
    except ImportError as exc:
        print(f"class consistency skipped: {exc}")
        return None
    if not DEFAULT_CLASSIFIER.is_file():
        print(f"class consistency skipped: no classifier at {DEFAULT_CLASSIFIER}")
        return None
    classifier = load_classifier()
    return {k: class_consistency(to_uint8(v), np.asarray(classes), classifier) for k, v in images.items()}


if __name__ == "__main__":
    main()
