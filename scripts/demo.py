"""Main-job demo: the embedded Fashion-MNIST model, plain vs shortcut, side by side.

Generates ``--per-class`` images for every class twice with the same seed (plain N steps,
then the shortcut with B of the N steps full), writes a labelled grid to
``out/demo_grid.png`` and prints the seconds, the speed-up, base passes and the class
consistency of both (shipped classifier). Runs in well under a minute on 2 CPU cores.

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

from shortcut_core import generate, load_migm, load_shortcut  # noqa: E402
from training.sweep import image_grid, to_uint8  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--migm", default=str(ROOT / "models/migm/fmnist_maskgit.safetensors"))
    p.add_argument("--shortcut", default=str(ROOT / "models/migm_shortcut/fmnist_shortcut.safetensors"))
    p.add_argument("--steps", type=int, default=16, help="sampling steps N")
    p.add_argument("--full-steps", type=int, default=4, help="base-model steps B of N for the shortcut run")
    p.add_argument("--per-class", type=int, default=20, help="images per class and method (timed together)")
    p.add_argument("--show", type=int, default=6, help="images per class shown in the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy 2-core machine")
    p.add_argument("--out", default=str(ROOT / "out/demo_grid.png"))
    return p.parse_args(argv)


def side_by_side(left: Image.Image, right: Image.Image, titles: tuple[str, str]) -> Image.Image:
    font = ImageFont.load_default()
    gap, top = 16, 18
    canvas = Image.new("RGB", (left.width + gap + right.width, top + max(left.height, right.height)), "white")
    canvas.paste(left, (0, top))
    canvas.paste(right, (left.width + gap, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((90, 3), titles[0], fill="black", font=font)
    draw.text((left.width + gap + 4, 3), titles[1], fill="black", font=font)
    return canvas


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    shortcut = load_shortcut(args.shortcut, migm)
    options = dict(migm.info.get("sampling_defaults", {}))
    names = migm.class_names or [str(c) for c in range(migm.config.num_classes)]
    classes = [c for c in range(len(names)) for _ in range(args.per_class)]
    generate(migm, list(range(len(names))), steps=2, seed=args.seed, **options)  # warm-up: first-call overhead
    plain = generate(migm, classes, steps=args.steps, seed=args.seed, **options)
    short = generate(migm, classes, steps=args.steps, full_steps=args.full_steps, shortcut=shortcut,
                     seed=args.seed, **options)

    grids = []
    for result, labels in ((plain, list(names)), (short, None)):  # class names once, on the left
        images = to_uint8(result.images).reshape(len(names), args.per_class, 28, 28)[:, : args.show]
        grids.append(image_grid(images.reshape(-1, 28, 28), args.show, row_labels=labels))
    canvas = side_by_side(grids[0], grids[1], (f"plain, N={args.steps}",
                                               f"shortcut, N={args.steps}, B={args.full_steps}"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)

    report = {"plain_seconds": plain.stats.seconds, "shortcut_seconds": short.stats.seconds,
              "speedup": plain.stats.seconds / short.stats.seconds,
              "plain_base_passes": plain.stats.base_passes, "shortcut_base_passes": short.stats.base_passes}
    print(f"{len(classes)} images per method ({args.per_class} per class), N={args.steps}, options {options}")
    print(f"plain:    {plain.stats.report()}")
    print(f"shortcut: {short.stats.report()}")
    print(f"measured speed-up {report['speedup']:.2f}x ({plain.stats.seconds:.2f} s -> {short.stats.seconds:.2f} s), "
          f"base passes {plain.stats.base_passes} -> {short.stats.base_passes}")
    try:
        from training.classifier import DEFAULT_CLASSIFIER, load_classifier
        from training.fd import class_consistency
    except ImportError as exc:
        print(f"class consistency skipped: {exc}")
    else:
        if DEFAULT_CLASSIFIER.is_file():
            classifier = load_classifier()
            for name, result in (("plain", plain), ("shortcut", short)):
                report[f"{name}_consistency"] = class_consistency(to_uint8(result.images), np.asarray(classes), classifier)
            print(f"class consistency: plain {report['plain_consistency'] * 100:.1f} %, "
                  f"shortcut {report['shortcut_consistency'] * 100:.1f} %")
        else:
            print(f"class consistency skipped: no classifier at {DEFAULT_CLASSIFIER}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
