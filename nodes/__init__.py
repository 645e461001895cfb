"""ComfyUI nodes of MIGM-Shortcut: thin adapters from node inputs to ``shortcut_core`` calls.

Only this package touches ComfyUI (``folder_paths``, ``comfy.*``, ``comfy_api``); the
library never imports it. ``options`` is plain Python (presets, parsing, validation
messages) so it can be tested without a host; the node modules (``loaders``,
``sampler``, ``record``) are imported by the pack's ``__init__.py`` only inside ComfyUI.
"""
