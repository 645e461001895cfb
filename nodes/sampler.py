"""Shortcut Sampler: ``shortcut_core.generate`` with ComfyUI's progress bar, interrupt and devices."""
from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
from comfy.cli_args import LatentPreviewMethod, args
from comfy_api.latest import io, ui

from ..shortcut_core import REVEAL_MODES, generate
from ..shortcut_core.compiled import use_compiled
from ..shortcut_core.placement import AUTO, PAPER, PLACEMENTS
from . import memory
from .options import (
    CUSTOM,
    MODEL_DEFAULT,
    OFF,
    PRESETS,
    SEED_MAX,
    STEPS_MAX,
    STEPS_MIN,
    family_options,
    step_plan,
    unused_step_inputs,
)
from .previews import PreviewPacer, preview_image
from .types import CONDITION, MIGM, SHORTCUT

log = logging.getLogger("migm_shortcut")


class ShortcutSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMShortcutSampler",
            display_name="Shortcut Sampler",
            category="MIGM-Shortcut",
            description="Samples images from a masked image generation model. Only B of the N steps run the "
                        "base model; the shortcut predicts the others. Without a shortcut, or with the preset "
                        "'off (plain)', every step runs the base model: exactly the unaccelerated result. "
                        "The report output (also logged) says how many base passes ran.",
            inputs=[
                MIGM.Input("migm", tooltip="The base model (Load MIGM)."),
                CONDITION.Input("condition", tooltip="What to sample: MIGM Classes (MaskGIT) or MIGM Prompt "
                                                     "(Lumina-DiMOO), made for the same MIGM."),
                io.Combo.Input("preset", options=list(PRESETS), default=CUSTOM,
                               tooltip="custom: use steps / full_steps / full_step_list below. "
                                       f"'{OFF}': every step runs the base model (exactly the plain result). "
                                       "The paper presets fix N and B and ignore those three inputs; guidance "
                                       "and temperatures stay as set."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Random seed; the same seed and settings give the same images."),
                io.Int.Input("steps", default=16, min=STEPS_MIN, max=STEPS_MAX,
                             tooltip="N: sampling steps (at most the number of image tokens)."),
                io.Int.Input("full_steps", default=4, min=STEPS_MIN, max=STEPS_MAX,
                             tooltip="B: steps that run the base model, spread evenly and always including "
                                     "step 0; the other N-B steps use the shortcut. B = N is plain sampling "
                                     "(off). Must not exceed steps."),
                io.String.Input("full_step_list", default="",
                                tooltip="Explicit full steps, e.g. '0,3,5,8,11' (must start at 0, increasing, "
                                        "below N). When not empty it replaces full_steps. Empty (default): use "
                                        "full_steps."),
                io.Combo.Input("schedule", options=list(REVEAL_MODES), default="arccos",
                               tooltip="MaskGIT reveal schedule: how many tokens each step uncovers. "
                                       "Lumina-DiMOO always uses its own cosine schedule."),
                io.Float.Input("cfg", default=MODEL_DEFAULT, min=MODEL_DEFAULT, max=30.0, step=0.1, round=0.01,
                               tooltip="Guidance scale; 0 turns guidance off (one pass per step instead of two). "
                                       "-1: the model's recommended value (from its file, else the paper's: "
                                       "MaskGIT 2.8, ramped up over the steps; Lumina-DiMOO 4.0)."),
                io.Float.Input("sm_temp", default=MODEL_DEFAULT, min=MODEL_DEFAULT, max=10.0, step=0.05, round=0.01,
                               tooltip="MaskGIT softmax temperature on the logits (1 = unchanged). -1: the model's "
                                       "recommended value (1 for the published models)."),
                io.Float.Input("r_temp", default=MODEL_DEFAULT, min=MODEL_DEFAULT, max=50.0, step=0.5, round=0.01,
                               tooltip="MaskGIT randomness in which tokens are revealed (Gumbel noise, fading over "
                                       "the steps); 0: always the most confident. -1: the model's recommended "
                                       "value (7 for MaskGIT-512)."),
                io.Float.Input("temperature", default=1.0, min=0.0, max=10.0, step=0.05, round=0.01,
                               tooltip="Lumina-DiMOO sampling temperature; 0 picks the most likely token."),
                io.Combo.Input("placement", options=list(PLACEMENTS), default=AUTO,
                               tooltip="Where the B full steps go. auto: the shortcut file's calibrated "
                                       "placement when it has one for this N and B, made at these sampling settings (a "
                                       "file may hold its own for class-conditional and for unconditional "
                                       "sampling), else the paper's (the "
                                       "published checkpoints carry none). paper: evenly (step 0, then "
                                       "round(N*k/B)). calibrated: the file's placement (training.calibrate or "
                                       "the adaptive rule); an (N, B) the file does not cover falls back to the "
                                       "paper's and the report says so. Ignored with an explicit full_step_list."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the base model and the shortcut (CUDA graphs on a GPU, "
                                         "inductor on a CPU). The first run of each image size and batch pays "
                                         "the compile, tens of seconds or more; the choice stays with the loaded "
                                         "models until switched off. On this project's 2-core CPU it gained "
                                         "nothing; on GPUs it is not measured yet. Same images as without, "
                                         "within float rounding."),
                SHORTCUT.Input("shortcut", optional=True,
                               tooltip="The shortcut (Load Shortcut). Not connected: plain sampling, every step "
                                       "runs the base model."),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The images: each class (or prompt) of the condition, "
                                                               "as many times as it asks."),
                io.String.Output(display_name="report",
                                 tooltip="What ran, e.g. 'full 12/32, shortcut 20, base passes 12 (plain: 32), ...'."),
            ],
        )

    @classmethod
    def validate_inputs(cls, preset: str, steps: int, full_steps: int, full_step_list: str = "") -> bool | str:
        # ComfyUI attaches the message to each of these four inputs; it starts with the one at
        # fault, and web/js/errors_once.js shows it on that input alone.
        # Inputs wired from other nodes arrive as None: they are checked when the node runs.
        if any(v is None for v in (preset, steps, full_steps, full_step_list)):
            return True
        try:
            step_plan(preset, steps, full_steps, full_step_list)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, migm, condition, preset: str, seed: int, steps: int, full_steps: int, full_step_list: str,
                schedule: str, cfg: float, sm_temp: float, r_temp: float, temperature: float,
                placement: str = AUTO, compile: bool = False, shortcut=None) -> io.NodeOutput:
        plan = step_plan(preset, steps, full_steps, full_step_list)
        condition.check_for(migm)
        options = family_options(migm, cfg=cfg, sm_temp=sm_temp, r_temp=r_temp, temperature=temperature,
                                 schedule=schedule)
        model = None
        if shortcut is None:
            mode = "plain: no shortcut connected"
            if not plan.plain:
                log.warning("MIGM-Shortcut: no shortcut connected to the sampler, so every step ran the base model; "
                            "connect Load Shortcut to accelerate")
        elif plan.plain:
            mode = f"plain: preset {OFF!r}"
        else:
            shortcut.check_for(migm)
            model, mode = shortcut.model, f"shortcut {shortcut.name}"

        comfy.model_management.throw_exception_if_processing_interrupted()
        if isinstance(plan.full_steps, list):
            placement = PAPER  # an explicit list is its own placement
        memory.bring(migm, model)
        compiled = use_compiled(migm, model, compile)
        progress = comfy.utils.ProgressBar(plan.steps)
        # made after the weights are loaded: its budget counts sampling time only
        pacer = PreviewPacer() if args.preview_method != LatentPreviewMethod.NoPreviews else None

        def on_step(info) -> None:
            preview = None
            if pacer is not None and pacer.due(info.step, info.steps):
                preview = ("JPEG", pacer.timed(lambda: preview_image(migm.preview(info.state, info.feats),
                                                                     args.preview_size)), args.preview_size)
            progress.update_absolute(info.step + 1, info.steps, preview)
            comfy.model_management.throw_exception_if_processing_interrupted()

        result = generate(migm, steps=plan.steps, full_steps=plan.full_steps, shortcut=model, seed=seed,
                          callback=on_step, placement=placement, **condition.arguments(), **options)
        report = f"{result.stats.report()}; {mode} on {migm.name}"
        if compiled:
            report += f"; compiled ({compiled})"
        unused = unused_step_inputs(preset, full_step_list)
        if unused:
            why = "the list replaces it" if preset == CUSTOM else f"set by preset {preset!r}"
            report += f"; not used: {', '.join(unused)} ({why})"
        log.info("MIGM-Shortcut: %s", report)
        images = result.images.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(images, report, ui=ui.PreviewText(report))
