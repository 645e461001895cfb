"""Record Trajectories: ``training.record.record_trajectories`` under ComfyUI's output folder.

The recorder's modules import the library by its top-level name ``shortcut_core`` (they
also run as ``python -m training.record`` from the repository root). Inside ComfyUI the
pack is imported under a path-like name, so the pack's own ``shortcut_core`` is
registered under the top-level name, once, before the recorder is first imported.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from .. import shortcut_core
from ..shortcut_core import REVEAL_MODES
from .options import (
    MODEL_DEFAULT,
    SEED_MAX,
    family_options,
    output_folder,
    parse_classes,
    parse_prompts,
)
from . import memory
from .types import MIGM

log = logging.getLogger("migm_shortcut")

FEATURE_DTYPES = ("float16", "bfloat16")


def recorder():
    """The ``training.record`` module, imported with the pack's ``shortcut_core`` as ``shortcut_core``."""
    top = "shortcut_core"
    if top not in sys.modules:
        prefix = shortcut_core.__name__
        for name, module in list(sys.modules.items()):
            if name == prefix or name.startswith(prefix + "."):
                sys.modules.setdefault(top + name[len(prefix):], module)
    from ..training import record

    return record


class RecordTrajectories(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMRecordTrajectories",
            display_name="Record Trajectories",
            category="MIGM-Shortcut/training",
            description="Records plain-sampling trajectories of the base model (its feature at every step) into a "
                        "folder under ComfyUI's output folder, for training a shortcut with "
                        "`python -m training.train --data <folder> --migm <model> --out <shortcut>.safetensors`. "
                        "Running it again with the same name continues an unfinished recording.",
            inputs=[
                MIGM.Input("migm", tooltip="The base model to record (Load MIGM)."),
                io.String.Input("classes", default="all",
                                tooltip="Class-conditional models: the classes to record, 'all', '0-9', '0,3,7', names, "
                                        "or 'none' (unconditional); trajectory i gets the i-th class, cycling."),
                io.Int.Input("count_per_class", default=64, min=1, max=1_000_000,
                             tooltip="Trajectories per class (or per prompt line); the total is this times the "
                                     "number of classes."),
                io.String.Input("prompts", default="", multiline=True,
                                tooltip="Text-to-image models (Lumina-DiMOO): one prompt per line, cycled like "
                                        "the classes. Ignored by class-conditional models."),
                io.Int.Input("width", default=1024, min=16, max=4096, step=16,
                             tooltip="Lumina-DiMOO image width while recording (a multiple of 16); MaskGIT's size "
                                     "is fixed. Storage grows with the pixel count."),
                io.Int.Input("height", default=1024, min=16, max=4096, step=16,
                             tooltip="Lumina-DiMOO image height while recording (a multiple of 16)."),
                io.Float.Input("temperature", default=1.0, min=0.0, max=10.0, step=0.05, round=0.01,
                               tooltip="Lumina-DiMOO sampling temperature while recording."),
                io.Int.Input("steps", default=0, min=0, max=4096,
                             tooltip="N_train: plain sampling steps per trajectory. 0: the family's default, as in "
                                     "the papers: 15 for MaskGIT (a shortcut trained at 15 also serves N=32), 64 "
                                     "for Lumina-DiMOO."),
                io.Float.Input("cfg", default=MODEL_DEFAULT, min=MODEL_DEFAULT, max=30.0, step=0.1, round=0.01,
                               tooltip="Guidance scale while recording; 0 records only the conditional branch. "
                                       "-1: the model's recommended value (from its file, else MaskGIT 2.8, "
                                       "Lumina-DiMOO 4.0). Record with the settings you will sample with."),
                io.Float.Input("sm_temp", default=MODEL_DEFAULT, min=MODEL_DEFAULT, max=10.0, step=0.05, round=0.01,
                               tooltip="MaskGIT softmax temperature while recording. -1: the model's recommended "
                                       "value."),
                io.Float.Input("r_temp", default=MODEL_DEFAULT, min=MODEL_DEFAULT, max=50.0, step=0.5, round=0.01,
                               tooltip="MaskGIT reveal randomness while recording. -1: the model's recommended "
                                       "value."),
                io.Combo.Input("schedule", options=list(REVEAL_MODES), default="arccos",
                               tooltip="MaskGIT reveal schedule while recording (Lumina-DiMOO has its own)."),
                io.Int.Input("batch_size", default=0, min=0, max=1024,
                             tooltip="Trajectories sampled together (memory vs speed). 0: the family's default "
                                     "(MaskGIT 8, Lumina-DiMOO 1: one DiMOO trajectory is gigabytes)."),
                io.Int.Input("shard_size", default=0, min=0, max=1_000_000,
                             tooltip="Trajectories per shard file, a multiple of batch_size; 0 (default): about "
                                     "256 MB per shard."),
                io.Combo.Input("feature_dtype", options=list(FEATURE_DTYPES), default="float16",
                               tooltip="Stored feature precision (storage is the main cost)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX,
                             tooltip="Run seed; trajectory i depends only on it and i. Keep it fixed to continue "
                                     "a recording (a changed seed is refused)."),
                io.String.Input("output_name", default="migm_trajectories/run1",
                                tooltip="Folder under ComfyUI's output folder. An existing recording there is "
                                        "continued with the same settings."),
            ],
            outputs=[
                io.String.Output(display_name="folder", tooltip="Full path of the recording folder."),
                io.String.Output(display_name="summary", tooltip="What was written and what was already there."),
            ],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs) -> float:
        return float("nan")  # writes files: never answer from ComfyUI's cache

    @classmethod
    def execute(cls, migm, classes: str, count_per_class: int, prompts: str, width: int, height: int,
                temperature: float, steps: int, cfg: float, sm_temp: float, r_temp: float, schedule: str,
                batch_size: int, shard_size: int, feature_dtype: str, seed: int, output_name: str) -> io.NodeOutput:
        record = recorder()
        root = output_folder(folder_paths.get_output_directory(), output_name)
        family = family_options(migm, cfg=cfg, sm_temp=sm_temp, r_temp=r_temp, temperature=temperature,
                                schedule=schedule)
        if migm.family == "dimoo":
            lines = parse_prompts(prompts)
            family.update(prompts=lines, width=width, height=height)
            count = len(lines) * count_per_class
        else:
            chosen = parse_classes(classes, migm.config.num_classes)
            family["classes"] = chosen
            count = len(chosen) * count_per_class
        progress = comfy.utils.ProgressBar(count)

        def on_progress(done: int, total: int) -> None:
            progress.update_absolute(done, total)

        def should_stop() -> bool:
            comfy.model_management.throw_exception_if_processing_interrupted()  # raises: finished shards stay
            return False

        memory.bring(migm)
        result = record.record_trajectories(
            migm, root, count=count, **family, steps=steps or None, batch_size=batch_size or None,
            shard_size=shard_size or None, feature_dtype=feature_dtype, seed=seed,
            resume=(root / record.MANIFEST).exists(), progress=on_progress, should_stop=should_stop,
            show_progress=False, log=log.info, command=f"ComfyUI node Record Trajectories -> {root}",
        )
        summary = result.report()
        log.info("MIGM-Shortcut: %s", summary)
        return io.NodeOutput(str(Path(root).resolve()), summary, ui=ui.PreviewText(summary))
