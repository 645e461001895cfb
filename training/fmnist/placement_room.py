"""Is there room for a placement to win? The base model at every step against the paper's placement.

A placement only chooses which B of N steps run the base model; the best it can hope for is to
reproduce plain N-step sampling. So where plain N is not better than the paper's placement
beyond the block noise, no placement can be shown better than the paper's by getting closer to
the base model: the metric cannot see the room. This samples plain N on the same seeds as a
``placement_check`` run (once per regime and N) and sets it beside that run's rows.

    python -m training.fmnist.placement_room --rows docs/results/fmnist_placement_check_20k.json \\
        --images 20000 --seed 1000 --out runs/fmnist/placement_room
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shortcut_core import load_migm
from training.fmnist.ablation import sample_chunks, second_block_start, write_rows
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import fd_and_blocks, reference_stats
from training.fmnist.sweep import DEFAULT_MIGM, block_noise, fd_text, verdict


def run_settings(rows: list[dict], images: int | None, batch: int | None, seed: int | None) -> tuple[int, int, int]:
    """(images, batch, seed) the check's rows were sampled with: the rows' own record, else the
    arguments (batch: else the check's default, 500); a row recorded otherwise than the arguments
    is an error, as plain N would then be sampled on other seeds than the rows it is set beside."""
    given = {"images": images, "batch": batch, "seed": seed}
    for r in rows:
        for key, value in given.items():
            if key in r and value is not None and r[key] != value:
                raise ValueError(f"the rows were sampled with {key}={r[key]}, not {value}; "
                                 f"leave --{key} out or give {r[key]}")
            if key in r:
                given[key] = r[key]
    if given["batch"] is None:
        given["batch"] = 500
    missing = [f"--{k}" for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"the rows do not record how they were sampled; give {' and '.join(missing)} "
                         "as the placement check ran")
    return given["images"], given["batch"], given["seed"]


def room(row: dict, plain: dict) -> dict:
    """One check row beside plain N: plain's FD and blocks, the noise of the pair (paper's row,
    plain) and plain's verdict against the paper's placement ('better': there is room)."""
    paper = row["paper"]
    noise = block_noise({"fd_blocks": paper["blocks"]}, {"fd_blocks": plain["blocks"]})
    return {"regime": row["regime"], "steps": row["steps"], "budget": row["budget"],
            "placement": row["placement"], "paper": paper, "calibrated": row["calibrated"],
            "check_verdict": row["verdict"], "plain": plain, "noise": noise,
            "room": verdict({"fd_shortcut": plain["fd"], "fd_plain": paper["fd"], "noise": noise})}


def markdown(rows: list[dict], images: int, seed: int) -> str:
    lines = [f"Plain N against the paper's placement, {images} images per row at seeds {seed}.. (FD-FMNIST, seed "
             "blocks). 'Room' is plain N's verdict against the paper's placement: only where plain N is better "
             "beyond the noise can a placement be shown better by getting closer to the base model.", "",
             "| regime | N/B | plain N: FD (blocks) | paper's: FD (blocks) | file's: FD | noise (plain, paper's) | "
             "room | file's vs paper's (check) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['regime']} | {r['steps']}/{r['budget']} | {fd_text(r['plain'])} | {fd_text(r['paper'])} | "
                     f"{r['calibrated']['fd']:.2f} | {r['noise']:.2f} | {r['room']} | {r['check_verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.placement_room", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=Path, required=True, help="a placement_check JSON")
    p.add_argument("--migm", default=str(DEFAULT_MIGM), help="the base model the check sampled")
    p.add_argument("--only", default="", help="comma list of regime:N:B rows to keep, e.g. cond:16:4 (default all)")
    p.add_argument("--images", type=int, help="images per row, as the check ran (read from the rows when recorded)")
    p.add_argument("--batch", type=int, help="images per chunk, as the check ran (read from the rows when recorded, else 500)")
    p.add_argument("--seed", type=int, help="first chunk's seed, as the check ran (read from the rows when recorded)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/fmnist/placement_room"), help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    rows = json.loads(args.rows.read_text())
    if args.only:
        keep = {tuple(item.split(":")) for item in args.only.split(",") if item.strip()}
        rows = [r for r in rows if (r["regime"], str(r["steps"]), str(r["budget"])) in keep]
        if not rows:
            p.error(f"no row of {args.rows} matches --only {args.only}")
    try:
        images, batch, seed = run_settings(rows, args.images, args.batch, args.seed)
        half = second_block_start(images, batch)
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    classifier = load_classifier()
    ref = reference_stats(classifier)
    plain = {}
    out = []
    for r in rows:
        key = (r["regime"], r["steps"])
        if key not in plain:
            generated, seconds = sample_chunks(migm, None, r["regime"], r["steps"], None, images, batch, seed=seed)
            fd, blocks = fd_and_blocks(generated, half, classifier, ref)
            plain[key] = {"fd": fd, "blocks": blocks, "ms_per_image": seconds / images * 1e3}
        out.append(room(r, plain[key]))
        o = out[-1]
        print(f"{o['regime']} {o['steps']}/{o['budget']}: plain {o['plain']['fd']:.2f}, paper's {o['paper']['fd']:.2f} "
              f"(noise {o['noise']:.2f}): room {o['room']}", flush=True)
    write_rows(args.out, out, markdown(out, images, seed))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
