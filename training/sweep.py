"""Quality-speed sweep of the embedded Fashion-MNIST model: plain sampling vs the shortcut.

For every setting (plain N, or shortcut N/B) it generates class-balanced images in large
batches and measures, with the shipped classifier, FD-FMNIST against the test split and
class consistency, plus sampling seconds per image and base forward passes per image.

Timing is fair by construction: the work is split into chunks (one ``--batch`` of images,
one seed) and every chunk runs all pending settings back to back, so plain and shortcut
are measured side by side under the same machine load. Each finished chunk is saved
(``--state-dir``), so an interrupted sweep resumes where it stopped; a setting's JSON is
written when its last chunk is done. Two processes given disjoint ``--plain`` /
``--shortcut-settings`` lists and the same state dir fill it in parallel (one core each);
a last run with the full lists reuses every chunk and writes the report.

    python -m training.sweep                        # the published table (see --help)
    python -m training.sweep --images 500 --headline-images 500 --state-dir runs/try

Writes ``docs/results/fmnist_sweep.md`` (table + target checks), ``fmnist_sweep.json``,
``fmnist_sweep.png`` (FD-FMNIST vs seconds/image, Pareto front marked) and sample grids.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from shortcut_core import fingerprint, generate, load_migm, load_shortcut
from training.classifier import load_classifier
from training.fd import class_consistency, fd_fmnist, reference_stats
from training.fmnist import CLASS_NAMES
from training.train_tokenizer import Log

DEFAULT_MIGM = Path("models/migm/fmnist_maskgit.safetensors")
DEFAULT_SHORTCUT = Path("models/migm_shortcut/fmnist_shortcut.safetensors")


@dataclass(frozen=True)
class Setting:
    steps: int
    full: int  # B; == steps for plain sampling

    @property
    def plain(self) -> bool:
        return self.full == self.steps

    @property
    def key(self) -> str:
        return f"plain_N{self.steps}" if self.plain else f"shortcut_N{self.steps}_B{self.full}"

    @property
    def label(self) -> str:
        return f"plain N={self.steps}" if self.plain else f"shortcut N={self.steps} B={self.full}"


def parse_settings(plain: str, shortcut: str) -> list[Setting]:
    """"4,8" and "16:3,16:5" -> settings (plain first)."""
    out = [Setting(int(n), int(n)) for n in plain.split(",") if n.strip()]
    for item in shortcut.split(","):
        if item.strip():
            n, b = item.split(":")
            if not 1 <= int(b) < int(n):
                raise ValueError(f"shortcut setting {item!r}: need 1 <= B < N")
            out.append(Setting(int(n), int(b)))
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) float in [0, 1] -> (B, H, W) uint8 gray."""
    return (images[..., 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def balanced_classes(batch: int, num_classes: int = 10) -> list[int]:
    return [i % num_classes for i in range(batch)]


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
        color = (30, 90, 200) if r["plain"] else (230, 120, 20)
        if r["plain"]:
            d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color)
            text = f"N{r['steps']}"
        else:
            d.rectangle([x - 5, y - 5, x + 5, y + 5], fill=color)
            text = f"{r['steps']}/{r['full_steps']}"
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
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def step_costs(migm, shortcut, batch: int, repeats: int, seed: int = 0) -> dict:
    """Seconds of one full step and one shortcut step on ``batch`` images (guided: 2*batch rows).

    Network only (base forward vs shortcut forward) and whole step (+ head, sampling,
    reveal), interleaved so machine load hits both alike; medians over ``repeats``.
    """
    options = migm.info.get("sampling_defaults", {})
    steps = 8
    gen = torch.Generator().manual_seed(seed)
    state = migm.start(balanced_classes(batch), steps=steps, generator=gen, **options)
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
        "batch": batch, "rows": feats.shape[0], "repeats": repeats,
        **{f"{k}_ms_per_image": round(v / batch * 1e3, 4) for k, v in med.items()},
        "network_ratio": round(med["base_net"] / med["shortcut_net"], 2),
        "step_ratio": round(med["full_step"] / med["shortcut_step"], 2),
    }


def run_chunk(migm, shortcut, setting: Setting, chunk: int, batch: int, seed: int, options: dict) -> dict:
    classes = balanced_classes(batch)
    result = generate(migm, classes, steps=setting.steps, full_steps=None if setting.plain else setting.full,
                      shortcut=None if setting.plain else shortcut, seed=seed + chunk, **options)
    return {"images": to_uint8(result.images), "classes": np.asarray(classes), "seconds": result.stats.seconds,
            "decode_seconds": result.stats.decode_seconds, "base_passes": result.stats.base_passes,
            "full_step_indices": result.stats.full_step_indices}


def chunk_path(state_dir: Path, setting: Setting, chunk: int) -> Path:
    return state_dir / setting.key / f"chunk_{chunk:03d}.npz"


def save_chunk(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=data["images"], classes=data["classes"], seconds=data["seconds"],
             decode_seconds=data["decode_seconds"], base_passes=data["base_passes"],
             full_step_indices=np.asarray(data["full_step_indices"]))
    tmp.replace(path)


def summarize(setting: Setting, chunks: list[dict], classifier, ref, common: int) -> dict:
    """``fd_fmnist`` uses the first ``common`` images (same count and seeds in every row: FD is
    biased by the count); ``fd_fmnist_all`` uses every image of a headline setting."""
    images = np.concatenate([c["images"] for c in chunks])
    classes = np.concatenate([c["classes"] for c in chunks])
    seconds = float(sum(float(c["seconds"]) for c in chunks))
    return {
        "key": setting.key, "label": setting.label, "plain": setting.plain, "steps": setting.steps,
        "full_steps": setting.full, "images": int(len(images)),
        "full_step_indices": [int(i) for i in np.asarray(chunks[0]["full_step_indices"])],
        "fd_fmnist": round(fd_fmnist(images[:common], classifier, ref), 4),
        "fd_images": int(min(common, len(images))),
        "fd_fmnist_all": round(fd_fmnist(images, classifier, ref), 4) if len(images) > common else None,
        "class_consistency": round(class_consistency(images, classes, classifier), 4),
        "seconds_per_image": seconds / len(images),
        "decode_seconds_per_image": float(sum(float(c["decode_seconds"]) for c in chunks)) / len(images),
        "base_passes_per_image": int(chunks[0]["base_passes"]),
        "chunk_seconds": [round(float(c["seconds"]), 3) for c in chunks],
    }


# --------------------------------------------------------------------------- report


def targets(results: list[dict]) -> dict:
    plain = {r["steps"]: r for r in results if r["plain"]}
    shortcut = [r for r in results if not r["plain"]]
    iso = []
    for s in shortcut:
        better = [p for p in plain.values() if p["fd_fmnist"] <= s["fd_fmnist"]]
        if better:
            ref = min(better, key=lambda p: p["seconds_per_image"])
            note = "fastest plain setting with equal or better FD"
        else:
            ref = min(plain.values(), key=lambda p: p["fd_fmnist"])
            note = "no plain setting reaches this FD; compared with the best plain FD"
        iso.append({"shortcut": s["key"], "plain": ref["key"], "speedup": ref["seconds_per_image"] / s["seconds_per_image"],
                    "note": note})
    best_iso = max(iso, key=lambda t: t["speedup"]) if iso else None
    same_n = []
    for s in shortcut:
        p = plain.get(s["steps"])
        if p is None or s["full_steps"] * 3 > s["steps"]:
            continue
        same_n.append({"shortcut": s["key"], "plain": p["key"],
                       "fd_rel": s["fd_fmnist"] / p["fd_fmnist"] - 1,
                       "cc_diff": s["class_consistency"] - p["class_consistency"],
                       "speedup": p["seconds_per_image"] / s["seconds_per_image"]})
    return {
        "iso_quality": iso, "best_iso_quality": best_iso,
        "target_2x_met": bool(best_iso and best_iso["speedup"] >= 2),
        "same_n_b_le_n3": same_n,
        "target_5pct_met": any(t["fd_rel"] <= 0.05 for t in same_n),
    }


def write_markdown(path: Path, results: list[dict], checks: dict, costs: dict | None, meta: dict) -> None:
    plain = {r["steps"]: r for r in results if r["plain"]}
    front = set(pareto_front([(r["seconds_per_image"], r["fd_fmnist"]) for r in results]))
    lines = [
        "# Fashion-MNIST embedded model: quality vs speed",
        "",
        f"Base model `{meta['migm']}` ({meta['base_params']:,} parameters), shortcut `{meta['shortcut']}` "
        f"({meta['shortcut_params']:,} parameters). Sampling: {meta['options']}. Classes balanced, same seeds "
        f"for every setting; {meta['threads']} CPU thread(s), {meta['batch']} images per call, all settings "
        f"interleaved chunk by chunk. FD-FMNIST: Frechet distance of the shipped classifier's 128-d features "
        f"against the 10,000 test images (lower is better). FD is biased upwards by small samples, so every "
        f"row's FD uses the same count (the first images, same seeds); the targets and the plot use that "
        f"column, and headline rows also show the FD of all their images. "
        f"Class consistency (all images): fraction classified as the requested class. "
        f"Seconds: the sampling loop only (decoding, the same for every row, is "
        f"{meta['decode_ms']:.2f} ms/image extra). Speed-up: plain at the same N / this row.",
        "",
        *([meta["note"], ""] if meta.get("note") else []),
        f"| setting | N | B | images | FD-FMNIST ({results[0]['fd_images']} images) | FD-FMNIST (all images) | "
        f"class consistency | ms / image | speed-up vs plain same N | base passes / image | Pareto |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results):
        p = plain.get(r["steps"])
        speed = f"{p['seconds_per_image'] / r['seconds_per_image']:.2f}x" if p else "-"
        lines.append(
            f"| {r['label']} | {r['steps']} | {r['full_steps']} | {r['images']} | {r['fd_fmnist']:.3f} | "
            f"{'' if r.get('fd_fmnist_all') is None else format(r['fd_fmnist_all'], '.3f')} | "
            f"{r['class_consistency'] * 100:.1f} % | {r['seconds_per_image'] * 1e3:.2f} | {speed} | "
            f"{r['base_passes_per_image']} | {'yes' if i in front else ''} |")
    lines += ["", "![FD-FMNIST vs ms per image](fmnist_sweep.png)", ""]
    refs = meta.get("reference_points")
    noisy = [r for r in results if r.get("fd_fmnist_second_block") is not None]
    if refs or noisy:
        lines += ["## How to read the FD column", ""]
    if refs:
        lines.append(
            f"- Reference points ({refs['images']} images): real training images FD {refs['real_fd']:.3f} "
            f"(consistency {refs['real_consistency'] * 100:.1f} %); the same images through the tokenizer "
            f"(encode + decode) FD {refs['recon_fd']:.3f} (consistency {refs['recon_consistency'] * 100:.1f} %). "
            f"The tokenizer's reconstruction FD is the floor for any sampler of this model.")
    for r in noisy:
        lines.append(
            f"- Sampling noise: `{r['key']}` on two disjoint blocks of {r['fd_images']} images (different seeds): "
            f"FD {r['fd_fmnist']:.3f} and {r['fd_fmnist_second_block']:.3f}. Differences of that size between "
            f"rows are noise.")
    if refs or noisy:
        lines.append("")
    if costs:
        lines += [
            "## Step cost",
            "",
            f"Measured on {costs['batch']} images ({costs['rows']} rows with guidance), median of {costs['repeats']}: "
            f"base forward {costs['base_net_ms_per_image']:.3f} ms/image vs shortcut forward "
            f"{costs['shortcut_net_ms_per_image']:.3f} ms/image, **network ratio {costs['network_ratio']:.1f}x**; "
            f"whole step (network + head on masked positions + sampling + reveal) "
            f"{costs['full_step_ms_per_image']:.3f} vs {costs['shortcut_step_ms_per_image']:.3f} ms/image, "
            f"**step ratio {costs['step_ratio']:.1f}x**, timed at step 1 of 8, where the most positions are "
            f"still masked (the costliest head and sampling of a run). With it, N steps of which B are full "
            f"are expected to take N / (B + (N - B) / ratio) times less than plain sampling.",
            "",
        ]
    best = checks["best_iso_quality"]
    lines += ["## Targets", ""]
    if best:
        lines.append(
            f"- Shortcut >= 2x faster than the plain setting of equal or better FD-FMNIST: "
            f"**{'met' if checks['target_2x_met'] else 'not met'}**; best: `{best['shortcut']}` runs at "
            f"{best['speedup']:.2f}x the speed of `{best['plain']}` ({best['note']}).")
    for t in checks["same_n_b_le_n3"]:
        lines.append(
            f"- `{t['shortcut']}` (B <= N/3) vs `{t['plain']}`: FD {t['fd_rel'] * 100:+.1f} %, class consistency "
            f"{t['cc_diff'] * 100:+.1f} points, {t['speedup']:.2f}x faster "
            f"({'within' if t['fd_rel'] <= 0.05 else 'outside'} 5 % on FD).")
    lines.append(f"- Shortcut with B <= N/3 within 5 % of plain at the same N (FD-FMNIST): "
                 f"**{'met' if checks['target_5pct_met'] else 'not met'}**.")
    lines += ["", "## Samples", "",
              "Rows: classes; the same seeds in every grid. " +
              ", ".join(f"[{r['label']}](fmnist_samples_{r['key']}.png)" for r in results if r.get("grid")),
              "", "## Reproduce", "", "```bash", *meta["commands"], "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


@torch.no_grad()
def reference_points(migm, classifier, ref, count: int) -> dict:
    """FD-FMNIST and class consistency of ``count`` real training images and of their
    reconstructions through the model's tokenizer: the floor a generator of this tokenizer can reach."""
    from training.fmnist import load_fmnist, to_tensor

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
    made = migm.info.get("commands", {})
    out = [made[k] for k in ("tokenizer", "maskgit", "maskgit_grown") if k in made]
    short = shortcut.info.get("commands", shortcut.info.get("command", []))
    out += short if isinstance(short, list) else [short]
    return [*out, command]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = ("python -m training.sweep " + shlex.join(argv)).strip()
    torch.set_num_threads(args.threads)
    state_dir, out_dir = Path(args.state_dir), Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(state_dir / "sweep.log")
    log(f"$ {command}")
    migm = load_migm(args.migm)
    shortcut = load_shortcut(args.shortcut, migm)
    options = dict(migm.info.get("sampling_defaults", {}))
    classifier = load_classifier()
    ref = reference_stats(classifier)
    settings = parse_settings(args.plain, args.shortcut_settings)
    headline = {s.strip() for s in args.headline.split(",") if s.strip()}
    wanted = {s.key: (args.headline_images if s.key in headline else args.images) for s in settings}
    n_chunks = {k: -(-n // args.batch) for k, n in wanted.items()}
    log(f"{len(settings)} settings, {sum(n_chunks.values())} chunks of {args.batch}; options {options}")

    costs_path = state_dir / "step_costs.json"
    measured_on = {"migm": migm.fingerprint, "threads": args.threads,
                   "shortcut": fingerprint(shortcut.state_dict(), shortcut.config.to_dict())}
    costs = json.loads(costs_path.read_text()) if costs_path.is_file() else None
    if costs is None or costs.get("measured_on") != measured_on or costs["batch"] != args.batch \
            or costs["repeats"] != args.cost_repeats:
        costs = {**step_costs(migm, shortcut, args.batch, args.cost_repeats), "measured_on": measured_on}
        costs_path.write_text(json.dumps(costs, indent=1))
    log(f"step costs: {costs}")

    results_dir = state_dir / "results"
    start = time.perf_counter()
    for chunk in range(max(n_chunks.values())):
        for s in settings:
            path = chunk_path(state_dir, s, chunk)
            if chunk >= n_chunks[s.key] or path.is_file():
                continue
            data = run_chunk(migm, shortcut, s, chunk, args.batch, args.seed, options)
            save_chunk(path, data)
            log(f"chunk {chunk} {s.label}: {data['seconds'] / args.batch * 1e3:.2f} ms/image, "
                f"{time.perf_counter() - start:.0f}s elapsed")
            if chunk == n_chunks[s.key] - 1:
                chunks = [dict(np.load(chunk_path(state_dir, s, k))) for k in range(n_chunks[s.key])]
                summary = summarize(s, chunks, classifier, ref, args.images)
                results_dir.mkdir(parents=True, exist_ok=True)
                (results_dir / f"{s.key}.json").write_text(json.dumps(summary, indent=1))
                log(f"done {s.label}: FD {summary['fd_fmnist']:.3f}, consistency {summary['class_consistency']:.3f}, "
                    f"{summary['seconds_per_image'] * 1e3:.2f} ms/image")

    results = []
    for s in settings:
        saved = results_dir / f"{s.key}.json"
        r = json.loads(saved.read_text()) if saved.is_file() else None
        # Missing (stopped between its last chunk and its JSON) or made with other counts: from the chunks.
        if r is None or r["images"] != wanted[s.key] or r["fd_images"] != min(args.images, wanted[s.key]):
            chunks = [dict(np.load(chunk_path(state_dir, s, k))) for k in range(n_chunks[s.key])]
            r = summarize(s, chunks, classifier, ref, args.images)
        results.append(r)
    grid_keys = {s.strip() for s in args.grids.split(",") if s.strip()}
    for r, s in zip(results, settings):
        if r["key"] in grid_keys:
            data = np.load(chunk_path(state_dir, s, 0))
            images, classes = data["images"], data["classes"]
            columns = min(args.grid_columns, *(int((classes == c).sum()) for c in range(10)))
            per_class = [images[classes == c][:columns] for c in range(10)]  # one row per class
            grid = image_grid(np.concatenate(per_class), columns, row_labels=list(CLASS_NAMES))
            grid.save(out_dir / f"fmnist_samples_{r['key']}.png")
            r["grid"] = True
    refs = reference_points(migm, classifier, ref, args.images)
    for r, s in zip(results, settings):
        if r["images"] >= 2 * args.images:  # FD noise: the same setting on a disjoint second block
            chunks = [dict(np.load(chunk_path(state_dir, s, k))) for k in range(n_chunks[s.key])]
            images = np.concatenate([c["images"] for c in chunks])
            r["fd_fmnist_second_block"] = round(fd_fmnist(images[args.images:2 * args.images], classifier, ref), 4)
    checks = targets(results)
    plot(results, out_dir / "fmnist_sweep.png",
         f"Fashion-MNIST MaskGIT: FD-FMNIST vs sampling time ({args.threads} CPU thread(s), {args.batch} images per call)")
    meta = {
        "migm": args.migm, "shortcut": args.shortcut, "options": options, "threads": args.threads, "batch": args.batch,
        "base_params": sum(p.numel() for p in migm.model.parameters()),
        "shortcut_params": sum(p.numel() for p in shortcut.parameters()),
        "decode_ms": 1e3 * float(np.mean([r["decode_seconds_per_image"] for r in results])),
        "commands": args.reproduce.split(";;") if args.reproduce else default_commands(migm, shortcut, command),
    }
    meta["reference_points"] = refs
    meta["note"] = args.note
    write_markdown(out_dir / "fmnist_sweep.md", results, checks, costs, meta)
    (out_dir / "fmnist_sweep.json").write_text(json.dumps({"results": results, "targets": checks, "step_costs": costs,
                                                           "meta": meta}, indent=1))
    log(f"wrote {out_dir / 'fmnist_sweep.md'}; targets: 2x {checks['target_2x_met']}, 5% {checks['target_5pct_met']}")
    return {"results": results, "targets": checks, "step_costs": costs}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--migm", default=str(DEFAULT_MIGM))
    p.add_argument("--shortcut", default=str(DEFAULT_SHORTCUT))
    p.add_argument("--plain", default="2,3,4,6,8,12,16,24", help="plain sampling step counts N")
    p.add_argument("--shortcut-settings", default="4:1,4:2,6:2,8:2,8:3,16:3,16:4,16:5,16:8,24:3,24:4,24:6,24:8,24:12",
                   help="shortcut settings N:B")
    p.add_argument("--images", type=int, default=2000, help="images per setting")
    p.add_argument("--headline", default="plain_N16,shortcut_N16_B4", help="settings that get --headline-images")
    p.add_argument("--headline-images", type=int, default=5000)
    p.add_argument("--batch", type=int, default=500, help="images per generate() call (= one chunk)")
    p.add_argument("--seed", type=int, default=0, help="chunk k uses seed + k, the same for every setting")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cost-repeats", type=int, default=7)
    p.add_argument("--grids", default="plain_N16,shortcut_N16_B4,plain_N24,shortcut_N24_B6",
                   help="settings that get a sample grid")
    p.add_argument("--grid-columns", type=int, default=12)
    p.add_argument("--state-dir", default="runs/fmnist/sweep", help="per-chunk results (resumable)")
    p.add_argument("--out-dir", default="docs/results")
    p.add_argument("--note", default="", help="a paragraph printed above the table")
    p.add_argument("--reproduce", default="", help="';;'-separated commands listed under 'Reproduce'")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
