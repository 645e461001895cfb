"""Lumina-DiMOO's text-to-image sequence layout and prompt tokenisation.

Conditional:   <system>Generate an image according to the text prompt.</system><user>{prompt}</user>
Unconditional: <system>Generate an image according to the text prompt.</system><user><uncondition></user>
each followed by  BOA BOI, H rows of (W image tokens + newline), EOI EOA
with H = height/16, W = width/16. Image tokens start as [MASK]; an image code c is the
vocabulary id ``image_offset + c``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import LLaDAConfig

SYSTEM_PROMPT = "Generate an image according to the text prompt."
TOKEN_SIDE = 16  # pixels per image token along each side (the VQ's downsampling)
# The unconditional prefix as the published tokenizer encodes it (no BOS), as the
# reference's shortcut training code spells it out: 14 ids, 9 of them the system prompt.
REFERENCE_UNCOND_IDS = (126332, 36289, 289, 3972, 4631, 297, 268, 3019, 12166, 13, 126333, 126334, 126351, 126335)


def token_grid(height: int, width: int, side: int = TOKEN_SIDE) -> tuple[int, int]:
    """Pixel size -> (rows, cols) of image tokens; both sides must be positive multiples of 16."""
    for name, v in (("height", height), ("width", width)):
        if int(v) != v or v <= 0 or v % side:
            raise ValueError(
                f"image {name} {v} is not a positive multiple of {side}: Lumina-DiMOO makes one token per "
                f"{side}x{side} pixels; use e.g. {max(side, round(v / side) * side)}"
            )
    return int(height) // side, int(width) // side


def image_block(rows: int, cols: int, c: LLaDAConfig) -> list[int]:
    """BOA BOI, ``rows`` x (``cols`` [MASK] + newline), EOI EOA."""
    grid = ([c.mask_id] * cols + [c.newline_id]) * rows
    return [c.boa_id, c.boi_id, *grid, c.eoi_id, c.eoa_id]


@dataclass(frozen=True)
class Sequence:
    """One branch's initial sequence and where its image tokens sit."""

    ids: torch.Tensor  # (S,) long
    prompt_len: int  # tokens before BOA (the position of BOA)
    image_positions: torch.Tensor  # (rows*cols,) long, row-major
    rows: int
    cols: int

    @property
    def length(self) -> int:
        return self.ids.shape[0]


def build_sequence(prompt_ids: list[int], rows: int, cols: int, c: LLaDAConfig) -> Sequence:
    """Prompt ids (ending with </user>) + the masked image block."""
    prompt_len = len(prompt_ids)
    ids = torch.tensor(list(prompt_ids) + image_block(rows, cols, c), dtype=torch.long)
    start = prompt_len + 2  # after BOA BOI
    r = torch.arange(rows)[:, None]
    k = torch.arange(cols)[None, :]
    positions = (start + r * (cols + 1) + k).reshape(-1)  # each row is cols tokens + a newline
    return Sequence(ids=ids, prompt_len=prompt_len, image_positions=positions, rows=rows, cols=cols)


def _require_tokenizers():
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise ImportError(
            "Lumina-DiMOO prompts need the 'tokenizers' package (pip install tokenizers) to read the "
            "checkpoint folder's tokenizer.json"
        ) from None
    return tokenizers


class PromptTokenizer:
    """Turns prompt text into the conditional / unconditional prefixes (no BOS/EOS added).

    Wraps a ``tokenizers.Tokenizer`` (the folder's ``tokenizer.json``). When the
    tokenizer knows the special tokens with the ids of the config, the whole template
    is encoded at once, exactly as upstream; otherwise the text parts are encoded
    separately and the special ids are put between them.
    """

    SPECIALS = ("<system>", "</system>", "<user>", "</user>", "<uncondition>")

    def __init__(self, tokenizer, config: LLaDAConfig):
        self.tokenizer = tokenizer
        self.config = config
        c = config
        expected = dict(zip(self.SPECIALS, (c.system_id, c.system_end_id, c.user_id, c.user_end_id, c.uncondition_id)))
        known = {name: tokenizer.token_to_id(name) for name in self.SPECIALS}
        mismatched = {n: i for n, i in known.items() if i is not None and i != expected[n]}
        if mismatched:
            raise ValueError(
                f"tokenizer maps {mismatched} but the model config expects {expected}: the tokenizer.json does not "
                f"belong to this checkpoint"
            )
        self.whole_template = all(i is not None for i in known.values())

    @classmethod
    def from_folder(cls, folder: str | Path, config: LLaDAConfig) -> "PromptTokenizer":
        tokenizers = _require_tokenizers()
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}: the Lumina-DiMOO folder is incomplete")
        return cls(tokenizers.Tokenizer.from_file(str(path)), config)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _wrap(self, user: str | None) -> list[int]:
        c = self.config
        if self.whole_template:
            inner = "<uncondition>" if user is None else user
            return self._encode(f"<system>{SYSTEM_PROMPT}</system><user>{inner}</user>")
        inner = [c.uncondition_id] if user is None else self._encode(user)
        return [c.system_id, *self._encode(SYSTEM_PROMPT), c.system_end_id, c.user_id, *inner, c.user_end_id]

    def conditional(self, prompt: str) -> list[int]:
        return self._wrap(prompt)

    def unconditional(self) -> list[int]:
        return self._wrap(None)
