"""Runs ComfyUI's own main.py in this process, after the one shim a CPU machine needs.

    python tests/host/launcher.py --cpu --listen 127.0.0.1 --port 8188 --disable-auto-launch

Every argument goes to main.py unchanged. The ComfyUI tree is the one that
scripts/setup_comfyui.sh extracts into .cache/comfyui/ (or $MIGM_COMFYUI_DIR).

Why a shim: the ComfyUI core imports torchvision at start (comfy/sd.py ->
comfy/ldm/cascade/stage_c_coder.py), and the only torchvision wheels on PyPI are CUDA
builds whose compiled operators do not load next to a CPU torch. torchvision then fails
at import with "operator torchvision::nms does not exist", because its meta registrations
for nms and qnms run even when its compiled library is missing. Defining those two
operator schemas (no kernels) right before that point lets the pure-Python parts
(transforms) import. Where torchvision's compiled library does load, nothing is changed.
"""

from __future__ import annotations

import importlib.abc
import os
import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMFYUI_DIR_ENV = "MIGM_COMFYUI_DIR"

_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def comfyui_dir() -> Path:
    return Path(os.environ.get(COMFYUI_DIR_ENV) or REPO_ROOT / ".cache" / "comfyui")


class _TorchvisionOpsShim(importlib.abc.MetaPathFinder):
    """Defines torchvision's nms/qnms schemas just before torchvision._meta_registrations
    runs, and only when torchvision.extension could not load the compiled operators."""

    _target = "torchvision._meta_registrations"

    def __init__(self) -> None:
        self.library = None  # kept alive: dropping it would remove the definitions

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self._target and self.library is None:
            self._define_missing_ops()
        return None  # the normal finders import the module itself

    def _define_missing_ops(self) -> None:
        extension = sys.modules.get("torchvision.extension")
        if extension is None or extension._has_ops():
            return
        import torch

        missing = [name for name in _TORCHVISION_SCHEMAS if not hasattr(torch.ops.torchvision, name)]
        if not missing:
            return
        self.library = torch.library.Library("torchvision", "DEF")
        for name in missing:
            self.library.define(_TORCHVISION_SCHEMAS[name])


def main(argv: list[str]) -> None:
    root = comfyui_dir()
    main_py = root / "main.py"
    if not main_py.is_file():
        sys.exit(f"ComfyUI not found at {root}: run scripts/setup_comfyui.sh first")

    sys.meta_path.insert(0, _TorchvisionOpsShim())
    # main.py imports its siblings (folder_paths, nodes, server, ...) as top-level modules.
    sys.path[0] = str(root)
    sys.argv = [str(main_py), *argv]
    runpy.run_path(str(main_py), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
