"""Recording and training throughput on this machine, for stated model sizes.

    python bench/bench_training.py                 # tiny + medium on the CPU, 1 thread
    python bench/bench_training.py --threads 2 --configs medium

Random-weight MaskGIT bases (no checkpoint needed):

- tiny:   the test model (hidden 32, depth 2, 4x4 grid, 16 codes, 3 classes), N=8,
          shortcut width 16, 4 heads;
- medium: hidden 128, depth 6, 4 heads, MLP 512, 7x7 grid, 256 codes, 10 classes, N=15,
          shortcut width 64 (bottleneck ratio 2), 1 block, 4 heads.

Prints recording throughput (trajectories/s, both guidance branches, fp16 features),
bytes per trajectory on disk, and training throughput (pairs/s, batch 32, no
validation) plus the bytes a MaskGIT-512 trajectory would take (by formula).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "tiny": {
        "base": dict(hidden=32, depth=2, heads=4, mlp_dim=64, grid=4, codebook_size=16, num_classes=3),
        "steps": 8, "record": 64, "iters": 150, "shortcut": ["--width", "16", "--heads", "4"],
    },
    "medium": {
        "base": dict(hidden=128, depth=6, heads=4, mlp_dim=512, grid=7, codebook_size=256, num_classes=10),
        "steps": 15, "record": 48, "iters": 40, "shortcut": ["--bottleneck-ratio", "2", "--heads", "4"],
    },
}


def run_config(name: str, spec: dict, work: Path, device: str) -> dict:
    import torch

    from shortcut_core import MaskGIT, MaskGITConfig, MaskGITMIGM, load_migm, read_safetensors_metadata, save_migm
    from shortcut_core.checkpoints import fingerprint
    from training.record import record_trajectories
    from training.train import build_parser, train
    from training.trajectories import read_manifest

    cfg = MaskGITConfig(**spec["base"])
    torch.manual_seed(0)
    model = MaskGIT(cfg)
    with torch.no_grad():
        model.bias.normal_(0, 1.0)  # random logits that depend on the features, as in tests/tiny.py
    base_path = work / f"{name}.safetensors"
    save_migm(MaskGITMIGM(model, None, name=name, fingerprint=fingerprint(model.state_dict(), cfg.to_dict())), base_path)
    migm = load_migm(base_path, device=device)
    n_params = sum(p.numel() for p in model.parameters())

    data = work / f"{name}-data"
    record_trajectories(migm, data, count=8, steps=spec["steps"], batch_size=8, shard_size=8,
                        show_progress=False, log=lambda m: None)  # warm-up
    data = work / f"{name}-data-timed"
    t = time.perf_counter()
    result = record_trajectories(migm, data, count=spec["record"], steps=spec["steps"], batch_size=8, shard_size=8,
                                 show_progress=False, log=lambda m: None)
    record_s = time.perf_counter() - t
    manifest = read_manifest(data)

    argv = ["--data", str(data), "--migm", str(base_path), "--out", str(work / f"{name}-sc.safetensors"),
            "--iters", str(spec["iters"]), "--batch", "32", "--val-fraction", "0", "--ckpt-every", "0",
            "--log-every", "1000", "--no-progress", "--device", device, *spec["shortcut"]]
    args = build_parser().parse_args(argv)
    quiet = sys.stdout
    sys.stdout = open(work / f"{name}-train.out", "w")
    try:
        trained = train(args)
    finally:
        sys.stdout.close()
        sys.stdout = quiet
    return {
        "name": name,
        "base_params": n_params,
        "shortcut_params": read_safetensors_metadata(trained.out)["info"]["architecture"]["parameters"],
        "tokens": cfg.seq_len,
        "steps": spec["steps"],
        "traj_per_s": result.written / record_s,
        "bytes_per_traj": manifest["counts"]["bytes"] / manifest["counts"]["trajectories"],
        "pairs_per_s": trained.pairs_per_second,
        "pairs_per_traj": manifest["counts"]["pairs"] // manifest["counts"]["trajectories"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,medium", help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import platform

    import torch

    from training.trajectories import bytes_per_trajectory, human_bytes

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"(load average {load:.1f}), device {args.device}, {torch.get_num_threads()} thread(s)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            rows.append(run_config(name, CONFIGS[name.strip()], Path(tmp), args.device))
    print(f"{'config':<8} {'base params':>11} {'shortcut':>9} {'T':>4} {'N':>3} {'record traj/s':>14} "
          f"{'bytes/traj':>11} {'train pairs/s':>14} {'pairs/traj':>10}")
    for r in rows:
        print(f"{r['name']:<8} {r['base_params'] / 1e6:>10.2f}M {r['shortcut_params'] / 1e6:>8.3f}M {r['tokens']:>4} "
              f"{r['steps']:>3} "
              f"{r['traj_per_s']:>14.2f} {human_bytes(r['bytes_per_traj']):>11} {r['pairs_per_s']:>14.1f} "
              f"{r['pairs_per_traj']:>10}")
    big = bytes_per_trajectory({"cond": [1025, 768], "uncond": [1025, 768]}, 15, 1024, torch.float16)
    print(f"MaskGIT-512 at N=15 with guidance (formula, fp16): {human_bytes(big)} per trajectory")


if __name__ == "__main__":
    main()
