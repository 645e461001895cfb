"""Experiment: search the placement whose samples come closest to the base model's own.

The shortcut's job is to sample as the base model does at the same N, so a placement can be
judged by the FD between its samples and plain N-step samples ("to base"; the sweep reports it
for every row). This search starts from the shortcut file's placement for (N, B) (the paper's
where the file has none) and moves one full step at a time by ``--moves`` steps, keeping the
move that lowers FD-to-base most, until none does. Every candidate is sampled on the same
tuning seeds (chunk k of ``--batch`` has seed ``--seed`` + k; the default 300.. is used by no
sweep row, no placement check and no reference), so the result can then be judged on the
sweep's seeds against the paper's and the file's placement with ``placement_check``. A move
counts only if it holds on a second set of tuning seeds (``--replicate-seed``, 400..): the best
and the starting placement are scored again there, and the best must still be closer to base.

``--write-placements`` stores each placement the search moved (and the replicate confirmed) as
that regime's own placement (``by_regime``) in a copy of the shortcut file; the file's other
entries and their provenance stay, and the entry's run record names this method, its command
and its scores.

    python -m training.fmnist.placement_search --regime uncond --settings 16:4 --images 2000 \\
        --out runs/fmnist/placement_search.json --write-placements runs/fmnist/searched.safetensors
    python -m training.fmnist.placement_search --regime uncond --rows runs/fmnist/placement_search.json \\
        --out runs/fmnist/placement_search.json --write-placements runs/fmnist/searched.safetensors
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shortcut_core import load_migm, load_shortcut
from shortcut_core.placement import calibrated_indices, sampled_with
from shortcut_core.schedules import full_step_indices
from training.calibrate import stored_placements, write_into
from training.fmnist.ablation import sample_chunks
from training.fmnist.classifier import load_classifier
from training.fmnist.fd import frechet_distance_stats, image_stats
from training.fmnist.sweep import DEFAULT_MIGM, DEFAULT_SHORTCUT, REGIMES

TUNING_SEED = 300
METHOD = ("placement search: greedy moves that bring the samples closest to plain sampling's "
          "(training.fmnist.placement_search)")


def neighbours(placement: list[int], steps: int, moves: tuple[int, ...]) -> list[list[int]]:
    """Placements that move one full step (never step 0) by one of ``moves``, kept strictly
    increasing and inside the run."""
    out = []
    for i in range(1, len(placement)):
        low = placement[i - 1] + 1
        high = placement[i + 1] - 1 if i + 1 < len(placement) else steps - 1
        for move in moves:
            for signed in (-move, move):
                moved = placement[i] + signed
                if low <= moved <= high:
                    out.append(placement[:i] + [moved] + placement[i + 1:])
    return out


def search(score, start: list[int], steps: int, moves: tuple[int, ...], rounds: int) -> tuple[list[int], dict]:
    """Greedy descent of ``score(placement)`` from ``start``: (best placement, every score seen)."""
    seen = {tuple(start): score(start)}
    best = list(start)
    for _ in range(rounds):
        candidates = [c for c in neighbours(best, steps, moves) if tuple(c) not in seen]
        for c in candidates:
            seen[tuple(c)] = score(c)
        champion = min(seen, key=seen.get)
        if list(champion) == best:
            break
        best = list(champion)
    return best, seen


def scorer(migm, shortcut, classifier, regime: str, steps: int, images: int, batch: int, seed: int):
    """FD between a placement's samples and plain N-step samples, both at seeds ``seed``.. ."""
    plain, _ = sample_chunks(migm, None, regime, steps, None, images, batch, seed=seed)
    base = image_stats(plain, classifier)

    def to_base(placement: list[int]) -> float:
        sampled, _ = sample_chunks(migm, shortcut, regime, steps, placement, images, batch, seed=seed)
        return frechet_distance_stats(image_stats(sampled, classifier), base)
    return to_base


def replicate(row: dict, migm, shortcut, classifier, seed: int, batch: int) -> None:
    """Score a moved row's best and starting placement again on other seeds (``row["replicate"]``):
    a move that only fits the tuning seeds' noise does not hold there."""
    if row["best"] == row["start"] or "replicate" in row:
        return
    to_base = scorer(migm, shortcut, classifier, row["regime"], row["steps"], row["images"], batch, seed)
    row["replicate"] = {"seed": seed, "best": to_base(row["best"]), "start": to_base(row["start"])}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.placement_search", description=__doc__.split("\n\n")[0])
    p.add_argument("--migm", default=str(DEFAULT_MIGM))
    p.add_argument("--shortcut", default=str(DEFAULT_SHORTCUT))
    p.add_argument("--regime", choices=REGIMES, required=True)
    p.add_argument("--settings", help="N:B pairs, e.g. 16:3,16:4 (required unless --rows)")
    p.add_argument("--rows", nargs="+", type=Path,
                   help="JSON file(s) earlier runs wrote with --out: replicate and store their results instead of "
                        "searching again")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=TUNING_SEED, help="first chunk's seed of the tuning images")
    p.add_argument("--moves", default="1,2", help="how far one full step may move per try")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--replicate-seed", type=int, default=400,
                   help="first seed of the second tuning set a moved placement must also be closer to base on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/fmnist/placement_search.json"))
    p.add_argument("--write-placements", type=Path, help="store the placements the search moved, for --regime only, "
                                                         "in this shortcut file (created from --shortcut)")
    args = p.parse_args(argv)
    if not args.rows and not args.settings:
        p.error("give --settings to search, or --rows to replicate and store an earlier search")
    torch.set_num_threads(args.threads)
    migm = load_migm(args.migm)
    command = " ".join(["python -m training.fmnist.placement_search", *(argv or sys.argv[1:])])
    shortcut = load_shortcut(args.shortcut, migm)
    classifier = load_classifier()
    if args.rows:
        rows = [r for path in args.rows for r in json.loads(path.read_text())]
        other = sorted({r["regime"] for r in rows} - {args.regime})
        if other:
            p.error(f"--rows hold {', '.join(other)} rows; this writes --regime {args.regime} placements")
    else:
        rows = []
        moves = tuple(int(m) for m in args.moves.split(","))
        for item in args.settings.split(","):
            steps, budget = (int(v) for v in item.split(":"))
            to_base = scorer(migm, shortcut, classifier, args.regime, steps, args.images, args.batch, args.seed)
            paper = full_step_indices(steps, budget)
            start = calibrated_indices(shortcut, steps, budget, args.regime) or paper
            best, seen = search(to_base, start, steps, moves, args.rounds)
            if tuple(paper) not in seen:
                seen[tuple(paper)] = to_base(paper)
            rows.append({"regime": args.regime, "steps": steps, "budget": budget, "images": args.images,
                         "seed": args.seed, "start": start, "paper": paper, "best": best,
                         "to_base": {",".join(map(str, k)): v for k, v in sorted(seen.items(), key=lambda kv: kv[1])}})
            print(f"{args.regime} {steps}/{budget}: best {best} to base {seen[tuple(best)]:.2f}; start {start} "
                  f"{seen[tuple(start)]:.2f}; paper {paper} {seen[tuple(paper)]:.2f}; {len(seen)} tried", flush=True)
    for row in rows:
        replicate(row, migm, shortcut, classifier, args.replicate_seed, args.batch)
        if "replicate" in row:
            rep = row["replicate"]
            print(f"{row['regime']} {row['steps']}/{row['budget']}: seeds {rep['seed']}..: {row['best']} "
                  f"{rep['best']:.2f}, {row['start']} {rep['start']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    if args.write_placements:
        write_searched(Path(args.shortcut), args.write_placements, args.regime, rows, command,
                       sampled_with(migm.sampling_defaults))
    return rows


def write_searched(source: Path, target: Path, regime: str, rows: list[dict], command: str, made_at: dict) -> None:
    """Each row whose best placement differs from where it started, and is closer to base than the start
    on the replicate seeds too, becomes ``regime``'s own entry for (N, B) in ``target`` (a copy of
    ``source`` when it does not exist yet); every other entry and the table's provenance stay, and
    the entry's run record says it was searched."""
    source, table, provenance = stored_placements(source, target, regime)
    if provenance.get("sampled_with", made_at) != made_at:
        raise ValueError(f"the file's {regime} placements were made at {provenance['sampled_with']}, the search "
                         f"sampled at {made_at}: one table holds placements for one set of sampling settings")
    runs = dict(provenance.get("runs") or {})
    moved = [r for r in rows if r["best"] != r["start"]
             and r["replicate"]["best"] < r["replicate"]["start"]]  # the move holds on other seeds
    for r in moved:
        n, b = str(r["steps"]), str(r["budget"])
        table.setdefault(n, {})[b] = r["best"]
        key = ",".join(map(str, r["best"]))
        runs[f"{n}/{b}"] = {"method": METHOD, "command": command, "moved_from": r["start"], "images": r["images"],
                            "seed": r["seed"], "to_base": r["to_base"][key],
                            "to_base_before": r["to_base"][",".join(map(str, r["start"]))],
                            "to_base_paper": r["to_base"][",".join(map(str, r["paper"]))],
                            "replicate": r["replicate"]}
    provenance.setdefault("method", METHOD)
    provenance["sampled_with"] = made_at
    write_into(source, target, {**provenance, "table": table, "runs": runs}, regime)
    done = ", ".join(f"{r['steps']}/{r['budget']}: {r['best']}" for r in moved) or "nothing (no placement moved)"
    print(f"wrote {done} for {regime} sampling into {target}")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
