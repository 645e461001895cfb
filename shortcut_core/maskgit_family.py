"""MaskGIT family adapter: class-conditional sampling with the MaskGIT loop.

Guidance runs one batch of 2B (conditional half, then the "no class" half); each half
carries its own feature, so the shortcut also runs on 2B rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .checkpoints import CheckpointError
from .conditions import resolve_class_list
from .first_step import FirstStepMemo, weights_stamp
from .maskgit import MaskGIT
from .placement import regime_of
from .sampler import categorical, finite_number, gumbel_noise, masked_positions
from .schedules import check_reveal_mode, reveal_counts
from .shortcut import MaskGITShortcut, ShortcutConfig, infer_shortcut_config


# A CPU runs a wide batch fastest in blocks of rows whose feed-forward activations stay about
# this size: beyond it every layer streams fresh buffers through memory and page faults, and a
# guided pass of 500 Fashion-MNIST images ran at half speed (docs/results/bench_row_blocks.md).
CPU_BLOCK_BYTES = 16 << 20
CPU_MIN_BLOCK_ROWS = 64  # never smaller: below this the matrix products lose their own efficiency


def cpu_row_blocks(rows: int, config, device: torch.device, dtype: torch.dtype, budget: int | None) -> int:
    """How many equal blocks of rows one base pass runs in: 1 off the CPU (one launch per layer is
    what a GPU wants), without a ``budget`` (bytes) and for batches that fit it. Rows never see
    each other in a MaskGIT pass, so the features are the blocks' features stacked."""
    if device.type != "cpu" or budget is None:
        return 1
    row_bytes = config.seq_len * config.mlp_dim * dtype.itemsize
    block = max(CPU_MIN_BLOCK_ROWS, budget // row_bytes)
    return max(1, -(-rows // block))


@dataclass
class MaskGITState:
    classes: torch.Tensor  # (B,) requested class indices
    tokens: torch.Tensor  # (B, grid*grid) current ids, mask_id where still masked
    revealed_at: torch.Tensor  # (B, T) step that revealed each position, -1 never (class slot)
    counts: list[int]  # tokens revealed per step
    steps: int
    cfg: float
    sm_temp: float
    r_temp: float
    randomize: str
    num_masked: int  # image positions still masked (the same in every row)
    # (B, 1, 1) 1.0 for conditional rows, 0.0 for unconditional ones; None when every row is conditional.
    guide_rows: torch.Tensor | None = None
    # Step 0's memo keys, one per row of the base pass (classes, then the null class per guided
    # row): made in ``start`` while the classes are on the host, so the loop never waits for them.
    first_keys: list[int] = field(default_factory=list)
    # "cond", "uncond" or None (mixed): which of a shortcut file's per-regime placements applies,
    # decided in ``start`` from the classes while they are on the host.
    regime: str | None = None
    schedule: str = "arccos"  # the reveal schedule ``counts`` follow (``sampling_settings``)
    # Set by each reveal, read by the next shortcut step: (rows, n) each.
    new_ids: torch.Tensor | None = None
    new_positions: torch.Tensor | None = None
    mask_ratio: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def guided(self) -> bool:
        return self.cfg != 0


# Published MaskGIT-512 settings (Halton-MaskGIT v1.0), used where a model file recommends none.
PUBLISHED_SAMPLING = {"cfg": 2.8, "sm_temp": 1.0, "r_temp": 7.0, "schedule": "arccos", "randomize": "linear"}


def checked_sampling_options(options: dict) -> dict:
    """MaskGIT sampling options validated (numbers as floats); unknown keys are an error."""
    unknown = sorted(set(options) - set(PUBLISHED_SAMPLING))
    if unknown:
        raise ValueError(f"unknown MaskGIT sampling option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(PUBLISHED_SAMPLING)}")
    o = dict(options)
    for key in ("cfg", "sm_temp", "r_temp"):
        if key in o:
            o[key] = finite_number(key, o[key])
            if key != "cfg" and o[key] < 0:
                raise ValueError(f"temperatures must be >= 0, got {key} {o[key]}")
    if "schedule" in o:
        check_reveal_mode(o["schedule"])
    if "randomize" in o and o["randomize"] not in ("linear", "none"):
        raise ValueError(f"randomize must be 'linear' or 'none', got {o['randomize']!r}")
    return o


class MaskGITMIGM:
    """A MaskGIT base model plus its VQGAN, driven by ``shortcut_core.sampler.sample``."""

    family = "maskgit"

    def __init__(self, model: MaskGIT, vqgan=None, *, name: str = "maskgit", class_names: Sequence[str] | None = None,
                 fingerprint: str = "", info: dict | None = None):
        self.model = model.eval()
        self.vqgan = vqgan.eval() if vqgan is not None else None
        self.name = name
        self.config = model.config
        self.class_names = list(class_names) if class_names else None
        self.fingerprint = fingerprint
        self.info = dict(info or {})
        self.first_step = FirstStepMemo(self._first_step_feature)
        self.cpu_block_bytes: int | None = CPU_BLOCK_BYTES  # None: every base pass in one block

    # -- housekeeping -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.tok_emb.weight.dtype

    def to(self, device=None, dtype=None) -> "MaskGITMIGM":
        self.model.to(device=device, dtype=dtype)
        if self.vqgan is not None:
            self.vqgan.to(device=device)  # the decoder stays fp32: it is cheap and fp16 bands show
        return self

    @property
    def sampling_defaults(self) -> dict:
        """What ``start`` uses for an option the caller leaves out: the model file's recommended
        settings (``info["sampling_defaults"]``) over the published MaskGIT-512 ones."""
        return {**PUBLISHED_SAMPLING, **self.info.get("sampling_defaults", {})}

    def resolve_classes(self, classes, batch: int | None = None) -> torch.Tensor:
        """Class spec (``'0-9'``, ``'all'``, ``'none'``, names), index, name or list -> (B,) long.

        ``none`` is the null class (unconditional sampling). A single class with ``batch`` repeats.
        """
        c = self.config
        out = resolve_class_list(classes, c.num_classes, c.null_class, self.class_names, model_name=repr(self.name),
                                 batch=batch)
        return torch.tensor(out, dtype=torch.long)

    # -- sampler protocol ---------------------------------------------------------
    def passes_per_full_step(self, state: MaskGITState) -> int:
        return 1  # cond and uncond share one batched forward

    def placement_regime(self, state: MaskGITState) -> str | None:
        """Which of a shortcut file's per-regime placements applies: null-class rows are unconditional."""
        return state.regime

    def sampling_settings(self, state: MaskGITState) -> dict:
        """The options this run samples at, as ``start`` resolved them: what a calibrated
        placement's ``sampled_with`` is compared with."""
        return {"cfg": state.cfg, "sm_temp": state.sm_temp, "r_temp": state.r_temp, "schedule": state.schedule,
                "randomize": state.randomize}

    def start(self, classes, *, steps: int, generator, cfg: float | None = None, sm_temp: float | None = None,
              r_temp: float | None = None, schedule: str | None = None, randomize: str | None = None,
              batch: int | None = None) -> MaskGITState:
        """Options left at None take ``sampling_defaults``. Rows of the null class (``'none'``)
        are unconditional: guidance leaves them untouched, and a batch of only such rows
        runs one pass per step whatever ``cfg`` says."""
        c = self.config
        given = {"cfg": cfg, "sm_temp": sm_temp, "r_temp": r_temp, "schedule": schedule, "randomize": randomize}
        o = checked_sampling_options({k: (self.sampling_defaults[k] if v is None else v) for k, v in given.items()})
        classes = self.resolve_classes(classes, batch)
        uncond = classes == c.null_class
        cfg = 0.0 if bool(uncond.all()) else o["cfg"]
        guide_rows = (~uncond).float()[:, None, None].to(self.device) if cfg and bool(uncond.any()) else None
        first_keys = classes.tolist() + ([c.null_class] * len(classes) if cfg else [])
        classes = classes.to(self.device)
        B = classes.shape[0]
        tokens = torch.full((B, c.num_image_tokens), c.mask_id, dtype=torch.long, device=self.device)
        revealed_at = torch.full((B, c.seq_len), -1, dtype=torch.long, device=self.device)
        return MaskGITState(
            classes=classes, tokens=tokens, revealed_at=revealed_at,
            counts=reveal_counts(c.num_image_tokens, steps, o["schedule"]), steps=steps,
            cfg=cfg, sm_temp=o["sm_temp"], r_temp=o["r_temp"], randomize=o["randomize"],
            num_masked=c.num_image_tokens, guide_rows=guide_rows, first_keys=first_keys,
            regime=regime_of(uncond.tolist()), schedule=o["schedule"],
        )

    def _first_step_feature(self, class_index: int) -> torch.Tensor:
        c = self.config
        tokens = torch.full((1, c.num_image_tokens), c.mask_id, dtype=torch.long, device=self.device)
        return self.model.features(tokens, torch.tensor([class_index], device=self.device))

    def base_features(self, state: MaskGITState) -> torch.Tensor:
        if state.num_masked == self.config.num_image_tokens:
            rows, state.extras["from_memory"] = self.first_step.rows(state.first_keys, weights_stamp(self.model),
                                                                     self.device)
            return torch.cat(rows)
        return self.batched_features(state)

    def batched_features(self, state: MaskGITState) -> torch.Tensor:
        """One base pass over every row (the guided half appended), at any step: what the
        reference runs at every full step, step 0 included."""
        tokens, classes = state.tokens, state.classes
        if state.guided:
            tokens = torch.cat([tokens, tokens])
            classes = torch.cat([classes, torch.full_like(classes, self.config.null_class)])
        blocks = cpu_row_blocks(tokens.shape[0], self.config, self.device, self.dtype, self.cpu_block_bytes)
        if blocks == 1:
            return self.model.features(tokens, classes)
        return torch.cat([self.model.features(t, k) for t, k in zip(tokens.chunk(blocks), classes.chunk(blocks))])

    def shortcut_features(self, shortcut: MaskGITShortcut, feats: torch.Tensor, state: MaskGITState) -> torch.Tensor:
        rows = feats.shape[0]
        reps = rows // state.batch
        return shortcut(
            feats,
            state.new_ids.repeat(reps, 1),
            state.new_positions.repeat(reps, 1),
            state.mask_ratio.repeat(reps),
        )

    def advance(self, state: MaskGITState, feats: torch.Tensor, step: int, generator) -> None:
        c = self.config
        B, N = state.batch, state.steps
        m = state.num_masked
        n = min(state.counts[step], m)
        if n == 0:
            return
        positions = masked_positions(state.tokens == c.mask_id, m)  # (B, m)
        rows = positions.repeat(feats.shape[0] // B, 1)
        picked = feats.gather(1, rows[..., None].expand(-1, -1, feats.shape[-1])).float()  # (rows, m, hidden)
        if state.guided:
            # The head is linear with one bias for both halves, so (1+w)*cond - w*uncond on the
            # features equals it on the logits, at half the head's cost.
            cond, uncond = picked.chunk(2)
            w = state.cfg * step / (N - 1) if N > 1 else 0.0
            if state.guide_rows is not None:
                w = w * state.guide_rows  # unconditional rows: cond == uncond, keep them exactly unguided
            picked = (1 + w) * cond - w * uncond
        logits = self.model.head(picked, positions)
        probs = torch.softmax(logits if state.sm_temp == 1 else logits * state.sm_temp, dim=-1)  # (B, m, K)
        sampled = categorical(probs, generator)
        conf = probs.gather(-1, sampled[..., None])[..., 0].log()
        if state.randomize == "linear" and state.r_temp:
            ratio = step / (N - 1) if N > 1 else 1.0
            conf = conf + state.r_temp * (1 - ratio) * gumbel_noise(conf.shape, generator, conf.device)
        pick = conf.topk(n, dim=-1).indices.sort(dim=-1).values  # (B, n), increasing position
        new_positions = positions.gather(1, pick)
        new_ids = sampled.gather(1, pick)
        state.tokens.scatter_(1, new_positions, new_ids)
        state.revealed_at.scatter_(1, new_positions, step)
        state.new_ids, state.new_positions = new_ids, new_positions
        state.num_masked = m - n
        state.mask_ratio = torch.full((B,), (m - n) / c.num_image_tokens, device=self.device)

    def head_logits(self, feats: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Logits of the base model's head at the positions ``where`` (B, T) marks, (n, codes):
        what a training loss on the token distributions compares. Only image positions may be marked."""
        rows, positions = where.nonzero(as_tuple=True)
        return self.model.head(feats[rows, positions], positions)

    def final_tokens(self, state: MaskGITState) -> torch.Tensor:
        return state.tokens.reshape(state.batch, self.config.grid, self.config.grid)

    @torch.inference_mode()
    def preview(self, state: MaskGITState, feats: torch.Tensor, index: int = 0) -> torch.Tensor:
        """Image ``index`` as it stands after a step: its tokens so far, each still-masked position
        filled with the most likely code under this step's (conditional) features; (H, W, 3) on the CPU."""
        tokens = state.tokens[index:index + 1].clone()
        masked = tokens == self.config.mask_id  # (1, L): image positions
        if bool(masked.any()):
            where = torch.zeros(feats[index:index + 1].shape[:2], dtype=torch.bool, device=masked.device)
            where[:, : masked.shape[1]] = masked
            tokens[masked] = self.head_logits(feats[index:index + 1].float(), where).argmax(-1)
        return self.decode_tokens(tokens.reshape(1, self.config.grid, self.config.grid))[0]

    def decode(self, state: MaskGITState) -> torch.Tensor:
        return self.decode_tokens(self.final_tokens(state))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, grid, grid) code ids -> (B, H, W, 3) float32 in [0, 1] on the CPU."""
        if self.vqgan is None:
            raise RuntimeError(f"{self.name} has no VQGAN decoder attached; load one with load_migm(..., vq_path=...)")
        if (tokens == self.config.mask_id).any():
            raise ValueError("cannot decode tokens that are still masked")
        images = self.vqgan.decode(tokens.to(self.device))
        images = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
        if images.shape[-1] == 1:
            images = images.expand(-1, -1, -1, 3)
        return images.contiguous().cpu()

    # -- shortcuts ----------------------------------------------------------------
    def build_shortcut(self, config: ShortcutConfig) -> MaskGITShortcut:
        if config.family != self.family or config.dim != self.config.hidden:
            raise CheckpointError(
                f"shortcut expects {config.family} features of width {config.dim}, but MIGM {self.name!r} is "
                f"{self.family} with width {self.config.hidden}; pick a shortcut trained for this model"
            )
        shortcut = MaskGITShortcut(config).to(self.device)
        shortcut.bind_embeddings(self.model.tok_emb.weight, self.model.pos_emb)
        return shortcut

    def shortcut_config_from_dict(self, d: dict) -> ShortcutConfig:
        return ShortcutConfig.from_dict(d)

    def shortcut_config_from_state_dict(self, sd: dict) -> ShortcutConfig:
        return infer_shortcut_config(sd)

    def check_shortcut(self, shortcut) -> None:
        if not isinstance(shortcut, MaskGITShortcut):
            raise TypeError(f"MIGM {self.name!r} needs a MaskGIT shortcut, got {type(shortcut).__name__}")
        if shortcut.wpe.shape[0] != self.config.seq_len or shortcut.wte.shape[0] != self.config.vocab_size:
            raise ValueError(
                f"shortcut is bound to embeddings of shape {tuple(shortcut.wte.shape)} / {tuple(shortcut.wpe.shape)} "
                f"but MIGM {self.name!r} has vocab {self.config.vocab_size} and sequence {self.config.seq_len}; "
                f"load it with load_shortcut(path, migm)"
            )
        if shortcut.wte.data_ptr() != self.model.tok_emb.weight.data_ptr():
            # the MIGM was moved (to another device, by ComfyUI's model management...) after the
            # shortcut was bound: follow its embeddings where they are now (a view, no copy)
            shortcut.bind_embeddings(self.model.tok_emb.weight, self.model.pos_emb)
