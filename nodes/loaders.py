"""Load MIGM and Load Shortcut: model-folder pickers over ``load_migm`` / ``load_shortcut``."""
from __future__ import annotations

import logging

import torch
import comfy.model_management
from comfy_api.latest import io

from ..shortcut_core import load_migm, load_shortcut
from ..shortcut_core.devices import resolve_device
from . import folders, memory
from .cache import LoadedModels
from .types import MIGM, SHORTCUT, LoadedShortcut

log = logging.getLogger("migm_shortcut")

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "fp16", "bf16")  # names shortcut_core.devices.resolve_dtype reads
LOADED = LoadedModels(size=1)  # one base model: a Lumina-DiMOO is 16 GB


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return comfy.model_management.get_torch_device()
    if choice == "cuda":
        resolve_device("cuda")  # refuses a machine without a GPU, by name
        return torch.device("cuda", torch.cuda.current_device())
    if choice == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {choice!r}; choose one of {', '.join(DEVICES)}")


class LoadMIGM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadMIGM",
            display_name="Load MIGM",
            category="MIGM-Shortcut",
            description="Loads a masked image generation model (MaskGIT .safetensors/.pth, or a Lumina-DiMOO "
                        "checkpoint folder) with its image tokenizer, from the 'migm' model folders.",
            inputs=[
                io.Combo.Input("migm_name", options=folders.migm_choices(), display_name="model",
                               tooltip="Base model from models/migm (the embedded Fashion-MNIST model first). "
                                       "Entries ending in '/' are Lumina-DiMOO checkpoint folders."),
                io.Combo.Input("vq_name", options=folders.vq_choices(), default=folders.VQ_BUNDLED,
                               display_name="image tokenizer",
                               tooltip="VQGAN decoder from models/migm_vq, for a base model that does not carry "
                                       "its own (the published MaskGIT .pth needs taming's last.ckpt). "
                                       f"'{folders.VQ_BUNDLED}': the one inside the file (DiMOO: its vqvae/ folder)."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="Where the model runs. auto: ComfyUI's device (the GPU unless started "
                                       "with --cpu)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Weights' precision. auto: fp32 for MaskGIT; bf16 on a GPU and fp32 on the "
                                       "CPU for Lumina-DiMOO. On a CPU with bf16 matrix units (Intel AMX) bf16 "
                                       "samples MaskGIT about 3x faster; on other CPUs it is slower. The image "
                                       "decoder always runs in fp32."),
            ],
            outputs=[MIGM.Output(display_name="MIGM", tooltip="The base model with its tokenizer.")],
        )

    @classmethod
    def execute(cls, migm_name: str, vq_name: str = folders.VQ_BUNDLED, device: str = "auto",
                dtype: str = "auto") -> io.NodeOutput:
        path = folders.resolve_migm(migm_name)
        vq_path = None if vq_name == folders.VQ_BUNDLED else folders.resolve("migm_vq", vq_name, "vq_name")
        target = pick_device(device)
        key = (str(path), folders.stamp(path), str(vq_path), vq_path and folders.stamp(vq_path), str(target), dtype)

        def load():
            log.info("MIGM-Shortcut: loading %s on %s (%s)", path, target, dtype)
            # loaded where it runs (the dtype 'auto' picks depends on that device), then handed to
            # ComfyUI's model management, which offloads it when the memory is wanted elsewhere
            migm = load_migm(path, vq_path, device=target, dtype=None if dtype == "auto" else dtype)
            memory.manage_migm(migm, *memory.devices(device, target))
            return migm

        return io.NodeOutput(LOADED.get(key, load))


class LoadShortcut(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadMIGMShortcut",
            display_name="Load Shortcut",
            category="MIGM-Shortcut",
            description="Loads a shortcut model trained for the connected MIGM, from the 'migm_shortcut' model "
                        "folders. A shortcut for another model is refused with the reason.",
            inputs=[
                MIGM.Input("migm", tooltip="The base model this shortcut was trained for."),
                io.Combo.Input("shortcut_name", options=folders.shortcut_choices(), display_name="shortcut",
                               tooltip="Shortcut file from models/migm_shortcut (the embedded Fashion-MNIST "
                                       "shortcut first)."),
                io.Boolean.Input("allow_fingerprint_mismatch", default=False,
                                 tooltip="Use a shortcut recorded for a different copy of the base weights. Off "
                                         "(default): such a shortcut is refused; shapes must fit either way."),
            ],
            outputs=[SHORTCUT.Output(display_name="SHORTCUT",
                                     tooltip="The shortcut, bound to this MIGM; connect it to Shortcut Sampler.")],
        )

    @classmethod
    def execute(cls, migm, shortcut_name: str, allow_fingerprint_mismatch: bool = False) -> io.NodeOutput:
        path = folders.resolve("migm_shortcut", shortcut_name, "shortcut_name")
        # A shortcut that does not fit raises CheckpointError, whose message names the file and the remedy.
        shortcut = load_shortcut(path, migm, allow_fingerprint_mismatch=allow_fingerprint_mismatch)
        memory.manage_shortcut(shortcut, migm)
        return io.NodeOutput(LoadedShortcut(shortcut, migm, path.name))
