"""Plain vs shortcut sampling on the MaskGIT-512 architecture (random weights), side by side.

    python bench/bench_sampler.py            # 32x32 tokens (512 px), N=32, B=12 and 9
    python bench/bench_sampler.py --grid 16  # 16x16 tokens: a quick run

Prints seconds per image, base forward passes, the measured cost ratio
c = shortcut step / full step (head, sampling and bookkeeping included), the ideal
speed-up N / (B + (N - B) c), the achieved fraction of it and of the N / B limit, and
peak memory. Each setting runs in its own process so its peak memory is its own;
every process builds the same seeded weights.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_timer import StepTimer, peak_memory_mib, reset_peak_memory, speedup_figures, write_json  # noqa: E402


def build(grid: int, device: str, dtype):
    import torch

    from shortcut_core import MASKGIT_PRESETS, SHORTCUT_PRESETS, MaskGIT, MaskGITMIGM

    torch.manual_seed(0)
    model = MaskGIT(replace(MASKGIT_PRESETS["maskgit-imagenet512"], grid=grid))
    migm = MaskGITMIGM(model, None, name=f"maskgit-random-grid{grid}").to(device=device, dtype=dtype)
    shortcut = migm.build_shortcut(SHORTCUT_PRESETS["maskgit-imagenet512"]).to(dtype=dtype).eval()
    return migm, shortcut


def run_setting(args: dict, queue) -> None:
    import torch

    from shortcut_core import generate

    torch.set_num_threads(args["threads"])
    dtype = getattr(torch, args["dtype"])
    migm, shortcut = build(args["grid"], args["device"], dtype)
    steps, b = args["steps"], args["full_steps"]
    kwargs = dict(steps=steps, cfg=2.8, r_temp=7.0, sm_temp=1.0, decode=False)
    use_shortcut = shortcut if b < steps else None
    classes = list(range(args["batch"]))
    generate(migm, classes, full_steps=1 if use_shortcut else None, shortcut=use_shortcut, seed=99,
             **{**kwargs, "steps": 2})  # warm-up
    reset_peak_memory(args["device"])
    timer = StepTimer(args["device"])
    seconds = []
    for rep in range(args["repeats"]):
        timer.start()
        res = generate(migm, classes, full_steps=b, shortcut=use_shortcut, seed=rep, callback=timer, **kwargs)
        seconds.append(res.stats.seconds)
    queue.put({
        "B": b, "seconds": statistics.median(seconds), "batch": args["batch"],
        "base_passes": res.stats.base_passes, "plain_base_passes": res.stats.plain_base_passes,
        "full_step_s": timer.median(True),
        "shortcut_step_s": timer.median(False),
        "peak_mib": peak_memory_mib(args["device"]),
    })


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=32, help="token grid side (32 = 512 px, 16 = quick run)")
    p.add_argument("--steps", type=int, default=32, help="total steps N (paper: 32)")
    p.add_argument("--full-steps", default="12,9", help="comma list of B values to compare against plain")
    p.add_argument("--batch", type=int, default=1, help="images per call (guidance doubles the rows)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    ctx = mp.get_context("spawn")
    results = []
    for b in [args.steps] + [int(x) for x in args.full_steps.split(",")]:
        q = ctx.Queue()
        proc = ctx.Process(target=run_setting, args=({**vars(args), "full_steps": b, "json": None}, q))
        proc.start()
        results.append(q.get())
        proc.join()
        print(f"  measured B={b}: {results[-1]['seconds']:.2f} s", flush=True)

    plain = results[0]
    n = args.steps
    print(f"\nMaskGIT-512 architecture, random weights, {args.grid}x{args.grid} tokens, N={n}, guidance 2.8, "
          f"batch {args.batch}, {args.device} {args.dtype}, {args.threads} threads")
    header = (f"{'setting':<14}{'s/image':>9}{'speed-up':>10}{'base passes':>13}{'c':>8}{'ideal':>8}"
              f"{'of ideal':>10}{'N/B':>7}{'of N/B':>8}{'peak MiB':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        b = r["B"]
        spi = r["seconds"] / r["batch"]
        speed = plain["seconds"] / r["seconds"]
        if b == n:
            print(f"{'plain':<14}{spi:>9.3f}{1.0:>10.2f}{r['base_passes']:>13}{'':>8}{'':>8}{'':>10}{'':>7}{'':>8}"
                  f"{r['peak_mib']:>10.0f}")
            continue
        speedup_figures(r, plain["seconds"], n)
        print(f"{f'shortcut B={b}':<14}{spi:>9.3f}{speed:>9.2f}x{r['base_passes']:>13}{r['c']:>8.3f}"
              f"{r['ideal']:>7.2f}x{r['of_ideal']:>10.2f}{n / b:>6.2f}x{r['of_limit']:>8.2f}{r['peak_mib']:>10.0f}")
    if args.json:
        write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
