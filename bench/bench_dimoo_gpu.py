"""Lumina-DiMOO plain vs shortcut sampling at full size (random bf16 weights), side by side, on a GPU.

    python bench/bench_dimoo_gpu.py                      # 1024x1024 px, T=64, B = 64 (plain), 14, 11, 9
    python bench/bench_dimoo_gpu.py --size 512           # 32x32 tokens: a quicker run
    python bench/bench_dimoo_gpu.py --tiny --size 64 --allow-cpu   # wiring check on a CPU

Builds the published architecture (8.1 B base, 220 M shortcut, aMUSEd-style VQ) with
seeded random weights directly on the GPU, then samples one image per setting with
guidance 4.0 (cond and uncond as separate forwards). Paper reference, 1024^2, T=64:
plain about 23.1 s, B=11 about 4.7 s (4.9x). Prints seconds per image (sampling loop;
VQ decode apart), base forward passes, the measured cost ratio c = shortcut step / full
step (head, sampling and bookkeeping included), the ideal speed-up T / (B + (T - B) c),
and the peak GPU memory of each setting (on a CPU: the process's peak RSS).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shortcut_core.dimoo.config import LLADA_PRESETS, DiMOOShortcutConfig  # noqa: E402
from shortcut_core.dimoo.family import DiMOOMIGM  # noqa: E402
from shortcut_core.dimoo.fake import TINY_VQ  # noqa: E402
from shortcut_core.dimoo.llada import LLaDA  # noqa: E402
from shortcut_core.dimoo.prompt import REFERENCE_UNCOND_IDS  # noqa: E402
from shortcut_core.dimoo.shortcut import DiMOOShortcut  # noqa: E402
from shortcut_core.dimoo.vq import VQConfig, VQDecoder  # noqa: E402
from shortcut_core.sampler import sample  # noqa: E402
from bench.step_timer import StepTimer, peak_memory_mib, reset_peak_memory, speedup_figures, write_json  # noqa: E402


def random_init_(module: torch.nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Norm weights 1, biases 0, every other weight N(0, std), drawn on the module's device."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)


def build(args, device: torch.device, dtype: torch.dtype):
    config = LLADA_PRESETS["tiny" if args.tiny else "full"]
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.device("meta"):
        base = LLaDA(config)
        shortcut = DiMOOShortcut(DiMOOShortcutConfig.for_base(config))
    base = base.to(dtype).to_empty(device=device)  # cast on meta first: never a float32 copy of 8 B weights
    shortcut = shortcut.to(dtype).to_empty(device=device)
    random_init_(base, gen)
    random_init_(shortcut, gen)
    with torch.device(device):
        vq = VQDecoder(TINY_VQ if args.tiny else VQConfig())  # default init; the decoder stays fp32
    migm = DiMOOMIGM(base.eval(), vq.eval(), None, name="lumina-dimoo-random", fingerprint="random")
    shortcut.eval().bind(base.wte)
    return migm, shortcut


def prompt_ids(n_text: int, seed: int) -> list[int]:
    """<system>…</system><user> + n_text random text ids + </user>, as a long prompt tokenizes."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(300, 120000, (n_text,), generator=g).tolist()
    return list(REFERENCE_UNCOND_IDS[:12]) + text + [REFERENCE_UNCOND_IDS[-1]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_setting(migm, shortcut, full_steps: int, args, device) -> dict:
    steps = args.steps
    use = shortcut if full_steps < steps else None
    kw = dict(steps=steps, full_steps=full_steps, shortcut=use, cfg=args.cfg, temperature=1.0,
              height=args.size, width=args.size, uncond_ids=list(REFERENCE_UNCOND_IDS), decode=not args.no_decode)
    timer = StepTimer(device)
    reset_peak_memory(device)
    seconds, decode = [], []
    for rep in range(args.repeats):
        timer.start()
        res = sample(migm, prompt_ids(args.prompt_tokens, rep), seed=rep, callback=timer, **kw)
        seconds.append(res.stats.seconds)
        decode.append(res.stats.decode_seconds)
    return {
        "B": full_steps, "seconds": statistics.median(seconds), "decode_seconds": statistics.median(decode),
        "base_passes": res.stats.base_passes, "memo_passes": res.stats.memo_passes,
        "plain_base_passes": res.stats.plain_base_passes,
        "shortcut_steps": res.stats.shortcut_steps, "full_step_indices": res.stats.full_step_indices,
        "full_step_s": timer.median(True),
        "shortcut_step_s": timer.median(False),
        "peak_gib": peak_memory_mib(device) / 1024,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="image side in pixels, a multiple of 16 (paper: 1024)")
    p.add_argument("--steps", type=int, default=64, help="total steps T (paper: 64)")
    p.add_argument("--full-steps", default="14,11,9", help="comma list of B to compare with plain (paper: 14,11,9)")
    p.add_argument("--cfg", type=float, default=4.0, help="guidance scale (Lumina-DiMOO default 4.0)")
    p.add_argument("--prompt-tokens", type=int, default=96, help="text tokens of the (random) prompt")
    p.add_argument("--repeats", type=int, default=1, help="runs per setting (median reported)")
    p.add_argument("--seed", type=int, default=0, help="weights seed")
    p.add_argument("--no-decode", action="store_true", help="skip the VQ decode")
    p.add_argument("--tiny", action="store_true", help="tiny widths (real vocabulary): for --allow-cpu wiring checks")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU (only with --tiny and --size <= 128)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    if torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        if not (args.allow_cpu and args.tiny and args.size <= 128):
            p.error("no GPU: this benchmark needs one; on a CPU only a wiring check runs "
                    "(--allow-cpu --tiny --size 64)")
        device, dtype = torch.device("cpu"), torch.float32
    budgets = [int(b) for b in args.full_steps.split(",") if b.strip()]
    if any(not 1 <= b < args.steps for b in budgets):
        p.error(f"--full-steps values must be between 1 and {args.steps - 1}")

    t0 = time.perf_counter()
    migm, shortcut = build(args, device, dtype)
    sync(device)
    n_base = sum(q.numel() for q in migm.model.parameters())
    n_short = sum(q.numel() for q in shortcut.parameters())
    print(f"built {n_base / 1e9:.2f} B base + {n_short / 1e6:.1f} M shortcut on {device} ({dtype}) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    warm = dict(steps=2, full_steps=1, shortcut=shortcut, cfg=args.cfg, height=args.size, width=args.size,
                uncond_ids=list(REFERENCE_UNCOND_IDS), decode=not args.no_decode)
    sample(migm, prompt_ids(args.prompt_tokens, 99), seed=99, **warm)  # kernels, allocator, both step kinds

    results = []
    for b in [args.steps] + budgets:
        results.append(run_setting(migm, shortcut, b, args, device))
        r = results[-1]
        print(f"  B={b}: {r['seconds']:.2f} s sampling, {r['decode_seconds']:.2f} s decode, "
              f"{r['base_passes']} base passes, peak {r['peak_gib']:.1f} GiB", flush=True)

    plain, n = results[0], args.steps
    tokens = (args.size // 16) ** 2
    print(f"\nLumina-DiMOO architecture, random weights, {args.size}x{args.size} px ({tokens} image tokens), T={n}, "
          f"cfg {args.cfg}, {device} {dtype}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}")
    header = (f"{'setting':<14}{'s/image':>9}{'speed-up':>10}{'base fwd':>10}{'c':>8}{'ideal':>8}{'of ideal':>10}"
              f"{'T/B':>7}{'decode s':>10}{'peak GiB':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        b = r["B"]
        speed = plain["seconds"] / r["seconds"]
        r["speedup"] = speed
        if b == n:
            print(f"{'plain':<14}{r['seconds']:>9.2f}{1.0:>9.2f}x{r['base_passes']:>10}{'':>8}{'':>8}{'':>10}{'':>7}"
                  f"{r['decode_seconds']:>10.2f}{r['peak_gib']:>10.1f}")
            continue
        speedup_figures(r, plain, n)
        print(f"{f'shortcut B={b}':<14}{r['seconds']:>9.2f}{speed:>9.2f}x{r['base_passes']:>10}{r['c']:>8.3f}"
              f"{r['ideal']:>7.2f}x{r['of_ideal']:>10.2f}{n / b:>6.2f}x{r['decode_seconds']:>10.2f}"
              f"{r['peak_gib']:>10.1f}")
    if args.json:
        write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
