"""Everything family specific about recording and training, in one small place.

A *recipe* tells the recorder which guidance branches a run has and how the sampler's
per-step features split into them, and tells the trainer how a recorded step pair
(s -> s+1) becomes the shortcut's inputs and its loss mask. The recorder and trainer
never look inside a family otherwise. MaskGIT is here; Lumina-DiMOO plugs in by adding
a recipe with the same methods to ``RECIPES``.
"""
from __future__ import annotations

import torch

from shortcut_core import ShortcutConfig


class MaskGITRecipe:
    """MaskGIT: guidance batches [cond rows; uncond rows]; the class token is last."""

    family = "maskgit"

    # -- recording ------------------------------------------------------------------
    def resolve_conditions(self, migm, classes) -> dict:
        """Class indices or names (None: every class) -> the manifest's ``conditions`` entry."""
        wanted = list(range(migm.config.num_classes)) if classes is None else list(classes)
        return {"kind": "classes", "classes": [int(c) for c in migm.resolve_classes(wanted).tolist()], "order": "cycle"}

    def condition_of(self, conditions: dict, i: int) -> int:
        """Trajectory i's class: the class list cycled by i."""
        classes = conditions["classes"]
        return classes[i % len(classes)]

    def branches(self, sampler: dict) -> list[str]:
        return ["cond", "uncond"] if float(sampler.get("cfg", 0.0)) != 0 else ["cond"]

    def feature_shapes(self, migm, branches: list[str]) -> dict[str, list[int]]:
        c = migm.config
        return {b: [c.seq_len, c.hidden] for b in branches}

    def num_image_tokens(self, migm) -> int:
        return migm.config.num_image_tokens

    def split_features(self, feats: torch.Tensor, branches: list[str]) -> dict[str, torch.Tensor]:
        """StepInfo.feats (len(branches)·B, T, C) -> branch -> (B, T, C)."""
        return dict(zip(branches, feats.chunk(len(branches))))

    def branch_records(self, migm, state, branches: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        """Per branch: revealed_at (B, T) and condition (B,), from the finished sampling state."""
        out = {}
        for b in branches:
            cond = state.classes if b == "cond" else torch.full_like(state.classes, migm.config.null_class)
            out[b] = {"revealed_at": state.revealed_at, "condition": cond}
        return out

    def final_ids(self, result) -> torch.Tensor:
        return result.tokens.reshape(result.tokens.shape[0], -1)

    # -- training -------------------------------------------------------------------
    def shortcut_config(self, dim: int, *, width: int, n_block: int, heads: int, mlp_ratio: int, embed_t: bool,
                        dropout: float) -> ShortcutConfig:
        return ShortcutConfig(family=self.family, dim=dim, width=width, n_block=n_block, heads=heads,
                              mlp_ratio=mlp_ratio, embed_t=embed_t, dropout=dropout)

    def pair_inputs(self, revealed_at: torch.Tensor, final_ids: torch.Tensor, step: int,
                    num_image_tokens: int) -> tuple[dict, torch.Tensor]:
        """Shortcut inputs for the pair (step -> step+1) and the loss mask.

        revealed_at (B, T), final_ids (B, L) -> keyword inputs of ``MaskGITShortcut.forward``
        besides ``prev_feat`` (new_ids, new_map, mask_ratio, new_positions) and the
        (B, T) bool mask of positions still masked after ``step``.
        """
        L = num_image_tokens
        new_map = revealed_at == step  # the class slot holds -1, so it is never new
        counts = new_map.sum(1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"rows reveal different counts at step {step} ({counts.tolist()}); "
                             f"batch only pairs recorded with one schedule")
        n = int(counts[0])
        new_positions = new_map.nonzero()[:, 1].reshape(-1, n)  # (B, n), increasing position
        new_ids = final_ids.long().gather(1, new_positions)
        still_masked = revealed_at > step
        still_masked[:, L:] = False
        mask_ratio = still_masked[:, :L].sum(1).float() / L
        inputs = {"new_ids": new_ids, "new_map": new_map, "mask_ratio": mask_ratio, "new_positions": new_positions}
        return inputs, still_masked


RECIPES = {"maskgit": MaskGITRecipe()}


def recipe_for(family: str):
    try:
        return RECIPES[family]
    except KeyError:
        raise ValueError(
            f"recording and training know the families {', '.join(RECIPES)}, not {family!r}; "
            f"add a recipe for it in training/pairs.py"
        ) from None
