"""Renders the template thumbnails (workflows/<name>.jpg) from real outputs of the embedded model.

Each thumbnail uses its workflow's own settings (read from workflows/api/<name>.json) and
the library, as the nodes run them. Run again after the embedded model or shortcut change:

    .venv/bin/python workflows/make_thumbnails.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shortcut_core import generate, load_migm, load_shortcut  # noqa: E402
from training.data import Recording  # noqa: E402
from training.record import record_trajectories  # noqa: E402

WORKFLOWS = ROOT / "workflows"


def api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def node_inputs(graph: dict, class_type: str) -> list[dict]:
    return [n["inputs"] for _, n in sorted(graph.items(), key=lambda kv: int(kv[0])) if n["class_type"] == class_type]


def sampler_options(inputs: dict) -> dict:
    """cfg / sm_temp / r_temp as the node passes them: -1 is left out, so the model applies its own value."""
    return {k: inputs[k] for k in ("cfg", "sm_temp", "r_temp") if inputs[k] >= 0}


def sample(migm, shortcut, inputs: dict, condition: dict) -> list[Image.Image]:
    """A Shortcut Sampler's inputs with its MIGM Classes node's."""
    classes = [c for c in migm.resolve_classes(condition["classes"]).tolist()
               for _ in range(condition["images_per_class"])]
    result = generate(migm, classes, steps=inputs["steps"], full_steps=inputs["full_steps"] if shortcut else None,
                      shortcut=shortcut, seed=inputs["seed"], schedule=inputs["schedule"],
                      placement=inputs["placement"], **sampler_options(inputs))
    print(result.stats.report())
    return to_pil(result.images)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, H, W, 3) in [0, 1] -> PIL images."""
    return [Image.fromarray((im.numpy() * 255).round().clip(0, 255).astype("uint8")) for im in images]


def grid(rows: list[list[Image.Image]], cell: int, gap: int = 4, pad: int = 8) -> Image.Image:
    """Rows of images on white, each scaled (nearest neighbour) to cell x cell pixels."""
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (2 * pad + cols * cell + (cols - 1) * gap, 2 * pad + len(rows) * cell
                               + (len(rows) - 1) * gap), "white")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(im.resize((cell, cell), Image.NEAREST), (pad + j * (cell + gap), pad + i * (cell + gap)))
    return canvas


def recorded_finals(migm, inputs: dict, per_class: int) -> list[list[Image.Image]]:
    """Rows of final images of the trajectories the record workflow writes (one column per class)."""
    classes = migm.resolve_classes(inputs["classes"]).tolist()
    count = len(classes) * inputs["count_per_class"]
    with tempfile.TemporaryDirectory() as tmp:
        result = record_trajectories(
            migm, Path(tmp) / "traj", count=count, classes=classes, steps=inputs["steps"] or None,
            schedule=inputs["schedule"], batch_size=inputs["batch_size"] or None, seed=inputs["seed"],
            show_progress=False, log=lambda message: None, **sampler_options(inputs))
        print(result.report())
        recording = Recording(Path(tmp) / "traj")
        shards = [recording.load(k) for k in range(len(recording.shards))]
    finals = torch.cat([s["final_ids"] for s in shards]).long()
    conditions = torch.cat([s["cond.condition"] for s in shards]).tolist()
    side = migm.config.grid
    with torch.inference_mode():
        images = to_pil(migm.decode_tokens(finals.reshape(-1, side, side)))
    columns = [[im for im, c in zip(images, conditions) if c == k][:per_class] for k in sorted(set(conditions))]
    return [list(row) for row in zip(*columns)]


def main() -> None:
    torch.set_num_threads(1)
    migm = load_migm(ROOT / "models/migm/fmnist_maskgit.safetensors")
    shortcut = load_shortcut(ROOT / "models/migm_shortcut/fmnist_shortcut.safetensors", migm)

    graph = api("migm_shortcut_generate")
    (inputs,), (condition,) = node_inputs(graph, "MIGMShortcutSampler"), node_inputs(graph, "MIGMClasses")
    images = sample(migm, shortcut, inputs, condition)
    grid([images[:5], images[5:10]], 96).save(WORKFLOWS / "migm_shortcut_generate.jpg", quality=92)

    graph = api("migm_shortcut_vs_plain")
    plain, fast = node_inputs(graph, "MIGMShortcutSampler")  # node 3 plain, node 4 shortcut
    (condition,) = node_inputs(graph, "MIGMClasses")  # one condition for both
    rows = [sample(migm, None, plain, condition), sample(migm, shortcut, fast, condition)]
    grid(rows, 56).save(WORKFLOWS / "migm_shortcut_vs_plain.jpg", quality=92)

    (inputs,) = node_inputs(api("migm_record_trajectories"), "MIGMRecordTrajectories")
    grid(recorded_finals(migm, inputs, per_class=4), 56).save(WORKFLOWS / "migm_record_trajectories.jpg",
                                                              quality=92)


if __name__ == "__main__":
    main()
