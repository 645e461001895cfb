"""Everything family specific about recording and training, in one small place.

A *recipe* tells the recorder which guidance branches a run has and how the sampler's
per-step features split into them, and tells the trainer how a recorded step pair
(s -> s+1) becomes the shortcut's inputs and its loss mask. The recorder and trainer
never look inside a family otherwise. ``MaskGITRecipe`` and ``DiMOORecipe`` are the two
families; a new one adds a recipe with the same methods to ``RECIPES``.

Recipe protocol (recording): ``resolve_conditions``, ``condition_of``, ``sampler_settings``,
``branches``, ``feature_shapes``, ``num_image_tokens``, ``reveal_counts``,
``split_features``, ``branch_records``, ``final_ids``, ``extra_bytes``, ``manifest_extra``.
Training: ``architecture_defaults``, ``shortcut_config``, ``pair_inputs`` and, when the
pair needs more recorded tensors than ``revealed_at`` and ``final_ids``, ``pair_fields``
(branch tensor names that ``training.data.gather_pairs`` stacks and passes on).
"""
from __future__ import annotations

import torch

from shortcut_core import ShortcutConfig
from shortcut_core.placement import COND, regime_of
from shortcut_core.sampler import finite_number
from shortcut_core import reveal_counts as maskgit_reveal_counts


class MaskGITRecipe:
    """MaskGIT: guidance batches [cond rows; uncond rows]; the class token is last."""

    family = "maskgit"

    # -- recording ------------------------------------------------------------------
    def resolve_conditions(self, migm, classes, prompts=None) -> dict:
        """Class indices or names (None: every class) -> the manifest's ``conditions`` entry."""
        if prompts is not None:
            raise ValueError(f"{migm.name!r} is a class-conditional MaskGIT: pass classes, not prompts")
        wanted = "all" if classes is None else classes
        resolved = [int(c) for c in migm.resolve_classes(wanted).tolist()]
        spec = {"kind": "classes", "classes": resolved, "order": "cycle"}
        if all(c == migm.config.null_class for c in resolved):
            spec["unconditional"] = True
        return spec

    def condition_of(self, conditions: dict, i: int) -> int:
        """Trajectory i's class: the class list cycled by i."""
        classes = conditions["classes"]
        return classes[i % len(classes)]

    def placement_regime(self, migm, conditions: dict) -> str | None:
        """The recording's regime for a shortcut's per-regime placements (``migm.placement_regime``)."""
        return regime_of(c == migm.config.null_class for c in conditions["classes"])

    def sampler_settings(self, *, cfg, sm_temp, r_temp, schedule, randomize, **others) -> dict:
        """The manifest's ``sampler`` entry (also the options passed to ``sample``)."""
        given = sorted(k for k, v in others.items() if v is not None)
        if given:
            raise ValueError(f"MaskGIT sampling has no option {', '.join(given)} (those are Lumina-DiMOO's)")
        return {"schedule": schedule, "cfg": finite_number("cfg", cfg), "sm_temp": finite_number("sm_temp", sm_temp),
                "r_temp": finite_number("r_temp", r_temp), "randomize": randomize}

    def branches(self, sampler: dict) -> list[str]:
        return ["cond", "uncond"] if float(sampler.get("cfg", 0.0)) != 0 else ["cond"]

    def feature_shapes(self, migm, branches: list[str], **layout) -> dict[str, list[int]]:
        c = migm.config
        return {b: [c.seq_len, c.hidden] for b in branches}

    def num_image_tokens(self, migm, sampler: dict | None = None) -> int:
        return migm.config.num_image_tokens

    def reveal_counts(self, migm, steps: int, sampler: dict) -> list[int]:
        return maskgit_reveal_counts(self.num_image_tokens(migm), steps, sampler["schedule"])

    def split_features(self, feats: torch.Tensor, branches: list[str], state=None) -> dict[str, torch.Tensor]:
        """StepInfo.feats (len(branches)·B, T, C) -> branch -> (B, T, C)."""
        return dict(zip(branches, feats.chunk(len(branches))))

    def branch_records(self, migm, state, branches: list[str], **layout) -> dict[str, dict[str, torch.Tensor]]:
        """Per branch: revealed_at (B, T) and condition (B,), from the finished sampling state."""
        out = {}
        for b in branches:
            cond = state.classes if b == "cond" else torch.full_like(state.classes, migm.config.null_class)
            out[b] = {"revealed_at": state.revealed_at, "condition": cond}
        return out

    def final_ids(self, result) -> torch.Tensor:
        return result.tokens.reshape(result.tokens.shape[0], -1)

    def extra_bytes(self, feature_shapes: dict) -> int:
        """Stored bytes per trajectory beyond ``trajectories.bytes_per_trajectory``."""
        return 0

    def manifest_extra(self, migm, sampler: dict, conditions: dict) -> dict:
        return {}

    # -- training -------------------------------------------------------------------
    def architecture_defaults(self, base=None) -> dict:
        return {"heads": 16, "mlp_ratio": 4}

    def shortcut_config(self, dim: int, *, width: int, n_block: int, heads: int, mlp_ratio: int, embed_t: bool,
                        dropout: float, base=None) -> ShortcutConfig:
        return ShortcutConfig(family=self.family, dim=dim, width=width, n_block=n_block, heads=heads,
                              mlp_ratio=mlp_ratio, embed_t=embed_t, dropout=dropout)

    def pair_inputs(self, revealed_at: torch.Tensor, final_ids: torch.Tensor, step: int,
                    num_image_tokens: int) -> tuple[dict, torch.Tensor]:
        """Shortcut inputs for the pair (step -> step+1) and the loss mask.

        revealed_at (B, T), final_ids (B, L) -> keyword inputs of ``MaskGITShortcut.forward``
        besides ``prev_feat`` (new_ids, new_positions, mask_ratio) and the
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
        inputs = {"new_ids": new_ids, "new_positions": new_positions, "mask_ratio": mask_ratio}
        return inputs, still_masked


DIMOO_LAYOUT = {
    "batching": "trajectory i is sampled in batch i // batch_size (default batch 1: one seed per trajectory)",
    "sequence": "each branch's whole sequence: prompt prefix, BOA BOI, rows x (cols image tokens + newline), "
                "EOI EOA; cond = <system>...</system><user>{prompt}</user>, uncond = the same with <uncondition>",
    "padding": "{b}.features / {b}.revealed_at / {b}.ids are right padded to feature_shapes[b][0] (the longest "
               "prompt of the list); {b}.length is each row's own sequence length; padded features are 0, padded "
               "revealed_at -1, padded ids pad_id",
    "positions": "sequence positions are each branch's own (the uncond prompt is shorter, so one image token sits "
                 "at different positions in the two branches); image positions = where revealed_at >= 0, in "
                 "row-major image order",
    "prompt": "prompt text: conditions.prompts[{b}.condition] (cond; -1 for uncond); prompt token ids: "
              "{b}.ids[:{b}.prefix_len] (the whole prefix before BOA)",
    "final_ids": "image codes 0..codebook_size-1 (vocab id = image_offset + code), row-major",
}


class DiMOORecipe:
    """Lumina-DiMOO: cond and uncond run as separate sequences of different lengths.

    Stored per trajectory and branch (see ``DIMOO_LAYOUT``, also written to the
    manifest): the features at every step, ``revealed_at`` in the branch's own sequence
    layout, the branch's final sequence ids (prompt token ids included), its valid
    length and prompt-prefix length. Every branch tensor is right padded to the longest
    prompt of the recording's prompt list, so shards stack whole batches.
    """

    family = "dimoo"
    pair_fields = ("ids", "length", "prefix_len")

    # -- recording ------------------------------------------------------------------
    def resolve_conditions(self, migm, classes=None, prompts=None) -> dict:
        if classes is not None:
            raise ValueError(f"{migm.name!r} is Lumina-DiMOO (text-to-image): pass prompts (--prompts FILE), "
                             f"not classes")
        if prompts is None:
            raise ValueError(f"{migm.name!r} is Lumina-DiMOO (text-to-image): pass prompts=[...] "
                             f"(--prompts FILE, one prompt per line)")
        if isinstance(prompts, str):
            prompts = [prompts]
        cleaned = [str(p).strip() for p in prompts]
        cleaned = [p for p in cleaned if p]
        if not cleaned:
            raise ValueError("the prompt list is empty (every line was blank)")
        if migm.tokenizer is None:
            raise ValueError(f"{migm.name!r} has no tokenizer loaded (tokenizer.json and the 'tokenizers' package "
                             f"are needed to record prompts)")
        return {"kind": "prompts", "prompts": cleaned, "order": "cycle"}

    def placement_regime(self, migm, conditions: dict) -> str:
        return COND  # every run follows a prompt

    def condition_of(self, conditions: dict, i: int) -> str:
        prompts = conditions["prompts"]
        return prompts[i % len(prompts)]

    def sampler_settings(self, *, cfg, temperature, height, width, **maskgit_only) -> dict:
        """Lumina-DiMOO's sampler options; MaskGIT-only ones (schedule, sm_temp, ...) do not apply and are ignored."""
        from shortcut_core.dimoo.prompt import token_grid

        token_grid(height, width)  # refuses sizes that are not multiples of 16
        if finite_number("temperature", temperature) < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return {"cfg": finite_number("cfg", cfg), "temperature": float(temperature), "height": int(height), "width": int(width)}

    def branches(self, sampler: dict) -> list[str]:
        return ["cond", "uncond"] if float(sampler.get("cfg", 0.0)) != 0 else ["cond"]

    @staticmethod
    def _grid(sampler: dict) -> tuple[int, int]:
        from shortcut_core.dimoo.prompt import token_grid

        return token_grid(sampler["height"], sampler["width"])

    def _block_len(self, sampler: dict) -> int:
        rows, cols = self._grid(sampler)
        return rows * (cols + 1) + 4  # BOA BOI, rows x (cols + newline), EOI EOA

    def feature_shapes(self, migm, branches: list[str], *, sampler: dict, conditions: dict,
                       **layout) -> dict[str, list[int]]:
        tok = migm.tokenizer
        block = self._block_len(sampler)
        prefix = {"cond": max(len(tok.conditional(p)) for p in set(conditions["prompts"])),
                  "uncond": len(tok.unconditional())}
        return {b: [prefix[b] + block, migm.config.d_model] for b in branches}

    def num_image_tokens(self, migm, sampler: dict) -> int:
        rows, cols = self._grid(sampler)
        return rows * cols

    def reveal_counts(self, migm, steps: int, sampler: dict) -> list[int]:
        from shortcut_core.dimoo.family import keep_masked

        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        L = self.num_image_tokens(migm, sampler)
        keep = [L] + [keep_masked(s, steps, L) for s in range(steps)]
        return [keep[s] - keep[s + 1] for s in range(steps)]

    def split_features(self, feats, branches: list[str], state=None) -> dict[str, torch.Tensor]:
        """StepInfo.feats (cond, uncond) -> branch -> (B, S_b, C); cond padding set to 0."""
        out = dict(zip(branches, feats))
        valid = getattr(state, "cond_valid", None)
        if valid is not None:
            out["cond"] = out["cond"].masked_fill(~valid[..., None], 0)
        return out

    def branch_records(self, migm, state, branches: list[str], *, shapes: dict, first: int, conditions: dict,
                       **layout) -> dict[str, dict[str, torch.Tensor]]:
        """Per branch (padded to ``shapes``): revealed_at, condition, ids, length, prefix_len."""
        c = migm.config
        B = state.batch
        block = state.rows * (state.cols + 1) + 4
        out = {}
        for b in branches:
            T = shapes[b][0]
            if b == "cond":
                ids, revealed = state.cond_ids(), state.revealed_at
                prefix_len = state.prompt_lens.long()
                condition = (first + torch.arange(B)) % len(conditions["prompts"])
            else:
                ids, revealed = state.uncond_ids(), state.revealed_at_uncond
                prefix_len = torch.full((B,), ids.shape[1] - block, dtype=torch.long)
                condition = torch.full((B,), -1, dtype=torch.long)
            length = prefix_len.to("cpu") + block
            S = ids.shape[1]
            if S > T:
                raise ValueError(f"{b} sequence of {S} tokens exceeds the recording's layout of {T}")
            pos = torch.arange(S)[None]
            valid = pos < length[:, None]
            ids = torch.where(valid, ids.cpu(), c.pad_id)
            revealed = torch.where(valid, revealed.cpu(), -1)
            out[b] = {
                "revealed_at": torch.nn.functional.pad(revealed, (0, T - S), value=-1),
                "condition": condition,
                "ids": torch.nn.functional.pad(ids, (0, T - S), value=c.pad_id).to(torch.int32),
                "length": length.to(torch.int32),
                "prefix_len": prefix_len.cpu().to(torch.int32),
            }
        return out

    def final_ids(self, result) -> torch.Tensor:
        return result.tokens.reshape(result.tokens.shape[0], -1)

    def extra_bytes(self, feature_shapes: dict) -> int:
        return sum(seq * 4 + 8 for seq, _ in feature_shapes.values())  # ids (int32), length, prefix_len

    def manifest_extra(self, migm, sampler: dict, conditions: dict) -> dict:
        c = migm.config
        rows, cols = self._grid(sampler)
        return {"image_grid": [rows, cols], "image_offset": c.image_offset, "pad_id": c.pad_id,
                "layout": DIMOO_LAYOUT}

    # -- training -------------------------------------------------------------------
    def architecture_defaults(self, base=None) -> dict:
        """The published recipe (``DiMOOShortcutConfig.for_base``): the base model's heads and SwiGLU width."""
        if base is None:
            raise ValueError("the DiMOO shortcut's defaults follow the base model: pass its config")
        return {"heads": base.n_heads, "mlp_ratio": None}

    def shortcut_config(self, dim: int, *, width: int, n_block: int, heads: int, mlp_ratio, embed_t: bool,
                        dropout: float, base=None):
        import math

        from shortcut_core.dimoo.config import DiMOOShortcutConfig

        if base is None:
            raise ValueError("a DiMOO shortcut config needs the base model's config")
        if dropout:
            raise ValueError("the DiMOO shortcut has no dropout; leave --dropout at 0")
        if dim != base.d_model:
            raise ValueError(f"recorded features have width {dim} but the base model has {base.d_model}")
        mlp_hidden = base.mlp_hidden if mlp_ratio is None else int(mlp_ratio * width)
        return DiMOOShortcutConfig.for_base(base, width=width, heads=heads, mlp_hidden=mlp_hidden, n_block=n_block,
                                            time_hidden=round(math.sqrt(width * 256)), embed_t=embed_t)

    def pair_inputs(self, revealed_at: torch.Tensor, final_ids: torch.Tensor, step: int, num_image_tokens: int, *,
                    branch: str, ids: torch.Tensor, length: torch.Tensor,
                    prefix_len: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """``DiMOOShortcut.forward`` keyword inputs for the pair (step -> step+1), and the loss mask.

        revealed_at, ids (B, T) in this branch's layout (right padded), length and
        prefix_len (B,). Gives exactly what ``DiMOOMIGM.shortcut_inputs`` gives at sampling
        time for a batch of these rows: cond new tokens = the whole prompt prefix, then the
        image tokens revealed at ``step`` in sequence order (rows padded to the longest,
        ``new_valid`` marks real entries); uncond = those image tokens only; positions are
        each branch's own. The sequences are cut to the longest row (``seq_valid`` marks
        padding, None when no row is padded); the loss mask is the image positions still
        masked after ``step``.
        """
        L = num_image_tokens
        B = revealed_at.shape[0]
        dev = revealed_at.device
        T = int(length.max())
        revealed = revealed_at[:, :T].long()
        ids = ids[:, :T].long()
        is_image = revealed >= 0
        if not bool((is_image.sum(1) == L).all()):
            raise ValueError(f"rows do not hold {L} revealed image tokens each ({is_image.sum(1).tolist()}); "
                             f"the recording is not a finished Lumina-DiMOO trajectory")
        image_pos = is_image.nonzero()[:, 1].reshape(B, L)  # row-major image order = sequence order
        image_step = revealed.gather(1, image_pos)
        new = image_step == step
        counts = new.sum(1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"rows reveal different counts at step {step} ({counts.tolist()}); "
                             f"batch only pairs recorded with one schedule")
        r = int(counts[0])
        new_pos = image_pos.gather(1, new.nonzero()[:, 1].reshape(B, r))  # (B, r) increasing
        mask_ratio = ((image_step > step).sum(1).double() / L).float()
        seq_valid = torch.arange(T, device=dev)[None] < length.to(dev).long()[:, None]
        if bool(seq_valid.all()):
            seq_valid = None
        if branch == "cond":
            from shortcut_core.dimoo.family import cond_new_positions

            positions, valid = cond_new_positions(prefix_len.to(dev), new_pos)
            inputs = {"new_ids": ids.gather(1, positions), "new_positions": positions,
                      "new_valid": None if seq_valid is None else valid,  # as DiMOOMIGM.shortcut_inputs gives
                      "mask_ratio": mask_ratio, "seq_valid": seq_valid}
        else:
            inputs = {"new_ids": ids.gather(1, new_pos), "new_positions": new_pos, "new_valid": None,
                      "mask_ratio": mask_ratio, "seq_valid": seq_valid}
        return inputs, revealed > step


RECIPES = {"maskgit": MaskGITRecipe(), "dimoo": DiMOORecipe()}


def recipe_for(family: str):
    try:
        return RECIPES[family]
    except KeyError:
        raise ValueError(
            f"recording and training know the families {', '.join(RECIPES)}, not {family!r}; "
            f"add a recipe for it in training/pairs.py"
        ) from None
