"""The feed-forward's in-place GELU against the plain ``nn.Sequential``, each in its own process.

    python bench/bench_gelu_inplace.py                 # both models, 3 process pairs each
    python bench/bench_gelu_inplace.py --pairs 5 --models embedded

``FeedForward`` applies its GELU in place when autograd needs nothing (inference), so a
layer does not allocate a fresh buffer four times the width for the activation. On a CPU a
large fresh buffer costs page faults; how much depends on the allocator's state, which is
per process. So each variant runs in a fresh process of its own, alternating, and the
script prints each process's median and the ratio of the medians. The values are the same
(the test suite checks this), so only time is measured.

- ``embedded``: the shipped Fashion-MNIST model, plain N=16, 500 unconditional images per
  call (the sweep's and the demo's batch), ms per image;
- ``maskgit512``: one base forward of the MaskGIT-512 architecture (random weights), 16x16
  tokens, the two guided rows, ms per forward.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("embedded", "maskgit512")


def measure(model: str, variant: str, threads: int, images: int = 500) -> float:
    """One process's figure: ms per image (embedded) or per forward (maskgit512)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from shortcut_core import generate, layers, load_migm

    torch.set_num_threads(threads)
    if variant == "sequential":
        layers.FeedForward.forward = lambda self, x: self.net(x)
    if model == "embedded":
        migm = load_migm(ROOT / "models/migm/fmnist_maskgit.safetensors")
        generate(migm, ["none"] * images, steps=16, seed=99, decode=False)  # warm-up
        seconds = [generate(migm, ["none"] * images, steps=16, seed=s, decode=False).stats.seconds for s in range(3)]
        return statistics.median(seconds) / images * 1e3
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_sampler import build

    migm, _ = build(16, "cpu", torch.float32)
    tokens, classes = torch.randint(0, 1024, (2, 256)), torch.tensor([3, migm.config.null_class])
    times = []
    with torch.inference_mode():
        for i in range(15):
            start = time.perf_counter()
            migm.model.features(tokens, classes)
            if i >= 3:  # the first calls pay first-touch of the weights
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--pairs", type=int, default=3, help="process pairs (sequential, in place) per model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=500, help="embedded: images per call (the sweep's batch)")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    if args.one:
        print(f"{measure(*args.one, args.threads, args.images):.3f}")
        return 0
    models = args.models.split(",")
    if set(models) - set(MODELS) or args.pairs < 1:
        p.error(f"--models takes a comma list of {', '.join(MODELS)} and --pairs at least 1; got {args.models!r}, "
                f"{args.pairs}")
    for model in models:
        figures = {"sequential": [], "inplace": []}
        for _ in range(args.pairs):
            for variant in figures:
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--images",
                                      str(args.images), "--one", model, variant],
                                     capture_output=True, text=True, check=True).stdout
                figures[variant].append(float(out.split()[-1]))
        unit = "ms/image" if model == "embedded" else "ms/forward"
        seq, inp = (statistics.median(v) for v in figures.values())
        print(f"{model}: sequential {seq:.2f} {unit} ({' '.join(f'{x:.2f}' for x in figures['sequential'])}), "
              f"in place {inp:.2f} ({' '.join(f'{x:.2f}' for x in figures['inplace'])}): {seq / inp:.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
