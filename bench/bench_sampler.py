"""Plain vs shortcut sampling on the MaskGIT-512 architecture (random weights), side by side.

    python bench/bench_sampler.py            # 32x32 tokens (512 px), N=32, B=12 and 9
    python bench/bench_sampler.py --grid 16  # 16x16 tokens: a quick run
    python bench/bench_sampler.py --grid 16 --variants computed,eager,compiled

Variants: ``eager`` (the default sampler: step 0 from memory once a class has been seen),
``computed`` (step 0 computed in every run in one batched pass, as the reference does),
``compiled`` (``compile_sampling``: torch.compile on the base forward and the shortcut,
step 0 from memory). Every variant's timed runs follow an untimed warm-up run of the same
class (which also pays any compile).

``--alternate`` times the variants in one process instead, switching between them run by
run on the same weights (``--repeats`` rounds at each B, medians): on a machine whose speed
drifts by several percent between processes, this is the fair ratio. It measures time only.

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
    from shortcut_core.compiled import compile_sampling

    torch.set_num_threads(args["threads"])
    dtype = getattr(torch, args["dtype"])
    migm, shortcut = build(args["grid"], args["device"], dtype)
    steps, b, variant = args["steps"], args["full_steps"], args["variant"]
    kwargs = dict(steps=steps, cfg=2.8, r_temp=7.0, sm_temp=1.0, decode=False)
    use_shortcut = shortcut if b < steps else None
    classes = list(range(args["batch"]))
    if variant == "computed":
        migm.base_features = migm.batched_features
    if variant == "compiled":
        compile_sampling(migm, shortcut)
    # warm-up: a whole run, so every step shape is compiled and step 0 of these classes is known
    generate(migm, classes, full_steps=b, shortcut=use_shortcut, seed=99, **kwargs)
    reset_peak_memory(args["device"])
    timer = StepTimer(args["device"])
    seconds = []
    for rep in range(args["repeats"]):
        timer.start()
        res = generate(migm, classes, full_steps=b, shortcut=use_shortcut, seed=rep, callback=timer, **kwargs)
        seconds.append(res.stats.seconds)
    queue.put({
        "B": b, "variant": variant, "seconds": statistics.median(seconds), "batch": args["batch"],
        "base_passes": res.stats.base_passes, "memo_passes": res.stats.memo_passes,
        "plain_base_passes": res.stats.plain_base_passes,
        "full_step_s": timer.median(True),
        "shortcut_step_s": timer.median(False),
        "peak_mib": peak_memory_mib(args["device"]),
    })


def alternate(args) -> list[dict]:
    """Every variant at every B, run after run in one process; medians of ``args.repeats`` rounds."""
    import torch

    from shortcut_core import generate
    from shortcut_core.compiled import compile_sampling, uncompile_sampling

    torch.set_num_threads(args.threads)
    variants = args.variant_list
    migm, shortcut = build(args.grid, args.device, getattr(torch, args.dtype))
    if "compiled" in variants:  # compiled once; its wrappers are swapped in and out below
        compile_sampling(migm, shortcut)
        compiled = migm.model.__dict__["features"], shortcut.__dict__["forward"]
        uncompile_sampling(migm, shortcut)

    def use(variant: str) -> None:
        uncompile_sampling(migm, shortcut)
        if variant == "compiled":
            migm.model.features, shortcut.forward = compiled
        migm.__dict__.pop("base_features", None)
        if variant == "computed":
            migm.base_features = migm.batched_features

    budgets = [int(x) for x in args.full_steps.split(",")]
    kwargs = dict(steps=args.steps, cfg=2.8, r_temp=7.0, sm_temp=1.0, decode=False, classes=list(range(args.batch)))
    for variant in variants:  # warm-up: compiles every shape, remembers step 0 of these classes
        use(variant)
        for b in budgets:
            generate(migm, full_steps=b, shortcut=shortcut, seed=99, **kwargs)
    times = {(v, b): [] for v in variants for b in budgets}
    for rep in range(args.repeats):
        for b in budgets:
            for variant in variants:
                use(variant)
                res = generate(migm, full_steps=b, shortcut=shortcut, seed=rep, **kwargs)
                times[variant, b].append(res.stats.seconds)
                print(f"  round {rep + 1}: {variant} B={b}: {res.stats.seconds:.2f} s ({res.stats.report()})", flush=True)
    results = [{"variant": v, "B": b, "seconds": statistics.median(t), "all_seconds": t, "batch": args.batch}
               for (v, b), t in times.items()]
    print(f"\nIn one process, variants alternating run by run, {args.repeats} rounds, medians; {args.grid}x{args.grid} "
          f"tokens, N={args.steps}, guidance 2.8, batch {args.batch}, {args.device} {args.dtype}, {args.threads} threads")
    print(f"{'variant':<10}{'setting':<15}{'s/image':>9}{f'vs {variants[0]}':>14}  seconds of each round")
    for b in budgets:
        first = statistics.median(times[variants[0], b])
        for r in (r for r in results if r["B"] == b):
            r["vs_first"] = first / r["seconds"]
            print(f"{r['variant']:<10}{f'shortcut B={b}':<15}{r['seconds'] / args.batch:>9.3f}{r['vs_first']:>13.2f}x  "
                  + " ".join(f"{t:.2f}" for t in r["all_seconds"]))
    return results


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
    p.add_argument("--variants", default="eager", help="comma list of computed, eager, compiled (see above)")
    p.add_argument("--alternate", action="store_true", help="time the variants in one process, run by run (above)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    variants = args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - {"computed", "eager", "compiled"}:
        p.error(f"--variants takes a comma list of computed, eager, compiled; got {args.variants!r}")
    if args.alternate:
        results = alternate(args)
        if args.json:
            write_json(args.json, args, results)
        return 0
    ctx = mp.get_context("spawn")
    results = []
    for b in [args.steps] + [int(x) for x in args.full_steps.split(",")]:
        for variant in variants:  # interleaved, so a drifting machine hits every variant alike
            q = ctx.Queue()
            proc = ctx.Process(target=run_setting, args=({**vars(args), "full_steps": b, "variant": variant,
                                                          "json": None}, q))
            proc.start()
            results.append(q.get())
            proc.join()
            print(f"  measured {variant} B={b}: {results[-1]['seconds']:.2f} s", flush=True)

    n = args.steps
    plain = {r["variant"]: r for r in results if r["B"] == n}
    first = {r["B"]: r for r in results if r["variant"] == variants[0]}
    print(f"\nMaskGIT-512 architecture, random weights, {args.grid}x{args.grid} tokens, N={n}, guidance 2.8, "
          f"batch {args.batch}, {args.device} {args.dtype}, {args.threads} threads")
    header = (f"{'variant':<10}{'setting':<14}{'s/image':>9}{'speed-up':>10}{f'vs {variants[0]}':>13}"
              f"{'base passes':>13}{'c':>8}{'ideal':>8}{'of ideal':>10}{'N/B':>7}{'of N/B':>8}{'peak MiB':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        b = r["B"]
        r["vs_first"] = first[b]["seconds"] / r["seconds"]
        passes = f"{r['base_passes']}" + (f"+{r['memo_passes']}m" if r["memo_passes"] else "")
        head = (f"{r['variant']:<10}{'plain' if b == n else f'shortcut B={b}':<14}{r['seconds'] / r['batch']:>9.3f}"
                f"{plain[r['variant']]['seconds'] / r['seconds']:>9.2f}x{r['vs_first']:>12.2f}x{passes:>13}")
        if b == n:
            print(f"{head}{'':>8}{'':>8}{'':>10}{'':>7}{'':>8}{r['peak_mib']:>10.0f}")
            continue
        speedup_figures(r, plain[r["variant"]], n)
        print(f"{head}{r['c']:>8.3f}{r['ideal']:>7.2f}x{r['of_ideal']:>10.2f}{n / b:>6.2f}x{r['of_limit']:>8.2f}"
              f"{r['peak_mib']:>10.0f}")
    print("base passes: forward passes run, +Nm: full steps served from memory (step 0); speed-up: over plain of "
          f"the same variant; vs {variants[0]}: the same setting's time in the first variant / this one's")
    if args.json:
        write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
