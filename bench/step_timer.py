"""Per-step timing and peak memory shared by the benchmark scripts."""
from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def add_embedded_model_arguments(parser) -> None:
    """``--migm`` and ``--shortcut``, defaulting to the embedded Fashion-MNIST pair."""
    parser.add_argument("--migm", default=str(ROOT / "models/migm/fmnist_maskgit.safetensors"))
    parser.add_argument("--shortcut", default=str(ROOT / "models/migm_shortcut/fmnist_shortcut.safetensors"))


def load_model_arguments(args):
    """(migm, shortcut) from ``--migm``/``--shortcut``, after setting ``--threads``."""
    from shortcut_core import load_migm, load_shortcut

    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    return migm, load_shortcut(args.shortcut, migm)


class StepTimer:
    """A sampler callback that times every step after the first, split into full and shortcut steps.

    Step 0 also pays for the run's set-up, so it is left out. Call ``start()`` right before
    each ``generate``/``sample`` call.
    """

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.last = 0.0

    def start(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, info) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if info.step > 0:
            self.times[info.full].append(now - self.last)
        self.last = now

    def median(self, full: bool) -> float | None:
        return statistics.median(self.times[full]) if self.times[full] else None


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device | str) -> float:
    """Peak GPU memory allocated on CUDA; on a CPU the process's peak resident set."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memo_steps(row: dict) -> float:
    """Full steps of a row served from memory (its ``memo_passes`` over the passes per full step)."""
    memo = row.get("memo_passes", 0)
    return memo * row["B"] / (row["base_passes"] + memo) if memo else 0.0


def speedup_figures(result: dict, plain: dict, steps: int) -> dict:
    """Add c (shortcut step / full step), the ideal N / (B + (N - B) c) and the achieved fractions,
    against the ``plain`` row of the same run. Full steps served from memory cost nothing: the
    ideal counts only the full steps that ran, here and in plain."""
    b = result["B"]
    full, short = result.get("full_step_s"), result.get("shortcut_step_s")
    c = short / full if full and short else float("nan")
    speed = plain["seconds"] / result["seconds"]
    ideal = (steps - memo_steps(plain)) / (b - memo_steps(result) + (steps - b) * c)
    result.update(c=c, ideal=ideal, speedup=speed, of_ideal=speed / ideal, of_limit=speed / (steps / b))
    return result


def write_json(path, args, results: list[dict]) -> None:
    import json

    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
