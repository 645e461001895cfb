"""MIGM Classes and MIGM Prompt: what to sample, as its own node (ComfyUI's text encode -> CONDITIONING
-> KSampler pattern), so the sampler shows only what every model uses."""
from __future__ import annotations

from comfy_api.latest import io

from .options import parse_classes, parse_prompts
from .types import CONDITION, MIGM, Condition

PER_ITEM_MAX = 256


def refuse_family(migm, wanted: str, node: str, other: str) -> None:
    if migm.family != wanted:
        kind = "text-to-image (Lumina-DiMOO)" if migm.family == "dimoo" else "class-conditional (MaskGIT)"
        raise ValueError(f"{node}: MIGM {migm.name!r} is {kind}; use {other} for it")


class MIGMClasses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMClasses",
            display_name="MIGM Classes",
            category="MIGM-Shortcut",
            description="The classes a class-conditional MIGM (MaskGIT) samples, and how many images of each; "
                        "'none' samples unconditionally. Connect it to Shortcut Sampler's condition.",
            inputs=[
                MIGM.Input("migm", tooltip="The base model (Load MIGM): class names and numbers are its own."),
                io.String.Input("classes", default="all",
                                tooltip="A class index or name, a comma list ('0,7', 'sandal, bag'), a range "
                                        "('0-9'), 'all', or 'none' for unconditional sampling (no class; guidance "
                                        "is ignored for those images and they cost one pass per step)."),
                io.Int.Input("images_per_class", default=1, min=1, max=PER_ITEM_MAX,
                             tooltip="Images of each class (of each 'none')."),
            ],
            outputs=[CONDITION.Output(display_name="condition", tooltip="For Shortcut Sampler.")],
        )

    @classmethod
    def execute(cls, migm, classes: str, images_per_class: int) -> io.NodeOutput:
        refuse_family(migm, "maskgit", "MIGM Classes", "MIGM Prompt")
        items = tuple(parse_classes(classes, migm.config.num_classes))
        return io.NodeOutput(Condition("classes", items, images_per_class, migm))


class MIGMPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMPrompt",
            display_name="MIGM Prompt",
            category="MIGM-Shortcut",
            description="The prompts a text-to-image MIGM (Lumina-DiMOO) samples, the image size, and how many "
                        "images of each prompt. Connect it to Shortcut Sampler's condition.",
            inputs=[
                MIGM.Input("migm", tooltip="The base model (Load MIGM)."),
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="The prompt; one per line for several."),
                io.Int.Input("width", default=1024, min=16, max=4096, step=16,
                             tooltip="Image width in pixels (a multiple of 16)."),
                io.Int.Input("height", default=1024, min=16, max=4096, step=16,
                             tooltip="Image height in pixels (a multiple of 16)."),
                io.Int.Input("images_per_prompt", default=1, min=1, max=PER_ITEM_MAX,
                             tooltip="Images of each prompt line."),
            ],
            outputs=[CONDITION.Output(display_name="condition", tooltip="For Shortcut Sampler.")],
        )

    @classmethod
    def execute(cls, migm, prompt: str, width: int, height: int, images_per_prompt: int) -> io.NodeOutput:
        refuse_family(migm, "dimoo", "MIGM Prompt", "MIGM Classes")
        items = tuple(parse_prompts(prompt))
        return io.NodeOutput(Condition("prompts", items, images_per_prompt, migm, width=width, height=height))
