"""Quality-speed sweep of the embedded Fashion-MNIST model: plain sampling vs the shortcut,
class-conditional and unconditional.

For every regime (``cond``: balanced classes with the model's guidance; ``uncond``: the
null class, one pass per step) and every setting (plain N, shortcut N/B, or the
training-free control ``--cache-settings``: the same full steps, each skipped step reusing
the last full step's feature instead of the shortcut's prediction) it generates
images in large batches and measures, with the shipped classifier, FD-FMNIST against the
test split (class consistency too when there is a class), sampling seconds per image and
base forward passes per image.

Timing is fair by construction: the work is split into chunks (one ``--batch`` of images,
one seed) and every chunk runs all pending settings back to back, so plain and shortcut
are measured side by side under the same machine load. Each finished chunk is saved
(``--state-dir``), so an interrupted sweep resumes where it stopped. Two processes given
disjoint ``--regimes`` or setting lists and the same state dir fill it in parallel (one
core each); a last run with the full lists reuses every chunk and writes the report.

    python -m training.fmnist.sweep --threads 2                        # the published tables (see --help)
    python -m training.fmnist.sweep --threads 2 --out-dir docs/results # ... written where the README links them
    python -m training.fmnist.sweep --images 500 --headline-images 1000 --state-dir runs/try

``--dtype bf16`` samples every row with the base model and shortcut in bf16 (fast on CPUs
with native bf16 matrix units, e.g. Intel AMX); the fidelity reference stays the model as
published (fp32), so "to base" then also measures what the lower precision costs. Give it
its own ``--state-dir`` (rows made in another precision are redone, never mixed); the
fp32 ``base_reference_N*`` folders may be copied into it, they are reused when their model,
batch, seed and sampling settings match.

Writes ``fmnist_sweep.md`` (tables and target checks for both regimes), ``fmnist_sweep.json``,
``fmnist_sweep_{regime}.png`` (FD-FMNIST vs ms/image, Pareto front marked) and sample grids
into ``--out-dir`` (default under the git-ignored ``runs/``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from shortcut_core import FeatureCache, fingerprint, generate, load_migm, load_shortcut
from shortcut_core.placement import calibrated_indices
from shortcut_core.progress import ProgressBar
from training.fmnist.classifier import load_classifier, predict
from training.fmnist.dataset import CLASS_NAMES
from training.fmnist.fd import (class_consistency, extract_features, fd_fmnist, feature_stats,
                                frechet_distance_stats, image_stats, reference_stats, to_classifier_input)
from training.fmnist.train_maskgit import recipe_commands
from training.fmnist.train_tokenizer import Log

DEFAULT_MIGM = Path("models/migm/fmnist_maskgit.safetensors")
DEFAULT_SHORTCUT = Path("models/migm_shortcut/fmnist_shortcut.safetensors")
REGIMES = {
    "cond": "class-conditional: balanced classes, the model's guidance",
    "uncond": "unconditional: class 'none', no guidance, one base pass per full step",
}
# Pairs the targets compare (issue: same N, equal base passes).
SAME_N = [("shortcut_N16_B4", "plain_N16")]
EQUAL_PASSES = [("shortcut_N16_B4", "plain_N4"), ("shortcut_N24_B6", "plain_N6")]
SAME_N_TOLERANCE = 0.03
# The base model's own samples for the fidelity column come from these chunk seeds on: no row uses them.
FIDELITY_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class Setting:
    steps: int
    full: int  # B; == steps for plain sampling
    placement: str = "paper"  # or "calibrated": the shortcut file's own placement for (N, B)
    cache: bool = False  # the skipped steps reuse the last full step's feature (FeatureCache), no shortcut

    @property
    def plain(self) -> bool:
        return self.full == self.steps

    @property
    def key(self) -> str:
        if self.plain:
            return f"plain_N{self.steps}"
        kind = "cache" if self.cache else "shortcut"
        return f"{kind}_N{self.steps}_B{self.full}" + ("_cal" if self.placement == "calibrated" else "")

    @property
    def label(self) -> str:
        if self.plain:
            return f"plain N={self.steps}"
        kind = "feature cache" if self.cache else "shortcut"
        return f"{kind} N={self.steps} B={self.full}" + (" calibrated" if self.placement == "calibrated" else "")


def parse_settings(plain: str, shortcut: str, cache: str = "") -> list[Setting]:
    """"4,8", "16:3,16:5,16:4c" and "16:4c" -> settings (plain first, then shortcut, then feature
    cache; a trailing c: the shortcut file's calibrated placement)."""
    out = [Setting(int(n), int(n)) for n in plain.split(",") if n.strip()]
    for spec, is_cache in ((shortcut, False), (cache, True)):
        for item in spec.split(","):
            item = item.strip()
            if item:
                calibrated = item.endswith("c")
                n, b = item.rstrip("c").split(":")
                if not 1 <= int(b) < int(n):
                    raise ValueError(f"{'cache' if is_cache else 'shortcut'} setting {item!r}: need 1 <= B < N")
                out.append(Setting(int(n), int(b), "calibrated" if calibrated else "paper", is_cache))
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) float in [0, 1] -> (B, H, W) uint8 gray."""
    return (images[..., 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def balanced_classes(batch: int, num_classes: int = 10) -> list[int]:
    return [i % num_classes for i in range(batch)]


def regime_classes(regime: str, batch: int) -> list:
    """The condition list of one chunk: balanced classes, or the null class for every image."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {', '.join(REGIMES)}")
    return balanced_classes(batch) if regime == "cond" else ["none"] * batch


# --------------------------------------------------------------------------- drawing (PIL only)


def image_grid(images: np.ndarray, columns: int, scale: int = 2, column_labels=None, row_labels=None,
               pad: int = 2) -> Image.Image:
    """(B, H, W) uint8 -> one labelled grid image, filled row by row."""
    font = ImageFont.load_default()
    rows = (len(images) + columns - 1) // columns
    h, w = images.shape[1] * scale, images.shape[2] * scale
    top = 14 if column_labels else 0
    left = max((len(s) for s in row_labels), default=0) * 6 + 6 if row_labels else 0
    canvas = Image.new("RGB", (left + columns * (w + pad) + pad, top + rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        tile = Image.fromarray(img, "L").resize((w, h), Image.NEAREST)
        canvas.paste(tile, (left + pad + c * (w + pad), top + pad + r * (h + pad)))
    for c, text in enumerate(column_labels or []):
        x = left + pad + c * (w + pad)
        draw.text((x, 1), text[: max(1, w // 6)], fill="black", font=font)
    for r, text in enumerate(row_labels or []):
        draw.text((2, top + pad + r * (h + pad) + h // 2 - 5), text, fill="black", font=font)
    return canvas


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (x lower, y lower), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot(results: list[dict], path: Path, title: str) -> None:
    """FD-FMNIST (y) vs seconds per image (x); plain and shortcut marked, Pareto front drawn."""
    W, H, L, R, T, B = 960, 620, 80, 30, 50, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [r["seconds_per_image"] for r in results]
    ys = [r["fd_fmnist"] for r in results]
    x0, x1 = 0.0, max(xs) * 1.08
    y0, y1 = 0.0, max(ys) * 1.1

    def px(x, y):
        return L + (x - x0) / (x1 - x0) * (W - L - R), H - B - (y - y0) / (y1 - y0) * (H - T - B)

    d.rectangle([L, T, W - R, H - B], outline="black")
    for k in range(6):
        xv, yv = x0 + (x1 - x0) * k / 5, y0 + (y1 - y0) * k / 5
        gx, _ = px(xv, y0)
        _, gy = px(x0, yv)
        d.line([gx, T, gx, H - B], fill=(225, 225, 225))
        d.line([L, gy, W - R, gy], fill=(225, 225, 225))
        d.text((gx - 14, H - B + 6), f"{xv * 1e3:.1f}", fill="black", font=font)
        d.text((L - 40, gy - 6), f"{yv:.2f}", fill="black", font=font)
    d.text((W // 2 - 110, H - B + 26), "sampling milliseconds per image (lower is faster)", fill="black", font=font)
    d.text((8, T - 20), "FD-FMNIST (lower is better)", fill="black", font=font)
    d.text((L, 12), title, fill="black", font=font)
    front = pareto_front(list(zip(xs, ys)))
    d.line([px(xs[i], ys[i]) for i in front], fill=(0, 160, 0), width=2)
    for i, r in enumerate(results):
        x, y = px(xs[i], ys[i])
        color = (30, 90, 200) if r["plain"] else (120, 120, 120) if r.get("cache") else (230, 120, 20)
        if r["plain"]:
            d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color)
            text = f"N{r['steps']}"
        else:
            if r.get("cache"):
                d.polygon([(x, y - 6), (x - 6, y + 5), (x + 6, y + 5)], fill=color)
            else:
                d.rectangle([x - 5, y - 5, x + 5, y + 5], fill=color)
            text = f"{r['steps']}/{r['full_steps']}" + ("c" if r["key"].endswith("_cal") else "")
        if i in front:
            d.ellipse([x - 9, y - 9, x + 9, y + 9], outline=(0, 160, 0), width=2)
        d.text((x + 8, y - 12), text, fill=color, font=font)
    lx = W - R - 250
    d.ellipse([lx, T + 12, lx + 10, T + 22], fill=(30, 90, 200))
    d.text((lx + 16, T + 11), "plain sampling, N steps", fill="black", font=font)
    d.rectangle([lx, T + 30, lx + 10, T + 40], fill=(230, 120, 20))
    d.text((lx + 16, T + 29), "shortcut, N steps / B full", fill="black", font=font)
    d.line([lx, T + 53, lx + 10, T + 53], fill=(0, 160, 0), width=2)
    d.text((lx + 16, T + 47), "Pareto front (circled)", fill="black", font=font)
    if any(r.get("cache") for r in results):
        d.polygon([(lx + 5, T + 64), (lx, T + 74), (lx + 10, T + 74)], fill=(120, 120, 120))
        d.text((lx + 16, T + 65), "feature cache (no shortcut), N / B", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def step_costs(migm, shortcut, batch: int, repeats: int, regime: str = "cond", seed: int = 0) -> dict:
    """Seconds of one full step and one shortcut step on ``batch`` images of ``regime``
    (guided class-conditional: 2*batch rows; unconditional: batch rows).

    Network only (base forward vs shortcut forward) and whole step (+ head, sampling,
    reveal), interleaved so machine load hits both alike; medians over ``repeats``.
    """
    steps = 8
    gen = torch.Generator().manual_seed(seed)
    state = migm.start(regime_classes(regime, batch), steps=steps, generator=gen)
    with torch.inference_mode():
        feats = migm.base_features(state)
        migm.advance(state, feats, 0, gen)  # step 0 revealed: the shortcut now has its inputs
        times = {"base_net": [], "shortcut_net": [], "full_step": [], "shortcut_step": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            f_base = migm.base_features(state)
            t1 = time.perf_counter()
            f_short = migm.shortcut_features(shortcut, feats, state)
            t2 = time.perf_counter()
            times["base_net"].append(t1 - t0)
            times["shortcut_net"].append(t2 - t1)
            # Each step reveals into its own copy of the state, so every repeat times the same step 1.
            for key, f, net in (("full_step", f_base, t1 - t0), ("shortcut_step", f_short, t2 - t1)):
                fresh = dataclasses.replace(state, tokens=state.tokens.clone(), revealed_at=state.revealed_at.clone())
                t3 = time.perf_counter()
                migm.advance(fresh, f, 1, gen)
                times[key].append(net + time.perf_counter() - t3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "regime": regime, "batch": batch, "rows": feats.shape[0], "repeats": repeats,
        **{f"{k}_ms_per_image": round(v / batch * 1e3, 4) for k, v in med.items()},
        "network_ratio": round(med["base_net"] / med["shortcut_net"], 2),
        "step_ratio": round(med["full_step"] / med["shortcut_step"], 2),
    }


def run_chunk(migm, shortcut, setting: Setting, regime: str, chunk: int, batch: int, seed: int) -> dict:
    classes = regime_classes(regime, batch)
    full, placement = None if setting.plain else setting.full, setting.placement
    if setting.cache:  # placed where the shortcut's are, so the two rows differ only in what fills the skipped steps
        if placement == "calibrated":
            full, placement = calibrated_indices(shortcut, setting.steps, setting.full, regime) or setting.full, "paper"
        shortcut = FeatureCache()
    result = generate(migm, classes, steps=setting.steps, full_steps=full,
                      shortcut=None if setting.plain else shortcut, seed=seed + chunk, placement=placement)
    labels = classes if regime == "cond" else [-1] * batch
    return {"images": to_uint8(result.images), "classes": np.asarray(labels), "seconds": result.stats.seconds,
            "decode_seconds": result.stats.decode_seconds,
            # full steps per chunk, a step 0 served from memory included: what the schedule costs
            "base_passes": result.stats.base_passes + result.stats.memo_passes,
            "full_step_indices": result.stats.full_step_indices}


def chunk_path(state_dir: Path, regime: str, setting: Setting, chunk: int) -> Path:
    return state_dir / regime / setting.key / f"chunk_{chunk:03d}.npz"


def save_chunk(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=data["images"], classes=data["classes"], seconds=data["seconds"],
             decode_seconds=data["decode_seconds"], base_passes=data["base_passes"],
             full_step_indices=np.asarray(data["full_step_indices"]))
    tmp.replace(path)


def forget_chunks_made_otherwise(folder: Path, made_by: dict, log) -> None:
    """Chunks are reused across runs only if the same models, batch and seed made them: a new
    shortcut file in the same --state-dir must not be scored on the old one's images."""
    stamp = folder / "made_by.json"
    old = json.loads(stamp.read_text()) if stamp.is_file() else None
    stale = sorted(folder.glob("chunk_*.npz")) if old != made_by else []
    if stale:
        log(f"{folder}: {len(stale)} chunk(s) were made by {old or 'an unrecorded model'}, not {made_by}: redone")
        for path in stale:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(made_by))


def load_chunks(state_dir: Path, regime: str, setting: Setting, count: int) -> list[dict]:
    return [dict(np.load(chunk_path(state_dir, regime, setting, k))) for k in range(count)]


def summarize(setting: Setting, regime: str, chunks: list[dict], classifier, ref, common: int,
              blocks: bool, base=None) -> dict:
    """``fd_fmnist`` uses the first ``common`` images (same count and seeds in every row: FD is
    biased by the count); ``fd_fmnist_all`` every image; ``fd_blocks`` the two halves (disjoint
    seeds) of a headline setting, whose difference shows the sampling noise; ``fd_base`` the
    first ``common`` images against ``base``, the feature statistics of the base model's own
    samples (``base_reference``). The classifier runs once over the images."""
    images = np.concatenate([c["images"] for c in chunks])
    classes = np.concatenate([c["classes"] for c in chunks])
    seconds = float(sum(float(c["seconds"]) for c in chunks))
    feats = extract_features(images, classifier)

    @functools.cache  # each slice is scored against the data and against the base model's samples
    def stats(lo: int, hi: int):
        return feature_stats(feats[lo:hi])

    def fd(lo: int, hi: int, against=ref) -> float:
        return round(frechet_distance_stats(stats(lo, hi), against), 4)

    half = len(images) // 2
    consistency = None
    if regime == "cond":
        predicted = predict(classifier, to_classifier_input(images)).numpy()
        consistency = round(float((predicted == classes).mean()), 4)
    return {
        "key": setting.key, "label": setting.label, "regime": regime, "plain": setting.plain, "cache": setting.cache,
        "steps": setting.steps, "full_steps": setting.full, "images": int(len(images)),
        "full_step_indices": [int(i) for i in np.asarray(chunks[0]["full_step_indices"])],
        "fd_fmnist": fd(0, common), "fd_images": int(min(common, len(images))),
        "fd_fmnist_all": fd(0, len(images)) if len(images) > common else None,
        "fd_blocks": [fd(0, half), fd(half, len(images))] if blocks else None,
        "fd_base": None if base is None else fd(0, common, base),
        "fd_base_all": fd(0, len(images), base) if base is not None and len(images) > common else None,
        "fd_base_blocks": [fd(0, half, base), fd(half, len(images), base)] if blocks and base is not None else None,
        "class_consistency": consistency,
        "seconds_per_image": seconds / len(images),
        "decode_seconds_per_image": float(sum(float(c["decode_seconds"]) for c in chunks)) / len(images),
        "base_passes_per_image": int(chunks[0]["base_passes"]),
        "chunk_seconds": [round(float(c["seconds"]), 3) for c in chunks],
    }


def base_reference(migm, regime: str, args, count: int, state_dir: Path, classifier, log):
    """Feature statistics of ``count`` plain N=``args.fidelity_steps`` samples at seeds no row uses,
    sampled by ``migm`` as published (fp32).

    FD against them measures how faithfully a setting reproduces what the base model itself
    samples with every step run; the plain row of the same N, seen through its own seeds,
    gives the noise floor. FD against the data cannot tell these apart: a sampler that drifts
    from the base model can land closer to the data by chance.
    """
    setting = Setting(args.fidelity_steps, args.fidelity_steps)
    folder = state_dir / regime / f"base_reference_N{setting.steps}"
    forget_chunks_made_otherwise(folder, {"migm": migm.fingerprint, "batch": args.batch,
                                          "seed": args.seed + FIDELITY_SEED_OFFSET,
                                          "options": migm.sampling_defaults}, log)
    chunks = []
    for k in range(-(-count // args.batch)):
        path = folder / f"chunk_{k:03d}.npz"
        if not path.is_file():
            save_chunk(path, run_chunk(migm, None, setting, regime, k, args.batch, args.seed + FIDELITY_SEED_OFFSET))
        chunks.append(np.load(path)["images"])
    images = np.concatenate(chunks)[:count]
    log(f"{regime}: the base model's own samples for fidelity: plain N={setting.steps}, {len(images)} images")
    return image_stats(images, classifier)


def on_all_images(a: dict, b: dict, column: str) -> bool:
    """Whether two rows are compared on all their images (``column``, e.g. ``fd_fmnist_all``, set for
    both and the same count) rather than on the common first images."""
    return a.get(column) is not None and b.get(column) is not None and a.get("images") == b.get("images")


def fidelity_pair(r: dict, other: dict) -> dict:
    """``r`` against ``other`` by FD to the base model's own samples: on all images when both have the
    same count, else the common count; the noise is the larger gap between either row's seed blocks
    (scaled to the common count, ``block_noise``)."""
    both_all = on_all_images(r, other, "fd_base_all")
    column = "fd_base_all" if both_all else "fd_base"
    noise = block_noise(r, other, count=None if both_all else r["fd_images"], blocks="fd_base_blocks")
    pair = {"fd_shortcut": r[column], "fd_plain": other[column], "noise": noise}
    return {"other": other["key"], "images": r["images"] if both_all else r["fd_images"], "fd": pair["fd_shortcut"],
            "fd_other": pair["fd_plain"], "noise": pair["noise"], "verdict": verdict(pair)}


def fidelity(results: list[dict]) -> list[dict]:
    """For each shortcut or cache row: its FD to the base model's own samples, the plain setting
    with the most steps it is at least as faithful as (common image count), and for a shortcut
    row the verdict against its feature-cache twin (``vs_cache``) and, for a calibrated row,
    against the paper placement (``vs_paper``)."""
    by_key = {r["key"]: r for r in results}
    plain = sorted((r for r in results if r["plain"] and r.get("fd_base") is not None), key=lambda r: -r["steps"])
    out = []
    for r in results:
        if r["plain"] or r.get("fd_base") is None:
            continue
        beaten = [p for p in plain if p["fd_base"] >= r["fd_base"]]
        t = {"key": r["key"], "fd_base": r["fd_base"], "base_passes": r["base_passes_per_image"],
             "as_faithful_as": beaten[0]["key"] if beaten else None,
             "plain_fd_base": beaten[0]["fd_base"] if beaten else None}
        if not r.get("cache"):
            twin = by_key.get(r["key"].replace("shortcut_", "cache_", 1))
            paper = by_key.get(r["key"].removesuffix("_cal")) if r["key"].endswith("_cal") else None
            if twin is not None:
                t["vs_cache"] = fidelity_pair(r, twin)
            if paper is not None:
                t["vs_paper"] = fidelity_pair(r, paper)
        out.append(t)
    return out


# --------------------------------------------------------------------------- report


def best_fd(r: dict) -> float:
    """The FD of all of a row's images (headline rows) or of the common count."""
    return r["fd_fmnist_all"] if r.get("fd_fmnist_all") is not None else r["fd_fmnist"]


def block_noise(*rows: dict, count: int | None = None, blocks: str = "fd_blocks") -> float | None:
    """The larger disagreement between the two seed blocks of the given rows (None: no blocks).

    ``count``: the rows are compared on their first ``count`` images, fewer than a block holds;
    the gap is then scaled by sqrt(block size / count), as an estimate's spread grows when it
    sees fewer images (a heuristic: at 1,000 images, 1.58x the gap of 2,500-image blocks)."""
    gaps = []
    for r in rows:
        if r.get(blocks):
            gap = abs(r[blocks][0] - r[blocks][1])
            block = r.get("images", 0) // 2
            gaps.append(gap * math.sqrt(block / count) if count and block > count else gap)
    return max(gaps) if gaps else None


def verdict(t: dict) -> str:
    """The first row of a pair (``fd_shortcut``) against the second (``fd_plain``), beyond the block noise or not;
    rows without seed blocks only say which is lower, since nothing measured their noise."""
    if t["noise"] is None:
        return ("lower" if t["fd_shortcut"] < t["fd_plain"] else "higher" if t["fd_shortcut"] > t["fd_plain"]
                else "equal") + " (one seed block: noise not measured)"
    return ("better" if t["fd_shortcut"] < t["fd_plain"] - t["noise"] else
            "worse" if t["fd_shortcut"] > t["fd_plain"] + t["noise"] else "within the block noise")


def fd_text(m: dict) -> str:
    """A measurement's FD with its two seed blocks, as the result tables print it."""
    return f"{m['fd']:.2f} ({m['blocks'][0]:.1f} / {m['blocks'][1]:.1f})"


def targets(results: list[dict]) -> dict:
    """One regime's target checks (see the module's SAME_N and EQUAL_PASSES pairs; a shortcut row swept
    with its file's calibrated placement too is judged as it ships, with that placement)."""
    by_key = {r["key"]: r for r in results}
    plain = [r for r in results if r["plain"]]
    iso = []
    for s in (r for r in results if not r["plain"] and not r.get("cache")):
        better = [p for p in plain if p["fd_fmnist"] <= s["fd_fmnist"]]
        if better:
            ref = min(better, key=lambda p: p["seconds_per_image"])
            note = "fastest plain setting with equal or better FD"
        elif plain:
            ref = min(plain, key=lambda p: p["fd_fmnist"])
            note = "no plain setting reaches this FD; compared with the best plain FD"
        else:
            continue
        iso.append({"shortcut": s["key"], "plain": ref["key"], "speedup": ref["seconds_per_image"] / s["seconds_per_image"],
                    "note": note})
    best_iso = max(iso, key=lambda t: t["speedup"]) if iso else None

    def pair(short_key: str, plain_key: str) -> dict | None:
        """On all images when both rows have the same count, else on the common count (FD is biased
        by the count: a 5,000-image FD must not meet a 1,000-image one)."""
        s, p = by_key.get(short_key), by_key.get(plain_key)
        if s is None or p is None:
            return None
        both_all = on_all_images(s, p, "fd_fmnist_all")
        fd_s, fd_p = (best_fd(s), best_fd(p)) if both_all else (s["fd_fmnist"], p["fd_fmnist"])
        return {"shortcut": short_key, "plain": plain_key, "fd_shortcut": fd_s, "fd_plain": fd_p,
                "fd_rel": fd_s / fd_p - 1, "noise": block_noise(s, p, count=None if both_all else s.get("fd_images")),
                "images": s.get("images") if both_all else s.get("fd_images"), "noise_scaled": not both_all,
                "speedup": p["seconds_per_image"] / s["seconds_per_image"]}

    def pairs(short_key: str, plain_key: str) -> list[dict]:
        """The paper-placement row and, when swept, the calibrated one; the target counts the
        shortcut as it ships: with its file's calibrated placement when that row exists."""
        found = [t for t in (pair(short_key, plain_key), pair(short_key + "_cal", plain_key)) if t]
        for t in found:
            t["counts"] = t is found[-1]
        return found

    same_n = []
    for keys in SAME_N:
        for t in pairs(*keys):
            allowed = max(SAME_N_TOLERANCE * t["fd_plain"], t["noise"] or 0.0)
            t["met"] = t["fd_shortcut"] - t["fd_plain"] <= allowed
            same_n.append(t)
    equal = []
    for keys in EQUAL_PASSES:
        for t in pairs(*keys):
            t["met"] = t["fd_shortcut"] < t["fd_plain"] - (t["noise"] or 0.0)
            equal.append(t)
    calibrated = []
    for c in (r for r in results if r["key"].endswith("_cal") and not r.get("cache")):
        t = pair(c["key"], c["key"].removesuffix("_cal"))
        if t:
            t["placements"] = {"calibrated": c["full_step_indices"],
                               "paper": by_key[t["plain"]]["full_step_indices"]}
            t["verdict"] = verdict(t)
            calibrated.append(t)
    against_cache = []
    for c in (r for r in results if r.get("cache")):
        t = pair(c["key"].replace("cache_", "shortcut_", 1), c["key"])
        if t:
            t["full_step_indices"], t["verdict"] = c["full_step_indices"], verdict(t)
            against_cache.append(t)
    return {
        "shortcut_vs_cache": against_cache,
        "calibrated_vs_paper": calibrated,
        "iso_quality": iso, "best_iso_quality": best_iso,
        "target_2x_met": bool(best_iso and best_iso["speedup"] >= 2),
        "same_n": same_n, "target_same_n_met": bool(same_n) and all(t["met"] for t in same_n if t["counts"]),
        "equal_passes": equal,
        "target_equal_passes_met": bool(equal) and all(t["met"] for t in equal if t["counts"]),
    }


def regime_section(regime: str, results: list[dict], checks: dict, costs: dict, out_names: dict,
                   fidelity_n: int = 0) -> list[str]:
    plain = {r["steps"]: r for r in results if r["plain"]}
    front = set(pareto_front([(r["seconds_per_image"], r["fd_fmnist"]) for r in results]))
    cond = regime == "cond"
    lines = [f"## {REGIMES[regime].split(':')[0].capitalize()} ({regime})", "", f"{REGIMES[regime]}.", "",
             f"| setting | N | B | images | FD-FMNIST ({results[0]['fd_images']} images) | FD-FMNIST (all) | "
             f"FD seed blocks | {'class consistency | ' if cond else ''}"
             + (f"FD to the base model's samples ({results[0]['fd_images']} images) | (all) | " if fidelity_n else "")
             + "ms / image | speed-up vs plain same N | base passes / image | Pareto |",
             "|---|---|---|---|---|---|---|" + ("---|" if cond else "") + ("---|---|" if fidelity_n else "")
             + "---|---|---|---|"]
    for i, r in enumerate(results):
        p = plain.get(r["steps"])
        speed = f"{p['seconds_per_image'] / r['seconds_per_image']:.2f}x" if p else "-"
        blocks = " / ".join(f"{b:.2f}" for b in r["fd_blocks"]) if r.get("fd_blocks") else ""
        lines.append(
            f"| {r['label']} | {r['steps']} | {r['full_steps']} | {r['images']} | {r['fd_fmnist']:.2f} | "
            f"{'' if r.get('fd_fmnist_all') is None else format(r['fd_fmnist_all'], '.2f')} | {blocks} | "
            + (f"{r['class_consistency'] * 100:.1f} % | " if cond else "")
            + (f"{r['fd_base']:.2f} | {'' if r.get('fd_base_all') is None else format(r['fd_base_all'], '.2f')} | "
               if fidelity_n else "")
            + f"{r['seconds_per_image'] * 1e3:.2f} | {speed} | {r['base_passes_per_image']} | "
            f"{'yes' if i in front else ''} |")
    lines += ["", f"![FD-FMNIST vs ms per image, {regime}]({out_names['plot']})", ""]
    lines += [
        f"Step cost ({costs['batch']} images, {costs['rows']} rows, median of {costs['repeats']}): base forward "
        f"{costs['base_net_ms_per_image']:.3f} vs shortcut forward {costs['shortcut_net_ms_per_image']:.3f} ms/image "
        f"(network ratio {costs['network_ratio']:.1f}x); whole step (network + head on masked positions + sampling + "
        f"reveal) {costs['full_step_ms_per_image']:.3f} vs {costs['shortcut_step_ms_per_image']:.3f} ms/image, "
        f"**one shortcut step = 1/{costs['step_ratio']:.1f} of a full step**.", "", "Targets:", ""]
    for t in checks["same_n"]:
        noise = f"{t['noise']:.2f}" if t["noise"] is not None else "n/a"
        lines.append(f"- same N: `{t['shortcut']}` FD {t['fd_shortcut']:.2f} vs `{t['plain']}` {t['fd_plain']:.2f} "
                     f"({t['fd_rel'] * 100:+.1f} %; allowed +{SAME_N_TOLERANCE * 100:.0f} % or the block noise "
                     f"{noise}), {t['speedup']:.2f}x faster: **{'met' if t['met'] else 'not met'}**"
                     f"{'' if t['counts'] else ' (paper placement, for reference: the target counts the row below)'}.")
    for t in checks["equal_passes"]:
        noise = f"{t['noise']:.2f}" if t["noise"] is not None else "n/a"
        lines.append(f"- equal base passes: `{t['shortcut']}` FD {t['fd_shortcut']:.2f} vs `{t['plain']}` "
                     f"{t['fd_plain']:.2f} ({t['fd_rel'] * 100:+.1f} %; must be better by more than the block noise "
                     f"{noise}): **{'met' if t['met'] else 'not met'}**"
                     f"{'' if t['counts'] else ' (paper placement, for reference: the target counts the row below)'}.")
    best = checks["best_iso_quality"]
    if best:
        lines.append(f"- >= 2x faster than every plain setting of equal or better FD ({results[0]['fd_images']}-image "
                     f"column): **{'met' if checks['target_2x_met'] else 'not met'}**; best: `{best['shortcut']}` runs "
                     f"at {best['speedup']:.2f}x the speed of `{best['plain']}` ({best['note']}).")
    for t in checks.get("calibrated_vs_paper", []):
        noise = f"{t['noise']:.2f}" if t["noise"] is not None else "n/a"
        lines.append(f"- calibrated placement {t['placements']['calibrated']} vs the paper's "
                     f"{t['placements']['paper']} at the same N and B: FD {t['fd_shortcut']:.2f} vs {t['fd_plain']:.2f} "
                     f"({t['fd_rel'] * 100:+.1f} %, block noise {noise}): **{t['verdict']}**.")
    for t in checks.get("shortcut_vs_cache", []):
        noise = f"{t['noise']:.2f}" if t["noise"] is not None else "n/a"
        lines.append(f"- control: `{t['shortcut']}` vs `{t['plain']}` (training-free: the same full steps "
                     f"{t['full_step_indices']}, each skipped step reusing the last full step's feature): FD "
                     f"{t['fd_shortcut']:.2f} vs {t['fd_plain']:.2f} on {t['images']} images ({t['fd_rel'] * 100:+.1f} "
                     f"%, block noise {noise}{', scaled to that count' if t.get('noise_scaled') else ''}): the "
                     f"shortcut is **{t['verdict']}**.")
    if fidelity_n:
        floor = plain.get(fidelity_n)
        lines += ["", f"Fidelity to the base model: FD of each row's images to plain N={fidelity_n}'s own samples, "
                      f"drawn at seeds no row uses (not a target of the issue; lower = closer to what the base model "
                      f"samples with every step run; compared below on the {results[0]['fd_images']}-image column)"
                  + (f". Noise floor: plain N={fidelity_n} itself, {floor['fd_base']:.2f}." if floor else "."), ""]
        for t in checks.get("fidelity", []):
            twin = (f"at least as faithful as `{t['as_faithful_as']}` ({t['plain_fd_base']:.2f})"
                    if t["as_faithful_as"] else "less faithful than every plain row")
            line = f"- `{t['key']}` ({t['base_passes']} base passes): {t['fd_base']:.2f}, {twin}"
            for name, what in (("vs_cache", "the shortcut"), ("vs_paper", "the calibrated placement")):
                c = t.get(name)
                if c:
                    noise = f"{c['noise']:.2f}" if c["noise"] is not None else "n/a"
                    line += (f"; against `{c['other']}` on {c['images']} images: {c['fd']:.2f} vs "
                             f"{c['fd_other']:.2f} (block noise {noise}), {what} is **{c['verdict']}**")
            lines.append(line + ".")
    grids = [r for r in results if r.get("grid")]
    if grids:
        lines += ["", "Samples (the same seeds in every grid): " + ", ".join(
            f"[{r['label']}]({out_names['grid'].format(key=r['key'])})" for r in grids)]
    return lines + [""]


def write_markdown(path: Path, sections: dict, meta: dict) -> None:
    lines = [
        "# Fashion-MNIST embedded model: quality vs speed",
        "",
        f"Base model `{meta['migm']}` ({meta['base_params']:,} parameters), shortcut `{meta['shortcut']}` "
        f"({meta['shortcut_params']:,} parameters). Sampling settings: the model's own ({meta['options']}). "
        f"Same seeds for every setting; {meta['threads']} CPU thread(s), {meta['batch']} images per call, "
        f"{PRECISION_NAMES[meta['dtype']]}, all "
        f"settings interleaved chunk by chunk. FD-FMNIST: Frechet distance of the shipped classifier's 128-d "
        f"features against the 10,000 test images (lower is better; non-standard, not comparable with FID). FD is "
        f"biased upwards by small samples, so one column uses the same count (the first images, same seeds) in "
        f"every row: the Pareto plots and the 2x check use it. Headline rows have {meta['headline_images']} images "
        f"in two seed blocks; their FD on all images decides the same-N and equal-passes targets, and the gap "
        f"between their blocks is the noise those targets allow. Seconds: the sampling loop only (decoding adds "
        f"{meta['decode_ms']:.2f} ms/image to every row). Shortcut rows marked calibrated place their full steps "
        f"where the shortcut file says for that N and B, as the sampler does by default (placement 'auto') at "
        f"the sampling settings the placement was made at; the other shortcut rows place them as the paper "
        f"does.",
        "",
        *([meta["note"], ""] if meta.get("note") else []),
    ]
    refs = meta.get("reference_points")
    if refs:
        lines += [f"Reference points ({refs['images']} images): real training images FD {refs['real_fd']:.2f}; "
                  f"the same images through the tokenizer (encode + decode) FD {refs['recon_fd']:.2f}, the floor for "
                  f"any sampler of this tokenizer.", ""]
    for regime, body in sections.items():
        lines += body
    lines += ["## Reproduce", "", "```bash", *meta["commands"], "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


@torch.no_grad()
def reference_points(migm, classifier, ref, count: int) -> dict:
    """FD-FMNIST and class consistency of ``count`` real training images and of their
    reconstructions through the model's tokenizer: the floor a generator of this tokenizer can reach."""
    from training.fmnist.dataset import load_fmnist, to_tensor

    images, labels = load_fmnist("train")
    images, labels = images[:count], labels[:count]
    x = to_tensor(images)
    recon = torch.cat([migm.vqgan(x[i:i + 500])[0] for i in range(0, len(x), 500)])
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()  # (N, 1, H, W) -> (N, H, W)
    return {
        "images": count,
        "real_fd": round(fd_fmnist(images, classifier, ref), 3),
        "real_consistency": round(class_consistency(images, labels, classifier), 4),
        "recon_fd": round(fd_fmnist(recon, classifier, ref), 3),
        "recon_consistency": round(class_consistency(recon, labels, classifier), 4),
    }


def default_commands(migm, shortcut, command: str) -> list[str]:
    """Tokenizer, base model, shortcut (as their files record them), then this sweep."""
    out = recipe_commands(migm.info.get("commands", {}))
    short = shortcut.info.get("commands", shortcut.info.get("command", []))
    out += short if isinstance(short, list) else [short]
    return [*out, command]


def sample_grid(chunk: dict, regime: str, columns: int) -> Image.Image:
    images, classes = chunk["images"], chunk["classes"]
    if regime == "cond":
        columns = min(columns, *(int((classes == c).sum()) for c in range(10)))
        per_class = [images[classes == c][:columns] for c in range(10)]  # one row per class
        return image_grid(np.concatenate(per_class), columns, row_labels=list(CLASS_NAMES))
    return image_grid(images[:10 * columns], columns)


PRECISION_NAMES = {"fp32": "fp32 (the model as published)",
                   "bf16": "base model and shortcut in bf16 (the fidelity reference in fp32)"}


def precision(args) -> dict:
    """What a row made in another precision than fp32 records (nothing for fp32, so chunks made
    before the option existed stay valid)."""
    return {} if args.dtype == "fp32" else {"dtype": args.dtype}


def run_regime(regime: str, args, migm, shortcut, classifier, ref, settings: list[Setting], state_dir: Path,
               out_dir: Path, log, published=None) -> tuple[list[dict], dict, dict]:
    """``published``: the base model in fp32 for the fidelity reference when ``migm`` runs in another
    precision (default: ``migm``)."""
    headline = {s.strip() for s in args.headline.split(",") if s.strip()}
    uncovered = [s for s in settings if s.placement == "calibrated"
                 and calibrated_indices(shortcut, s.steps, s.full, regime) is None]
    if uncovered:  # it would sample at the paper's placement: the paper row again, under another name
        log(f"{regime}: skipped {', '.join(s.key for s in uncovered)}: the shortcut file has no placement for "
            f"{'that N, B' if len(uncovered) == 1 else 'those N, B'} in this regime")
        settings = [s for s in settings if s not in uncovered]
    wanted = {s.key: (args.headline_images if s.key in headline else args.images) for s in settings}
    n_chunks = {k: -(-n // args.batch) for k, n in wanted.items()}
    log(f"{regime}: {len(settings)} settings, {sum(n_chunks.values())} chunks of {args.batch}")

    costs_path = state_dir / regime / "step_costs.json"
    measured_on = {"migm": migm.fingerprint, "threads": args.threads,
                   "shortcut": fingerprint(shortcut.state_dict(), shortcut.config.to_dict()), **precision(args)}
    costs = json.loads(costs_path.read_text()) if costs_path.is_file() else None
    if costs is None or costs.get("measured_on") != measured_on or costs["batch"] != args.batch \
            or costs["repeats"] != args.cost_repeats:
        costs = {**step_costs(migm, shortcut, args.batch, args.cost_repeats, regime), "measured_on": measured_on}
        costs_path.parent.mkdir(parents=True, exist_ok=True)
        costs_path.write_text(json.dumps(costs, indent=1))
    log(f"{regime} step costs: {costs}")

    shortcut_fp = measured_on["shortcut"]
    for s in settings:
        made_by = {"migm": migm.fingerprint, "shortcut": None if s.plain or s.cache else shortcut_fp,
                   "batch": args.batch, "seed": args.seed, "options": migm.sampling_defaults, **precision(args)}
        if s.placement == "calibrated":  # the file's placement may change while its weights stay
            made_by["placement"] = calibrated_indices(shortcut, s.steps, s.full, regime)
        forget_chunks_made_otherwise(state_dir / regime / s.key, made_by, log)
    todo = [(chunk, s) for chunk in range(max(n_chunks.values())) for s in settings
            if chunk < n_chunks[s.key] and not chunk_path(state_dir, regime, s, chunk).is_file()]
    total = sum(n_chunks.values())
    bar = ProgressBar(total, desc=f"sweep {regime}", unit="chunk", start=total - len(todo))
    for chunk, s in todo:
        data = run_chunk(migm, shortcut, s, regime, chunk, args.batch, args.seed)
        save_chunk(chunk_path(state_dir, regime, s, chunk), data)
        bar.update(1, postfix=f"{s.label} {data['seconds'] / args.batch * 1e3:.1f} ms/image")
    bar.close()

    # as many of the base model's own samples as the largest row has
    base = (base_reference(published or migm, regime, args, max(wanted.values(), default=args.images), state_dir,
                           classifier, log) if args.fidelity_steps else None)
    results = []
    for s in settings:
        r = summarize(s, regime, load_chunks(state_dir, regime, s, n_chunks[s.key]), classifier, ref, args.images,
                      blocks=s.key in headline and wanted[s.key] >= 2 * args.batch, base=base)
        log(f"{regime} {s.label}: FD {r['fd_fmnist']:.3f} (all {r['fd_fmnist_all']}, blocks {r['fd_blocks']}), "
            f"{r['seconds_per_image'] * 1e3:.2f} ms/image")
        results.append(r)
    grid_keys = {g.strip() for g in args.grids.split(",") if g.strip()}
    for r, s in zip(results, settings):
        if r["key"] in grid_keys:
            chunk = dict(np.load(chunk_path(state_dir, regime, s, 0)))
            sample_grid(chunk, regime, args.grid_columns).save(out_dir / f"fmnist_samples_{regime}_{r['key']}.png")
            r["grid"] = True
    checks = targets(results)
    if base is not None:
        checks["fidelity"] = fidelity(results)
    return results, checks, costs


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # the note is prose about the results, not a setting: the reproduce line leaves it out
    shown = [a for i, a in enumerate(argv) if a != "--note" and not a.startswith("--note=")
             and (i == 0 or argv[i - 1] != "--note")]
    command = ("python -m training.fmnist.sweep " + shlex.join(shown)).strip()
    torch.set_num_threads(args.threads)
    state_dir, out_dir = Path(args.state_dir), Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(state_dir / "sweep.log")
    log(f"$ {command}")
    migm = load_migm(args.migm, dtype=args.dtype)
    shortcut = load_shortcut(args.shortcut, migm)
    published = load_migm(args.migm) if args.dtype != "fp32" and args.fidelity_steps else None
    classifier = load_classifier()
    ref = reference_stats(classifier)
    settings = parse_settings(args.plain, args.shortcut_settings, args.cache_settings)
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    for regime in regimes:
        regime_classes(regime, 1)  # refuses an unknown regime before any work

    report = {"regimes": {}}
    sections = {}
    for regime in regimes:
        results, checks, costs = run_regime(regime, args, migm, shortcut, classifier, ref, settings, state_dir,
                                            out_dir, log, published)
        plot_name = f"fmnist_sweep_{regime}.png"
        plot(results, out_dir / plot_name, f"Fashion-MNIST MaskGIT, {regime}: FD-FMNIST vs sampling time "
                                           f"({args.threads} CPU thread(s), {args.batch} images per call)")
        sections[regime] = regime_section(regime, results, checks, costs,
                                          {"plot": plot_name, "grid": f"fmnist_samples_{regime}_{{key}}.png"},
                                          args.fidelity_steps)
        report["regimes"][regime] = {"results": results, "targets": checks, "step_costs": costs}
        log(f"{regime} targets: same N {checks['target_same_n_met']}, equal passes "
            f"{checks['target_equal_passes_met']}, 2x {checks['target_2x_met']}")
    all_rows = [r for v in report["regimes"].values() for r in v["results"]]
    meta = {
        "migm": args.migm, "shortcut": args.shortcut, "options": migm.sampling_defaults, "threads": args.threads,
        "dtype": args.dtype,
        "batch": args.batch, "headline_images": args.headline_images,
        "base_params": sum(p.numel() for p in migm.model.parameters()),
        "shortcut_params": sum(p.numel() for p in shortcut.parameters()),
        "decode_ms": 1e3 * float(np.mean([r["decode_seconds_per_image"] for r in all_rows])),
        "commands": args.reproduce.split(";;") if args.reproduce else default_commands(migm, shortcut, command),
        "reference_points": reference_points(migm, classifier, ref, args.images), "note": args.note,
    }
    report["meta"] = meta
    write_markdown(out_dir / "fmnist_sweep.md", sections, meta)
    (out_dir / "fmnist_sweep.json").write_text(json.dumps(report, indent=1))
    log(f"wrote {out_dir / 'fmnist_sweep.md'}")
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.fmnist.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--migm", default=str(DEFAULT_MIGM), help="base model file")
    p.add_argument("--shortcut", default=str(DEFAULT_SHORTCUT), help="shortcut file for --migm")
    p.add_argument("--regimes", default="cond,uncond", help=f"comma list of: {', '.join(REGIMES)}")
    p.add_argument("--plain", default="2,3,4,6,8,12,16,24", help="plain sampling step counts N")
    p.add_argument("--shortcut-settings", default="8:1,8:2,8:4,16:2,16:3,16:4,16:6,16:8,24:3,24:4,24:6,24:12",
                   help="shortcut settings N:B (N in 8, 16, 24; B from N/8 to N/2)")
    p.add_argument("--cache-settings", default="16:4,24:6",
                   help="training-free controls N:B (trailing c: the shortcut file's calibrated placement): the "
                        "same steps skipped, each reusing the last full step's feature instead of the shortcut's")
    p.add_argument("--images", type=int, default=2000, help="images per setting (and the common FD count)")
    p.add_argument("--fidelity-steps", type=int, default=16,
                   help="also compare every row with plain sampling at this N, drawn at other seeds (the base "
                        "model's own samples: how faithfully a setting reproduces them); 0: off")
    p.add_argument("--headline", default="plain_N4,plain_N6,plain_N16,shortcut_N16_B4,shortcut_N24_B6,cache_N16_B4,"
                                          "cache_N24_B6",
                   help="settings that get --headline-images in two seed blocks (the target pairs)")
    p.add_argument("--headline-images", type=int, default=5000, help="images per headline setting")
    p.add_argument("--batch", type=int, default=500, help="images per generate() call (= one chunk, one seed)")
    p.add_argument("--seed", type=int, default=0, help="chunk k uses seed + k, the same for every setting")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="precision of the base model and shortcut for every row (the fidelity reference stays "
                        "fp32); give bf16 its own --state-dir")
    p.add_argument("--cost-repeats", type=int, default=7, help="repeats of the step-cost timing (median)")
    p.add_argument("--grids", default="plain_N4,plain_N16,shortcut_N16_B4", help="settings that get a sample grid")
    p.add_argument("--grid-columns", type=int, default=12, help="images per grid row")
    p.add_argument("--state-dir", default="runs/fmnist/sweep", help="per-chunk results (resumable)")
    p.add_argument("--out-dir", default="runs/fmnist/sweep/report",
                   help="where the report goes (docs/results for the published one)")
    p.add_argument("--note", default="", help="a paragraph printed above the tables")
    p.add_argument("--reproduce", default="", help="';;'-separated commands listed under 'Reproduce'")
    args = p.parse_args(argv)
    if args.fidelity_steps < 0:
        p.error(f"--fidelity-steps must be a step count >= 1, or 0 for off; got {args.fidelity_steps}")
    return args


if __name__ == "__main__":
    main()
