"""The pack's model folders in ComfyUI: ``migm``, ``migm_shortcut``, ``migm_vq``.

Each is searched in ``ComfyUI/models/<name>/``, in the places ``extra_model_paths.yaml``
names, and (for the first two) in this pack's own ``models/<name>/``, which holds the
embedded Fashion-MNIST default that is listed first. A Lumina-DiMOO checkpoint is a
folder (``config.json`` + weight shards), listed as ``<folder>/``; the shard files inside
it are not listed on their own.
"""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from .options import default_first

PACK_MODELS = Path(__file__).resolve().parents[1] / "models"
EXTENSIONS = {
    "migm": {".safetensors", ".pth"},
    "migm_shortcut": {".safetensors", ".pth"},
    "migm_vq": {".safetensors", ".ckpt", ".pth"},
}
DEFAULTS = {"migm": "fmnist_maskgit.safetensors", "migm_shortcut": "fmnist_shortcut.safetensors"}
VQ_BUNDLED = "(bundled)"
FOLDER_MARK = "/"  # suffix of a checkpoint-folder entry in the migm list
DIMOO_WEIGHTS = ("model.safetensors.index.json", "model.safetensors")


def register() -> None:
    """Add the folders and their extension filters, keeping paths extra_model_paths.yaml set."""
    for name, extensions in EXTENSIONS.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        if name in DEFAULTS:
            folder_paths.add_model_folder_path(name, str(PACK_MODELS / name))
        paths, _ = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def checkpoint_folders(name: str = "migm") -> list[str]:
    """Sub-folders holding a Lumina-DiMOO checkpoint (config.json and its weights), relative, '/'-separated."""
    found = set()
    for root in folder_paths.get_folder_paths(name):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if dirpath != root and "config.json" in filenames and any(w in filenames for w in DIMOO_WEIGHTS):
                found.add(Path(os.path.relpath(dirpath, root)).as_posix())
                dirnames[:] = []  # its vqvae/ holds a config.json too; the folder is one model
    return sorted(found)


def migm_choices() -> list[str]:
    """Base-model files and checkpoint folders, the embedded default first."""
    folders = checkpoint_folders("migm")
    files = [f for f in folder_paths.get_filename_list("migm")
             if not any(Path(f).as_posix().startswith(d + "/") for d in folders)]
    return default_first(files + [d + FOLDER_MARK for d in folders], DEFAULTS["migm"])


def shortcut_choices() -> list[str]:
    return default_first(folder_paths.get_filename_list("migm_shortcut"), DEFAULTS["migm_shortcut"])


def vq_choices() -> list[str]:
    return [VQ_BUNDLED, *folder_paths.get_filename_list("migm_vq")]


def resolve_migm(choice: str) -> Path:
    """Full path of a migm list entry: a file, or a checkpoint folder (entries ending in '/')."""
    if choice.endswith(FOLDER_MARK):
        relative = choice[: -len(FOLDER_MARK)]
        for root in folder_paths.get_folder_paths("migm"):
            candidate = Path(root) / relative
            if (candidate / "config.json").is_file():
                return candidate
        raise ValueError(f"migm_name: checkpoint folder {relative!r} is no longer in any migm model folder "
                         f"({', '.join(folder_paths.get_folder_paths('migm'))}); refresh the node list")
    return resolve("migm", choice, "migm_name")


def resolve(folder: str, choice: str, input_name: str) -> Path:
    """Full path of a file chosen from a model folder's list; a name that is not there (a shared
    workflow made elsewhere, a file removed since) is a named error, not a FileNotFoundError."""
    path = folder_paths.get_full_path(folder, choice)
    if path is None:
        raise ValueError(f"{input_name}: no file {choice!r} in the {folder} model folders "
                         f"({', '.join(folder_paths.get_folder_paths(folder))}); put it there or pick one from the "
                         f"list (press R to refresh it)")
    return Path(path)


def stamp(path: Path) -> float:
    """Modification time that changes when a file, or a checkpoint folder's files, are replaced."""
    if path.is_dir():
        return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir() if p.is_file()])
    return path.stat().st_mtime
