"""The socket types the pack's nodes pass between them."""
from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

MIGM = io.Custom("MIGM")  # a shortcut_core MIGM: base model + tokenizer + family adapter
SHORTCUT = io.Custom("SHORTCUT")  # a LoadedShortcut


@dataclass(frozen=True)
class LoadedShortcut:
    """A shortcut with the MIGM it was loaded for (it is bound to that model's embeddings) and its file name."""

    model: object
    migm: object
    name: str

    def check_for(self, migm) -> None:
        if migm is not self.migm:
            raise ValueError(
                f"the shortcut {self.name!r} was loaded for MIGM {self.migm.name!r}, but the sampler got MIGM "
                f"{migm.name!r}; connect the same Load MIGM node to Load Shortcut and to the sampler"
            )
