"""Step 0 from memory: before anything is revealed a row is all [MASK] plus its condition,
so its final-layer feature depends on the condition alone and is the same in every run.

The memo computes each condition's feature in a batch of its own, so a row's bits never
depend on what else was in the batch or on what earlier runs left in the memo: same seed,
same tokens, memo cold or warm. Features are kept on the CPU (a model ComfyUI offloads
leaves no GPU memory behind) and forgotten as soon as any weight changes (moved, cast,
trained or reloaded), which the weights' stamp notices.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Sequence

import torch

DEFAULT_MAX_MIB = 128


def weights_stamp(module: torch.nn.Module) -> tuple:
    """Changes whenever a weight is replaced, moved or cast, or modified in place (its version
    counter). Weights made under ``torch.inference_mode`` (ComfyUI loads models so) keep no
    version counter; for them only replacement, moves and casts are seen."""
    return tuple((p.data_ptr(), p.dtype, p.device, version(p)) for p in module.parameters())


def version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor, or one made from one outside inference mode
        return -1


class FirstStepMemo:
    """Condition key (hashable: a class index, a token-id tuple) -> step-0 feature (1, T, hidden),
    least recently used first out."""

    def __init__(self, compute: Callable[[Hashable], torch.Tensor], max_mib: float = DEFAULT_MAX_MIB):
        self.compute = compute
        self.max_bytes = int(max_mib * 2**20)
        self.entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.stamp: tuple | None = None
        self.bytes = 0  # held by ``entries``
        self.hits = self.misses = 0

    def rows(self, keys: Sequence[Hashable], stamp: tuple, device) -> tuple[list[torch.Tensor], bool]:
        """One (1, T_key, hidden) feature on ``device`` per key, and whether all came from memory."""
        if stamp != self.stamp:
            self.entries.clear()
            self.bytes, self.stamp = 0, stamp
        unique = list(dict.fromkeys(keys))
        rows, all_hit = {}, True
        for key in unique:
            feat = self.entries.get(key)
            if feat is None:
                all_hit = False
                self.misses += 1
                feat = self.compute(key)
                self.store(key, feat)
            else:
                self.hits += 1
                self.entries.move_to_end(key)
            rows[key] = feat.to(device)
        return [rows[k] for k in keys], all_hit

    def store(self, key: Hashable, feat: torch.Tensor) -> None:
        size = feat.numel() * feat.element_size()
        if size > self.max_bytes:
            return
        self.entries[key] = feat.detach().to("cpu", copy=True)
        self.bytes += size
        while self.bytes > self.max_bytes:
            old = self.entries.popitem(last=False)[1]
            self.bytes -= old.numel() * old.element_size()
