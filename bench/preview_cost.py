"""What the Shortcut Sampler's live previews cost: sampling with and without them, side by side.

    python bench/preview_cost.py                 # the embedded model, as the example workflow runs it
    python bench/preview_cost.py --batch 1 --repeats 15

Runs the sampler's own preview path (``nodes.previews.PreviewPacer`` deciding after every
step, ``migm.preview`` + ``preview_image`` making the picture ComfyUI sends, and the JPEG
encoding ComfyUI then does) for plain N and
the shortcut N/B, alternating runs with and without previews, and prints the median
seconds, the overhead and the number of previews per run; also what a preview after
every step would cost, for comparison. Target: overhead <= 10 % at the default budget.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageOps  # noqa: E402

from nodes.previews import PreviewPacer, preview_image  # noqa: E402
from shortcut_core import generate  # noqa: E402
from bench.step_timer import add_embedded_model_arguments, load_model_arguments, write_json  # noqa: E402


def jpeg(picture, side: int) -> bytes:
    """What ComfyUI's server does with a preview (server.send_image): fit, encode."""
    out = io.BytesIO()
    ImageOps.contain(picture, (side, side), Image.Resampling.BILINEAR).save(out, format="JPEG", quality=95)
    return out.getvalue()


def run(migm, shortcut, classes, steps, full, mode: str, side: int) -> tuple[float, int]:
    pacer = PreviewPacer()
    made = [0]

    def on_step(info):
        if mode == "paced" and pacer.due(info.step, info.steps):
            jpeg(pacer.timed(lambda: preview_image(migm.preview(info.state, info.feats), side)), side)
        elif mode == "every" and info.step + 1 < info.steps:
            jpeg(preview_image(migm.preview(info.state, info.feats), side), side)
            made[0] += 1

    t0 = time.perf_counter()
    generate(migm, classes, steps=steps, full_steps=full, shortcut=shortcut if full else None, seed=0,
             callback=on_step, decode=False)
    return time.perf_counter() - t0, pacer.count if mode == "paced" else made[0]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="bench/preview_cost.py", description=__doc__.split("\n\n")[0])
    add_embedded_model_arguments(p)
    p.add_argument("--batch", type=int, default=1, help="images per class (the example workflow: 1, all 10 classes)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--full-steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--preview-size", type=int, default=512, help="ComfyUI's --preview-size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    migm, shortcut = load_model_arguments(args)
    classes = [c for c in range(migm.config.num_classes) for _ in range(args.batch)]
    results = []
    for name, full in ((f"plain N={args.steps}", None), (f"shortcut N={args.steps} B={args.full_steps}", args.full_steps)):
        run(migm, shortcut, classes, args.steps, full, "none", args.preview_size)  # warm-up
        times = {"none": [], "paced": [], "every": []}
        counts = {"paced": 0, "every": 0}
        for _ in range(args.repeats):
            for mode in times:  # interleaved: a busy machine slows all three alike
                seconds, count = run(migm, shortcut, classes, args.steps, full, mode, args.preview_size)
                times[mode].append(seconds)
                counts[mode] = count if mode != "none" else 0
        base = statistics.median(times["none"])
        row = {"setting": name, "images": len(classes), "seconds_without": base,
               "seconds_paced": statistics.median(times["paced"]), "previews_paced": counts["paced"],
               "seconds_every_step": statistics.median(times["every"]), "previews_every_step": counts["every"]}
        row["overhead_paced"] = row["seconds_paced"] / base - 1
        row["overhead_every_step"] = row["seconds_every_step"] / base - 1
        results.append(row)
        print(f"{name}, {len(classes)} images: {base * 1e3:.1f} ms without previews; paced (default) "
              f"{row['seconds_paced'] * 1e3:.1f} ms, {row['previews_paced']} previews, overhead "
              f"{row['overhead_paced'] * 100:+.1f} %; after every step {row['seconds_every_step'] * 1e3:.1f} ms, "
              f"{row['previews_every_step']} previews, overhead {row['overhead_every_step'] * 100:+.1f} %", flush=True)
    if args.out:
        write_json(args.out, args, results)
    return results


if __name__ == "__main__":
    main()
