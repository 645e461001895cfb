"""A throwaway V3 node pack that proves the host-test harness (tests/host/test_harness.py).

conftest.py copies this folder into the temporary ComfyUI's custom_nodes/ as
migm_harness_pack, next to the real pack. It is never installed anywhere else.
"""

import time

import folder_paths
import torch
import comfy.model_management
import comfy.utils
from comfy_api.latest import ComfyExtension, io, ui


def _model_files(folder_name: str) -> list[str]:
    """Files under a model folder that extra_model_paths.yaml may have added."""
    if folder_name not in folder_paths.folder_names_and_paths:
        return []
    return folder_paths.get_filename_list(folder_name)


class HarnessEcho(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HarnessEcho",
            display_name="Harness Echo",
            category="testing/harness",
            description="Returns its inputs and shows them as text.",
            inputs=[
                io.Int.Input("value", default=1, min=0, max=100, tooltip="0…100; echoed back."),
                io.String.Input("text", default="echo", optional=True, tooltip="Echoed back."),
            ],
            outputs=[
                io.Int.Output(display_name="value", tooltip="The value input."),
                io.String.Output(display_name="text", tooltip="The text input."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, value: int, text: str = "echo") -> io.NodeOutput:
        return io.NodeOutput(value, text, ui=ui.PreviewText(f"{text} {value}"))


class HarnessSlow(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HarnessSlow",
            display_name="Harness Slow",
            category="testing/harness",
            description="Sleeps step by step, reporting progress and honouring interrupts.",
            inputs=[
                io.Int.Input("steps", default=5, min=1, max=10_000, tooltip="Number of steps."),
                io.Float.Input("delay", default=0.05, min=0.0, max=5.0, step=0.01,
                               tooltip="Seconds per step."),
            ],
            outputs=[io.Int.Output(display_name="steps_done", tooltip="Steps completed.")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, steps: int, delay: float) -> io.NodeOutput:
        progress = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(delay)
            progress.update(1)
        return io.NodeOutput(steps, ui=ui.PreviewText(f"ran {steps} steps"))


class HarnessModels(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HarnessModels",
            display_name="Harness Models",
            category="testing/harness",
            description="Lists the migm and migm_shortcut model folders.",
            inputs=[
                io.Combo.Input("migm", options=_model_files("migm"), optional=True,
                               tooltip="A file in the migm folders."),
            ],
            outputs=[io.String.Output(display_name="files", tooltip="Both folders' files.")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, migm: str | None = None) -> io.NodeOutput:
        files = [f"migm/{name}" for name in _model_files("migm")]
        files += [f"migm_shortcut/{name}" for name in _model_files("migm_shortcut")]
        listing = "\n".join(files)
        return io.NodeOutput(listing, ui=ui.PreviewText(listing))


class HarnessImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HarnessImage",
            display_name="Harness Image",
            category="testing/harness",
            description="Saves a small gradient IMAGE ([B, H, W, 3] in 0…1) to the output folder.",
            inputs=[io.Int.Input("size", default=8, min=1, max=64, tooltip="Width and height.")],
            outputs=[io.Image.Output(tooltip="The gradient image.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, size: int) -> io.NodeOutput:
        ramp = torch.linspace(0.0, 1.0, size)
        image = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size),
                             torch.full((size, size), 0.5)], dim=-1)[None]  # (1, H, W, 3)
        saved = ui.ImageSaveHelper.get_save_images_ui(image, "harness/gradient", cls)
        return io.NodeOutput(image, ui=saved)


class HarnessClock(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HarnessClock",
            display_name="Harness Clock",
            category="testing/harness",
            description="Shows a clock reading; runs every time (never served from the cache).",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**64 - 1,
                                 control_after_generate=True, tooltip="Ignored.")],
            outputs=[io.String.Output(display_name="ns", tooltip="time.monotonic_ns().")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs) -> float:
        return float("nan")  # never equal to the last fingerprint: always execute

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        reading = str(time.monotonic_ns())
        return io.NodeOutput(reading, ui=ui.PreviewText(reading))


class HarnessPreviewMethod(io.ComfyNode):
    """Sets what ``--preview-method`` sets, at run time: one server serves tests with previews on and off."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HarnessPreviewMethod",
            display_name="Harness Preview Method",
            category="testing/harness",
            description="Sets comfy.cli_args.args.preview_method, as the --preview-method flag does.",
            inputs=[io.Combo.Input("method", options=["none", "auto"], tooltip="The flag's value.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs) -> float:
        return float("nan")  # always execute

    @classmethod
    def execute(cls, method: str) -> io.NodeOutput:
        from comfy.cli_args import LatentPreviewMethod, args

        args.preview_method = LatentPreviewMethod(method)
        return io.NodeOutput(ui=ui.PreviewText(f"preview method {method}"))


class HarnessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [HarnessEcho, HarnessSlow, HarnessModels, HarnessImage, HarnessClock, HarnessPreviewMethod]


async def comfy_entrypoint() -> HarnessExtension:
    return HarnessExtension()
