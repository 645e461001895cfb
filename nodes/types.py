"""The socket types the pack's nodes pass between them."""
from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from .options import repeat_each

MIGM = io.Custom("MIGM")  # a shortcut_core MIGM: base model + tokenizer + family adapter
SHORTCUT = io.Custom("SHORTCUT")  # a LoadedShortcut
CONDITION = io.Custom("MIGM_CONDITION")  # a Condition: what to sample (MIGM Classes / MIGM Prompt)


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


@dataclass(frozen=True)
class Condition:
    """What the sampler makes: each class (MaskGIT) or prompt (Lumina-DiMOO) ``per_item`` times,
    resolved for one MIGM (class names need its list, and prompts its size limits)."""

    kind: str  # "classes" or "prompts"
    items: tuple  # class indices and 'none', or prompt strings
    per_item: int
    migm: object
    width: int | None = None  # Lumina-DiMOO image size
    height: int | None = None

    def arguments(self) -> dict:
        """``generate`` keyword arguments for the conditions (and size)."""
        repeated = repeat_each(list(self.items), self.per_item)
        if self.kind == "prompts":
            return dict(prompts=repeated, width=self.width, height=self.height)
        return dict(classes=repeated)

    def check_for(self, migm) -> None:
        if migm is not self.migm:
            raise ValueError(
                f"condition: it was made for MIGM {self.migm.name!r}, but the sampler got MIGM {migm.name!r}; "
                f"connect the same Load MIGM node to the condition node and to the sampler"
            )
