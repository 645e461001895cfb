"""MIGM-Shortcut for ComfyUI: registers the pack's nodes (V3 schema) and model folders.

Outside ComfyUI (tests, headless use of ``shortcut_core`` and ``training``) importing
this folder defines nothing but ``WEB_DIRECTORY``.
"""

WEB_DIRECTORY = "./web"  # node help pages: web/docs/<node id>.md

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import folders
    from .nodes.conditions import MIGMClasses, MIGMPrompt
    from .nodes.loaders import LoadMIGM, LoadShortcut
    from .nodes.record import RecordTrajectories
    from .nodes.sampler import ShortcutSampler

    folders.register()

    class MIGMShortcutExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return [LoadMIGM, LoadShortcut, MIGMClasses, MIGMPrompt, ShortcutSampler, RecordTrajectories]

    async def comfy_entrypoint() -> ComfyExtension:
        return MIGMShortcutExtension()
