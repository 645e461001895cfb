"""The trajectory format: a folder of safetensors shards plus ``manifest.json``.

A trajectory is one plain sampling run of the base model at ``steps`` = N_train steps.
Shard ``shard-{j:06d}.safetensors`` holds trajectories ``first .. first+count-1`` (global
indices) and, for every guidance branch ``b`` (``cond``, and ``uncond`` with guidance):

| tensor | shape | dtype | meaning |
|---|---|---|---|
| ``{b}.features`` | (n, N, T, C) | float16 / bfloat16 | feature computed *at* step i, before step i's reveal |
| ``{b}.revealed_at`` | (n, T) | int16 | step that revealed each sequence position, -1 never |
| ``{b}.condition`` | (n,) | int64 | condition of that branch (MaskGIT: class index, "no class" for uncond) |
| ``final_ids`` | (n, L) | int32 | final image code ids (L image tokens, row-major) |
| ``index`` | (n,) | int64 | global trajectory index |
| ``seed`` | (n,) | int64 | sampler seed of the batch the trajectory was drawn in |

Lumina-DiMOO adds, per branch, ``{b}.ids`` (n, T) int32 (the branch's final sequence: prompt
token ids, specials, image vocab ids), ``{b}.length`` and ``{b}.prefix_len`` (n,) int32 (valid
sequence length, tokens before BOA); its ``features``, ``revealed_at`` and ``ids`` are right
padded to the longest prompt of the recording (``training/pairs.py::DIMOO_LAYOUT``).

Each shard's safetensors metadata repeats ``first``, ``count``, the base fingerprint and
a sha256 ``checksum`` over its tensors, so a shard checks itself. Shards are written to a
temporary name and renamed, so a shard file that exists is complete. The manifest
(written atomically too) describes the whole recording; see :func:`manifest_fields`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open

from shortcut_core.checkpoints import TMP_SUFFIX, write_safetensors_atomic

FORMAT = "migm-shortcut-trajectories"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"^shard-(\d{6})\.safetensors$")
FEATURE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
META_KEYS = ("format", "version", "first", "count", "fingerprint", "checksum")


class ShardError(RuntimeError):
    """A shard that cannot be used; the message names the file and the remedy."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"trajectory shard {self.path} is damaged: {reason}. Delete it and run "
            f"`python -m training.record --resume --out {self.path.parent}` to record it again, "
            f"or pass --skip-bad-shards to train without it"
        )


class ManifestError(RuntimeError):
    """A data folder that is not a usable recording."""


def feature_dtype(name: str) -> torch.dtype:
    key = DTYPE_ALIASES.get(str(name).lower())
    if key is None:
        raise ValueError(f"feature dtype {name!r} is not supported; use fp16 or bf16")
    return FEATURE_DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def shard_name(j: int) -> str:
    return f"shard-{j:06d}.safetensors"


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_shard(path, tensors: dict[str, torch.Tensor], *, first: int, count: int, fingerprint: str) -> dict:
    """Write one shard atomically (temporary file, fsync, rename); returns its manifest entry."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    checksum = tensors_checksum(tensors)
    meta = {"format": FORMAT, "version": str(VERSION), "first": str(first), "count": str(count),
            "fingerprint": fingerprint, "checksum": checksum}
    write_safetensors_atomic(path, tensors, meta)
    return {"file": path.name, "first": first, "count": count, "bytes": path.stat().st_size, "checksum": checksum}


def read_shard_header(path) -> dict:
    """Metadata and tensor shapes/dtypes without reading the data; ShardError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(path, "the file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:  # safetensors reports truncation and garbage headers here
        raise ShardError(path, f"it is not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ShardError(path, f"it is not a trajectory shard (format {meta.get('format')!r})")
    try:
        entry = {"file": path.name, "first": int(meta["first"]), "count": int(meta["count"]),
                 "bytes": path.stat().st_size, "checksum": meta["checksum"], "fingerprint": meta["fingerprint"]}
    except (KeyError, ValueError) as exc:
        raise ShardError(path, f"its metadata is incomplete ({exc})") from None
    entry["shapes"] = shapes
    return entry


def check_shard_entry(root, entry: dict, manifest: dict) -> None:
    """Cheap check of a listed shard: readable header, size, count, fingerprint, tensor shapes."""
    path = Path(root) / entry["file"]
    header = read_shard_header(path)
    if header["bytes"] != entry["bytes"]:
        raise ShardError(path, f"it is {header['bytes']} bytes but the manifest lists {entry['bytes']} (truncated?)")
    if header["first"] != entry["first"] or header["count"] != entry["count"] or header["checksum"] != entry["checksum"]:
        raise ShardError(path, "its header does not match the manifest entry (was it replaced by another recording?)")
    if header["fingerprint"] != manifest["base_fingerprint"]:
        raise ShardError(path, f"it was recorded from base model {header['fingerprint']}, not {manifest['base_fingerprint']}")
    n = entry["count"]
    steps = manifest["steps"]
    for b in manifest["branches"]:
        seq, dim = manifest["feature_shapes"][b]
        shape, _ = header["shapes"].get(f"{b}.features", (None, None))
        if shape != (n, steps, seq, dim):
            raise ShardError(path, f"{b}.features has shape {shape}, expected {(n, steps, seq, dim)}")


def load_shard(path, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a shard on the CPU; with ``verify`` the checksum is recomputed."""
    path = Path(path)
    header = read_shard_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ShardError(path, f"its data could not be read ({exc})") from None
    if verify and tensors_checksum(tensors) != header["checksum"]:
        raise ShardError(path, "its data does not match its checksum (corrupted on disk)")
    if int(tensors["index"].shape[0]) != header["count"]:
        raise ShardError(path, f"it holds {tensors['index'].shape[0]} trajectories, its header says {header['count']}")
    return tensors


def write_json_atomic(path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "w") as f:
            f.write(dumps_readable(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def dumps_readable(data: dict) -> str:
    """JSON with one top-level field per line and one list item (e.g. a shard entry) per line."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = ",\n".join("  " + json.dumps(v) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def read_manifest(root) -> dict:
    """The manifest of a recording folder, with a clear error when it is not one."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{root} holds no {MANIFEST}: it is not a trajectory recording; record one with "
            f"`python -m training.record --migm BASE --out {root} ...`"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}). The recording's settings live only in it, so it "
                            f"cannot be rebuilt from the shards (they are intact): restore it from a copy, or "
                            f"record into a new folder") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{path} is not a {FORMAT} manifest (format {found!r})")
    if int(manifest.get("version", 0)) > VERSION:
        raise ManifestError(f"{path} has format version {manifest.get('version')}; this code reads up to {VERSION}")
    return manifest


def bytes_per_trajectory(feature_shapes: dict[str, list[int]], steps: int, num_image_tokens: int, dtype: torch.dtype) -> int:
    """Stored bytes of one trajectory (all branches), safetensors headers aside."""
    item = torch.empty((), dtype=dtype).element_size()
    total = num_image_tokens * 4 + 16  # final ids (int32), index and seed
    for seq, dim in feature_shapes.values():
        total += steps * seq * dim * item + seq * 2 + 8  # features, revealed_at (int16), condition
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def manifest_fields() -> dict[str, str]:
    """What each manifest field means (also printed in training/README.md)."""
    return {
        "format, version": f"{FORMAT!r}, {VERSION}",
        "family": "model family of the base (maskgit or dimoo)",
        "base_fingerprint": "shortcut_core.checkpoints.fingerprint of the base model's weights and config",
        "base": "name, family and config of the base model",
        "steps": "N_train: sampling steps per trajectory",
        "reveal_counts": "tokens revealed at each step (same for every trajectory)",
        "sampler": "sampler options (schedule, cfg, sm_temp, r_temp, randomize)",
        "branches": "guidance branches stored per trajectory, e.g. ['cond', 'uncond']",
        "feature_shapes": "branch -> [T, C]: sequence length and feature width",
        "feature_dtype": "float16 or bfloat16",
        "num_image_tokens": "L: image positions (the first L sequence positions for maskgit; where revealed_at >= 0 "
                            "for dimoo)",
        "conditions": "how trajectory i's condition is chosen (classes or prompts, cycled by i)",
        "image_grid, image_offset, pad_id, layout": "dimoo only: token grid, image vocab offset, padding id and a "
                                                    "description of the padded per-branch layout",
        "seed, batch_size, shard_size": "the run seed; trajectory i's batch seed derives from (seed, i // batch_size)",
        "num_trajectories, num_shards": "planned totals",
        "shards": "list of {file, first, count, bytes, checksum} for every completed shard",
        "counts": "trajectories, shards, pairs and bytes actually on disk",
        "complete": "true once every planned shard is on disk",
        "command, created, updated, software": "provenance",
    }
