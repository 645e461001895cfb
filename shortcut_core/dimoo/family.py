"""Lumina-DiMOO family adapter: text-to-image sampling driven by ``shortcut_core.sampler.sample``.

Sampler (Lumina-DiMOO's own, defaults T=64, cfg 4.0, temperature 1.0). At step s:
  keep_n = max(1, floor(L · cos(π/2 · (s+1)/T))) for s < T−1, 0 at the last step
  logits = (1+cfg)·cond − cfg·uncond on the masked image positions (two separate forwards)
  every masked position gets a Gumbel-max sample (temperature); confidence = softmax
  probability of the sample; then the keep_n lowest by log conf + temperature·Gumbel are
  masked again.
Shortcut step: each branch's feature is predicted from its previous feature, the tokens
revealed at the previous step (cond branch: plus the whole prompt before BOA) and the
mask ratio (masked image tokens / L).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import CheckpointError, fingerprint as weights_fingerprint
from ..first_step import FirstStepMemo, weights_stamp
from ..placement import COND
from ..sampler import finite_number, gumbel_noise, masked_positions
from .config import DiMOOShortcutConfig, LLaDAConfig
from .llada import LLaDA
from .prompt import PromptTokenizer, build_sequence, token_grid
from .shortcut import DiMOOShortcut, shortcut_config_from_state_dict
from .vq import VQDecoder


def keep_masked(step: int, steps: int, num_tokens: int) -> int:
    """Image tokens still masked after ``step`` (Lumina-DiMOO's cosine schedule, float32 as upstream)."""
    if step >= steps - 1:
        return 0
    frac = torch.cos(0.5 * math.pi * torch.tensor([(step + 1) / steps], dtype=torch.float32))
    return max(1, int((torch.tensor(float(num_tokens)) * frac).floor().item()))


def cond_new_positions(prompt_lens: torch.Tensor, new_image_pos: torch.Tensor,
                       longest_prompt: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cond-branch "new token" positions: the whole prompt before BOA, then the new image tokens.

    prompt_lens (B,) differ per row, new_image_pos (B, r) increasing -> positions (B, n) and
    a (B, n) validity mask, rows right padded to the longest (padding points at position 0).
    Shared by sampling and training so both feed the shortcut the same inputs. The sampler
    passes ``longest_prompt`` (known on the host) so a step never waits for the device.
    """
    B, r = new_image_pos.shape
    if longest_prompt is None:
        longest_prompt = int(prompt_lens.max())
    pl = prompt_lens.long()[:, None]
    j = torch.arange(longest_prompt + r, device=new_image_pos.device)[None]  # (1, n)
    is_prompt = j < pl
    is_image = (j >= pl) & (j < pl + r)
    if r:
        k = (j - pl).clamp(0, r - 1).expand(B, -1)
        positions = torch.where(is_prompt, j, torch.where(is_image, new_image_pos.gather(1, k), 0))
    else:
        positions = torch.where(is_prompt, j, 0).expand(B, -1)
    return positions, is_prompt | is_image


@dataclass
class DiMOOState:
    prompts: list
    rows: int
    cols: int
    steps: int
    cfg: float
    temperature: float
    image: torch.Tensor  # (B, L) vocab ids of the image tokens, mask_id while masked
    cond_template: torch.Tensor  # (B, Sc) initial cond sequences, right padded with pad_id
    cond_valid: torch.Tensor | None  # (B, Sc) bool, None when no row is padded
    cond_image_pos: torch.Tensor  # (B, L) positions of the image tokens in the cond sequences
    prompt_lens: torch.Tensor  # (B,) tokens before BOA in each cond sequence
    uncond_template: torch.Tensor | None  # (B, Su); None without guidance
    uncond_image_pos: torch.Tensor | None  # (B, L)
    revealed_at: torch.Tensor  # (B, Sc) step that revealed each cond position, -1 never
    num_masked: int  # image tokens still masked (the same in every row)
    longest_prompt: int  # max(prompt_lens), kept on the host
    # Set by each advance, read by the next shortcut step.
    new_image_idx: torch.Tensor | None = None  # (B, r) indices into 0..L-1, increasing
    # Step 0's memo keys per branch (cond, then uncond when guided): each row's whole sequence,
    # made in ``start`` from the host-side sequences, so the loop never waits for them.
    first_keys: list[list[tuple]] = field(default_factory=list)
    mask_ratio: torch.Tensor | None = None  # (B,)
    extras: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.image.shape[0]

    @property
    def guided(self) -> bool:
        return self.uncond_template is not None

    @property
    def num_image_tokens(self) -> int:
        return self.image.shape[1]

    def cond_ids(self) -> torch.Tensor:
        return self.cond_template.scatter(1, self.cond_image_pos, self.image)

    def uncond_ids(self) -> torch.Tensor:
        return self.uncond_template.scatter(1, self.uncond_image_pos, self.image)

    @property
    def revealed_at_uncond(self) -> torch.Tensor | None:
        """(B, Su) the same reveal steps laid out on the unconditional sequence."""
        if not self.guided:
            return None
        out = torch.full_like(self.uncond_template, -1)
        return out.scatter(1, self.uncond_image_pos, self.revealed_at.gather(1, self.cond_image_pos))


# Lumina-DiMOO's own sampler settings, used where a model recommends none.
PUBLISHED_SAMPLING = {"cfg": 4.0, "temperature": 1.0}


class DiMOOMIGM:
    """Lumina-DiMOO base model + VQ decoder + prompt tokenizer, driven by ``sampler.sample``.

    ``conditions``: a prompt string, a list of prompt strings, or pre-tokenized
    conditional prefixes (lists of ids ending with ``</user>``; then pass ``uncond_ids``
    too when no tokenizer is loaded).
    """

    family = "dimoo"

    def __init__(self, model: LLaDA, vq: VQDecoder | None = None, tokenizer: PromptTokenizer | None = None, *,
                 name: str = "lumina-dimoo", fingerprint: str = "", info: dict | None = None):
        self.model = model.eval()
        self.vq = vq.eval() if vq is not None else None
        self.tokenizer = tokenizer
        self.config: LLaDAConfig = model.config
        self.name = name
        self.fingerprint = fingerprint or weights_fingerprint(model.state_dict(), model.config.to_dict())
        self.info = dict(info or {})
        # a 1024x1024 step-0 feature of the 8 B model is 34 MB in bf16: room for a few prompts
        self.first_step = FirstStepMemo(self._first_step_feature, max_mib=512)

    @classmethod
    def from_parts(cls, parts, name: str | None = None) -> "DiMOOMIGM":
        info = {"path": str(parts.path), "load": [r.summary() for r in parts.reports]}
        return cls(parts.model, parts.vq, parts.tokenizer, name=name or Path(parts.path).name, info=info)

    # -- housekeeping -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.wte.weight.dtype

    def to(self, device=None, dtype=None) -> "DiMOOMIGM":
        self.model.to(device=device, dtype=dtype)
        if self.vq is not None:
            self.vq.to(device=device)  # the decoder stays fp32
        return self

    def _prefixes(self, conditions, batch: int | None, uncond_ids) -> tuple[list, list[list[int]], list[int] | None]:
        """(conditions as a list, cond prefixes, uncond prefix or None)."""
        if isinstance(conditions, str) or (
            isinstance(conditions, (list, tuple)) and conditions and all(isinstance(t, int) for t in conditions)
        ):
            conditions = [conditions] * (batch or 1)
        conditions = list(conditions)
        if not conditions:
            raise ValueError("no prompt given: pass a prompt string or a list of them")
        if batch is not None and batch != len(conditions):
            raise ValueError(f"batch={batch} but {len(conditions)} prompts were given")
        prefixes = []
        for cond in conditions:
            if isinstance(cond, str):
                if self.tokenizer is None:
                    raise RuntimeError(f"{self.name} has no tokenizer loaded; install 'tokenizers' or pass token ids")
                prefixes.append(self.tokenizer.conditional(cond))
            else:
                prefixes.append([int(t) for t in cond])
        if uncond_ids is None and self.tokenizer is not None:
            uncond_ids = self.tokenizer.unconditional()
        return conditions, prefixes, (None if uncond_ids is None else [int(t) for t in uncond_ids])

    # -- sampler protocol ---------------------------------------------------------
    def passes_per_full_step(self, state: DiMOOState) -> int:
        return 2 if state.guided else 1  # cond and uncond are separate forwards

    def placement_regime(self, state: DiMOOState) -> str:
        return COND  # every run follows a prompt

    def sampling_settings(self, state: DiMOOState) -> dict:
        return {"cfg": state.cfg, "temperature": state.temperature}

    @property
    def sampling_defaults(self) -> dict:
        """What ``start`` uses for an option left out: the model's recommended settings over Lumina-DiMOO's own."""
        return {**PUBLISHED_SAMPLING, **self.info.get("sampling_defaults", {})}

    def start(self, conditions, *, steps: int, generator=None, cfg: float | None = None,
              temperature: float | None = None, height: int = 1024, width: int = 1024, batch: int | None = None,
              uncond_ids=None) -> DiMOOState:
        c, dev = self.config, self.device
        defaults = self.sampling_defaults
        cfg = finite_number("cfg", defaults["cfg"] if cfg is None else cfg)
        temperature = finite_number("temperature", defaults["temperature"] if temperature is None else temperature)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        rows, cols = token_grid(height, width)
        conditions, prefixes, uncond_prefix = self._prefixes(conditions, batch, uncond_ids)
        if cfg != 0 and uncond_prefix is None:
            raise RuntimeError("guidance needs the unconditional prefix: load the tokenizer or pass uncond_ids=")
        seqs = [build_sequence(p, rows, cols, c) for p in prefixes]
        B, S = len(seqs), max(s.length for s in seqs)
        template = torch.full((B, S), c.pad_id, dtype=torch.long)
        valid = torch.zeros(B, S, dtype=torch.bool)
        for i, s in enumerate(seqs):
            template[i, : s.length] = s.ids
            valid[i, : s.length] = True
        state = DiMOOState(
            prompts=conditions,
            rows=rows, cols=cols, steps=steps, cfg=float(cfg), temperature=float(temperature),
            image=torch.full((B, rows * cols), c.mask_id, dtype=torch.long, device=dev),
            cond_template=template.to(dev), cond_valid=None if bool(valid.all()) else valid.to(dev),
            cond_image_pos=torch.stack([s.image_positions for s in seqs]).to(dev),
            prompt_lens=torch.tensor([s.prompt_len for s in seqs], device=dev),
            uncond_template=None, uncond_image_pos=None,
            revealed_at=torch.full((B, S), -1, dtype=torch.long, device=dev),
            num_masked=rows * cols,
            longest_prompt=max(s.prompt_len for s in seqs),
            first_keys=[[tuple(s.ids.tolist()) for s in seqs]],
        )
        if cfg != 0:
            u = build_sequence(uncond_prefix, rows, cols, c)
            state.first_keys.append([tuple(u.ids.tolist())] * B)
            state.uncond_template = u.ids.to(dev).expand(B, -1).clone()
            state.uncond_image_pos = u.image_positions.to(dev).expand(B, -1).clone()
        return state

    def _first_step_feature(self, ids: tuple) -> torch.Tensor:
        return self.model.features(torch.tensor([ids], device=self.device))

    def _first_step(self, state: DiMOOState) -> tuple[torch.Tensor, ...]:
        """Step 0 from memory: each sequence (prompt, size, all-[MASK] image) computed alone and
        padded back to the batch's length (padded positions are never read)."""
        stamp = weights_stamp(self.model)
        lengths = [state.cond_template.shape[1]] + ([state.uncond_template.shape[1]] if state.guided else [])
        feats, all_hit = [], True
        for keys, length in zip(state.first_keys, lengths):
            rows, hit = self.first_step.rows(keys, stamp, self.device)
            all_hit = all_hit and hit
            feats.append(torch.cat([F.pad(r, (0, 0, 0, length - r.shape[1])) for r in rows]))
        state.extras["from_memory"] = all_hit
        return tuple(feats)

    def base_features(self, state: DiMOOState) -> tuple[torch.Tensor, ...]:
        if state.num_masked == state.num_image_tokens:
            return self._first_step(state)
        cond = self.model.features(state.cond_ids(), attention_mask=state.cond_valid)
        if not state.guided:
            return (cond,)
        return cond, self.model.features(state.uncond_ids())

    def shortcut_inputs(self, state: DiMOOState) -> list[dict]:
        """Per branch: the shortcut's new_ids, new_positions, new_valid, mask_ratio, seq_valid."""
        if state.new_image_idx is None:
            raise RuntimeError("a shortcut step needs a previous step: step 0 must be a full step")
        idx = state.new_image_idx  # (B, r)
        B, r = idx.shape
        new_image = state.image.gather(1, idx)  # (B, r)
        cond_img_pos = state.cond_image_pos.gather(1, idx)  # (B, r)
        positions, valid = cond_new_positions(state.prompt_lens, cond_img_pos, state.longest_prompt)
        cond_ids = state.cond_ids().gather(1, positions)
        # Prompts of one length pad nothing: None, known on the host, spares the shortcut a mask.
        branches = [dict(new_ids=cond_ids, new_positions=positions,
                         new_valid=None if state.cond_valid is None else valid,
                         mask_ratio=state.mask_ratio, seq_valid=state.cond_valid)]
        if state.guided:
            branches.append(dict(new_ids=new_image, new_positions=state.uncond_image_pos.gather(1, idx),
                                 new_valid=None, mask_ratio=state.mask_ratio, seq_valid=None))
        return branches

    def shortcut_features(self, shortcut: DiMOOShortcut, feats, state: DiMOOState) -> tuple[torch.Tensor, ...]:
        return tuple(shortcut(f, **inputs) for f, inputs in zip(feats, self.shortcut_inputs(state)))

    def advance(self, state: DiMOOState, feats, step: int, generator) -> None:
        c = self.config
        B, L = state.image.shape
        m = state.num_masked
        if m == 0:
            state.new_image_idx = torch.zeros(B, 0, dtype=torch.long, device=state.image.device)
            state.mask_ratio = torch.zeros(B, device=state.image.device)
            return
        keep = min(keep_masked(step, state.steps, L), m)
        idx = masked_positions(state.image == c.mask_id, m)  # (B, m)
        logits = self.model.image_logits(feats[0], state.cond_image_pos.gather(1, idx)).float()
        if state.guided:
            uncond = self.model.image_logits(feats[1], state.uncond_image_pos.gather(1, idx)).float()
            logits = (1 + state.cfg) * logits - state.cfg * uncond
        dev = logits.device
        if state.temperature == 0:
            sampled = logits.argmax(-1)
        else:
            sampled = (logits / state.temperature + gumbel_noise(logits.shape, generator, dev)).argmax(-1)
        conf = torch.softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]  # (B, m)
        filled = sampled + c.image_offset
        if keep:
            score = torch.log(conf.clamp_min(1e-20))
            if state.temperature:
                score = score + state.temperature * gumbel_noise(conf.shape, generator, dev)
            remask = torch.zeros_like(conf, dtype=torch.bool)
            remask.scatter_(1, score.topk(keep, dim=-1, largest=False).indices, True)
            filled = torch.where(remask, c.mask_id, filled)
            revealed = idx.gather(1, masked_positions(~remask, m - keep))
        else:
            revealed = idx
        state.image.scatter_(1, idx, filled)
        state.revealed_at.scatter_(1, state.cond_image_pos.gather(1, revealed), step)
        state.new_image_idx = revealed  # increasing: idx is, and masking keeps the order
        state.num_masked = keep
        state.mask_ratio = torch.full((B,), keep / L, device=state.image.device)

    def final_tokens(self, state: DiMOOState) -> torch.Tensor:
        """(B, rows, cols) image codes 0…codebook_size−1 (mask_id − offset where still masked)."""
        return (state.image - self.config.image_offset).reshape(state.batch, state.rows, state.cols)

    def decode(self, state: DiMOOState) -> torch.Tensor:
        return self.decode_tokens(self.final_tokens(state))

    @torch.inference_mode()
    def preview(self, state: DiMOOState, feats, index: int = 0) -> torch.Tensor:
        """Image ``index`` as it stands after a step: its tokens so far, each still-masked position
        filled with the most likely code under this step's (conditional) features; (H, W, 3) on the CPU."""
        c = self.config
        image = state.image[index:index + 1].clone()
        masked = image == c.mask_id  # (1, L)
        if bool(masked.any()):
            idx = masked[0].nonzero()[:, 0][None]  # (1, m)
            logits = self.model.image_logits(feats[0][index:index + 1],
                                             state.cond_image_pos[index:index + 1].gather(1, idx))
            image.scatter_(1, idx, logits.argmax(-1) + c.image_offset)
        return self.decode_tokens((image - c.image_offset).reshape(1, state.rows, state.cols))[0]

    def decode_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, rows, cols) codes -> (B, H, W, 3) float32 in [0, 1] on the CPU."""
        if self.vq is None:
            raise RuntimeError(f"{self.name} has no VQ decoder loaded (the checkpoint's vqvae/ folder)")
        if bool((codes < 0).any()):
            raise ValueError("cannot decode image tokens that are still masked")
        vq_device = self.vq.post_quant_conv.weight.device
        images = self.vq.decode(codes.to(vq_device))
        return images.float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()

    # -- shortcuts ----------------------------------------------------------------
    def shortcut_config_from_dict(self, d: dict) -> DiMOOShortcutConfig:
        if d.get("family", "dimoo") != "dimoo":
            raise CheckpointError(f"this is a {d.get('family')!r} shortcut, but MIGM {self.name!r} is Lumina-DiMOO; "
                                  f"pick a shortcut trained for this model")
        return DiMOOShortcutConfig.from_dict(d)

    def shortcut_config_from_state_dict(self, sd: dict) -> DiMOOShortcutConfig:
        return shortcut_config_from_state_dict(sd, self.config)

    def build_shortcut(self, config: DiMOOShortcutConfig) -> DiMOOShortcut:
        if not isinstance(config, DiMOOShortcutConfig) or config.dim != self.config.d_model:
            raise CheckpointError(
                f"shortcut expects {getattr(config, 'family', '?')} features of width {getattr(config, 'dim', '?')}, "
                f"but MIGM {self.name!r} is dimoo with width {self.config.d_model}; "
                f"pick a shortcut trained for this model"
            )
        with torch.device(self.device):
            shortcut = DiMOOShortcut(config)
        return shortcut.bind(self.model.wte)

    def check_shortcut(self, shortcut) -> None:
        if not isinstance(shortcut, DiMOOShortcut):
            raise TypeError(f"MIGM {self.name!r} needs a DiMOO shortcut, got {type(shortcut).__name__}")
        if shortcut.config.dim != self.config.d_model:
            raise ValueError(
                f"shortcut maps features of width {shortcut.config.dim} but MIGM {self.name!r} has width "
                f"{self.config.d_model}; pick a shortcut trained for this model"
            )
        if shortcut.wte is not None and shortcut.wte.shape != self.model.wte.weight.shape:
            raise ValueError(
                f"shortcut is bound to an embedding table of shape {tuple(shortcut.wte.shape)} but MIGM {self.name!r} "
                f"has {tuple(self.model.wte.weight.shape)}; load it with load_shortcut(path, migm)"
            )
        if shortcut.wte is None or shortcut.wte.data_ptr() != self.model.wte.weight.data_ptr():
            shortcut.bind(self.model.wte)  # unbound, or the MIGM was moved since: its table where it is now
