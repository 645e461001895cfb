"""Train a shortcut on recorded trajectories.

    python -m training.train --data DIR --migm BASE_FILE --out shortcut.safetensors
    torchrun --nproc_per_node=4 -m training.train --data DIR --migm BASE --out FILE

Loss: MSE between the predicted and the recorded next feature at the positions still
masked after step s (the ones whose logits the next step needs). AdamW with step decay,
an EMA of the weights (the EMA is what gets saved), gradient accumulation, bf16
autocast on GPUs, DistributedDataParallel under torchrun (NCCL on GPUs, gloo on CPUs;
each rank reads its own share of the shards; rank 0 alone writes logs and checkpoints).

The run folder (``--run-dir``, default ``OUT`` with ``.run`` instead of the suffix)
holds ``train.log``, ``metrics.jsonl`` and checkpoints ``ckpt-{step}.safetensors`` (model,
EMA, optimizer tensors, RNG states) + ``ckpt-{step}.json`` (step, data positions,
settings); ``--resume`` continues bit-exactly from the newest one.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from shortcut_core import load_migm, save_shortcut
from shortcut_core.checkpoints import CheckpointError, refuse_overwriting
from shortcut_core.progress import ProgressBar

from .checkpoints import (TrainingError, checkpoint_paths, load_newest_valid, read_checkpoint, resolve_resume,
                          restore_state, state_tensors, write_checkpoint)
from .data import PairBatch, PairStream, Recording, gather_pairs
from .distributed import Dist, setup, share
from .trajectories import ManifestError, ShardError

# Settings a --resume must share with the run it continues, or the result is not the same run.
EXACT_KEYS = ("data_id", "world_size", "batch", "accum", "window", "seed", "val_fraction", "val_max", "shortcut_config",
              "init")


class TrainingInterrupted(RuntimeError):
    """``should_stop`` asked the run to stop (used for tests and hosts); nothing is saved."""


@dataclass
class TrainResult:
    out: Path
    steps: int
    seconds: float
    pairs_per_second: float
    val: dict | None
    checkpoints: list[Path] = field(default_factory=list)
    shards_read: list[list[str]] = field(default_factory=list)  # per rank


# -- small pieces ------------------------------------------------------------------


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` (B, T) is true, all channels."""
    m = mask[..., None].to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp(min=1)


def lr_at(step: int, base: float, decay: float, milestones: Sequence[int]) -> float:
    """Step decay: ``base * decay ** (number of milestones already passed)``."""
    return base * decay ** sum(step >= m for m in milestones)


def shortcut_config_from_args(args, dim: int, recipe, base=None):
    """The shortcut config the CLI asks for.

    ``--heads`` / ``--mlp-ratio`` left out take the family's defaults (MaskGIT: 16 heads,
    ratio 4; DiMOO: the base model's heads and SwiGLU width, i.e. ``DiMOOShortcutConfig.for_base``).
    """
    defaults = recipe.architecture_defaults(base)
    heads = args.heads if args.heads is not None else defaults["heads"]
    mlp_ratio = args.mlp_ratio if args.mlp_ratio is not None else defaults["mlp_ratio"]
    width = args.width if args.width is not None else round(dim / args.bottleneck_ratio)
    if width < 1 or width % heads:
        raise ValueError(f"shortcut width {width} (feature width {dim} / bottleneck ratio {args.bottleneck_ratio}) "
                         f"is not a positive multiple of --heads {heads}; pick --width or --heads to fit")
    return recipe.shortcut_config(dim, width=width, n_block=args.n_block, heads=heads, mlp_ratio=mlp_ratio,
                                  embed_t=not args.no_mask_ratio_embedding, dropout=args.dropout, base=base)


def ema_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy for the EMA that shares, never copies, tensors the model holds as plain
    attributes (the DiMOO shortcut's bound base embedding table, 134548 x 4096): parameters and
    buffers are copied, those are not (they are not in any state dict either)."""
    shared = {id(v): v for v in vars(model).values() if torch.is_tensor(v)}
    return copy.deepcopy(model, memo=shared).eval().requires_grad_(False)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def _no_buffer_sync() -> dict:
    """DDP option that skips syncing buffers every forward (ours are the base model's frozen embeddings)."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def default_run_dir(out) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".run")


class RunLog:
    """stdout + ``train.log`` + ``metrics.jsonl`` on rank 0; silent elsewhere."""

    def __init__(self, run_dir: Path | None, enabled: bool):
        self.enabled = enabled
        self.text = open(run_dir / "train.log", "a") if enabled and run_dir else None
        self.metrics_path = run_dir / "metrics.jsonl" if run_dir else None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        print(msg, flush=True)
        if self.text:
            self.text.write(time.strftime("%H:%M:%S ") + msg + "\n")
            self.text.flush()

    def metrics(self, record: dict) -> None:
        if self.enabled and self.metrics_path:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop records past ``step`` (a resume redoes those iterations)."""
        if not (self.enabled and self.metrics_path and self.metrics_path.exists()):
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.text:
            self.text.close()


# -- validation --------------------------------------------------------------------


VAL_COLUMNS = 10


@torch.no_grad()
def evaluate(model, recording: Recording, rows: dict[int, list[int]], *, batch: int, device, autocast,
             skip_bad: bool, log, chain: int = 1, head_logits=None) -> torch.Tensor:
    """Sums (chain, N-1, 10) of cos pred, cos copy, positions, sq err pred, sq err copy, elements,
    and, given the base model's ``head_logits``, KL(head on target || head on pred) and the same for
    copy; then sq err and KL of the feature cache.

    Entry [j-1, t] is the pair t -> t+1 predicted after j chained shortcut steps from the
    recorded (full-step) feature at t+1-j, as sampling chains them; the copy columns are the
    single-step copy-previous baseline of the same pair (feature t for t+1); the cache columns
    hold the chain's start feature (t+1-j) for t+1, what a feature cache samples from there.
    """
    sums = torch.zeros(chain, recording.steps - 1, VAL_COLUMNS, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for k in sorted(rows):
        try:
            cache = {k: recording.load(k)}
        except ShardError as exc:
            if not skip_bad:
                raise
            recording.mark_bad(exc, log)
            continue
        for branch in recording.shard_branches(k):
            for s in range(recording.steps - 1):
                for b0 in range(0, len(rows[k]), batch):
                    pb = gather_pairs(recording, cache, [(k, j) for j in rows[k][b0:b0 + batch]], branch, s, device,
                                      span=chain)
                    pred, prev, start = pb.prev, pb.prev, pb.prev
                    chained = [(pb.target, pb.inputs, pb.loss_mask), *pb.later]
                    for depth, (target, inputs, m) in enumerate(chained):
                        with autocast():
                            pred = model(pred, **inputs)
                        pred = pred.float()
                        cos_p = F.cosine_similarity(pred, target, dim=-1)[m]
                        cos_c = F.cosine_similarity(prev, target, dim=-1)[m]
                        se_p = ((pred - target) ** 2)[m]
                        se_c = ((prev - target) ** 2)[m]
                        se_h = se_c if depth == 0 else ((start - target) ** 2)[m]  # one step: the cache is copy
                        kl_p = kl_c = kl_h = 0.0
                        if head_logits is not None and bool(m.any()):
                            log_q = F.log_softmax(head_logits(target, m).float(), dim=-1)
                            kl_p = token_kl(head_logits(pred, m), log_q).item()
                            kl_c = token_kl(head_logits(prev, m), log_q).item()
                            kl_h = kl_c if depth == 0 else token_kl(head_logits(start, m), log_q).item()
                        sums[depth, s + depth] += torch.tensor(
                            [cos_p.sum().item(), cos_c.sum().item(), float(m.sum()), se_p.sum().item(),
                             se_c.sum().item(), float(se_p.numel()), kl_p, kl_c, se_h.sum().item(), kl_h],
                            dtype=torch.float64)
                        prev = target
    model.train(was_training)
    return sums


def summarize(sums: torch.Tensor) -> dict:
    """Pooled and per-step validation metrics from the summed table of :func:`evaluate`.

    The top level is single-step prediction (as before); ``chain`` holds, for every depth
    k >= 2, the error after k chained shortcut steps against single-step copy-previous.
    """
    def row(t):
        pos, el = max(t[2].item(), 1.0), max(t[5].item(), 1.0)
        d = {"cos": t[0].item() / pos, "copy_cos": t[1].item() / pos, "mse": t[3].item() / el,
             "copy_mse": t[4].item() / el, "positions": int(t[2].item())}
        d["mse_ratio"] = d["mse"] / d["copy_mse"] if d["copy_mse"] > 0 else float("nan")
        d["cache_mse"] = t[8].item() / el
        d["cache_ratio"] = d["cache_mse"] / d["copy_mse"] if d["copy_mse"] > 0 else float("nan")
        if t[7] > 0:  # measured with the base model's head
            d["kl"], d["copy_kl"], d["cache_kl"] = t[6].item() / pos, t[7].item() / pos, t[9].item() / pos
        return d

    def table(depth_sums):
        out = row(depth_sums.sum(0))
        out["per_step"] = [{"s": s, **row(depth_sums[s])} for s in range(depth_sums.shape[0]) if depth_sums[s, 2] > 0]
        return out

    if sums.dim() == 2:
        sums = sums[None]
    out = table(sums[0])
    if sums.shape[0] > 1:
        out["chain"] = {str(j + 1): table(sums[j]) for j in range(1, sums.shape[0])}
    return out


def format_val(v: dict) -> str:
    chains = sorted((v.get("chain") or {}).items(), key=lambda kv: int(kv[0]))
    head = "".join(f" {'chain' + k:>8}" for k, _ in chains)
    lines = [f"  {'s':>3} {'cos':>8} {'copy cos':>9} {'mse':>11} {'copy mse':>11} {'ratio':>7}{head}"]
    by_step = [{r["s"]: r["mse_ratio"] for r in c["per_step"]} for _, c in chains]
    for r in v["per_step"]:
        extra = "".join(f" {m[r['s']]:>8.3f}" if r["s"] in m else f" {'':>8}" for m in by_step)
        lines.append(f"  {r['s']:>3} {r['cos']:>8.4f} {r['copy_cos']:>9.4f} {r['mse']:>11.4g} {r['copy_mse']:>11.4g} "
                     f"{r['mse_ratio']:>7.3f}{extra}")
    for k, c in chains:
        lines.append(f"  after {k} chained steps: mse ratio {c['mse_ratio']:.3f} (vs single-step copy-previous), "
                     f"cos {c['cos']:.4f}" + (f", token KL {c['kl']:.4g}" if "kl" in c else "")
                     + f"; the feature cache (start feature held): mse ratio {c['cache_ratio']:.3f}"
                     + (f", token KL {c['cache_kl']:.4g}" if "cache_kl" in c else ""))
    return "\n".join(lines)


def step_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cos_weight: float = 0.0,
              kl_weight: float = 0.0, head_logits=None, kl_reverse_weight: float = 0.0) -> torch.Tensor:
    """Masked MSE, plus ``cos_weight`` x (1 - cosine similarity), ``kl_weight`` x KL(base head on
    the target || base head on the prediction) and ``kl_reverse_weight`` x the reverse KL, all over
    the same positions.

    The KL terms weigh feature errors by what they change in the next step's token distribution:
    the MSE treats every direction of the feature alike, sampling only sees the head's output.
    The forward KL punishes missing the base model's likely tokens; the reverse KL punishes
    mass on tokens the base model finds unlikely, the confidently wrong tokens that a
    confidence-ordered reveal keeps first.
    """
    loss = masked_mse(pred, target, mask)
    if cos_weight:
        cos = F.cosine_similarity(pred, target, dim=-1)  # (B, T)
        m = mask.to(cos.dtype)
        loss = loss + cos_weight * ((1 - cos) * m).sum() / m.sum().clamp(min=1)
    if (kl_weight or kl_reverse_weight) and bool(mask.any()):
        with torch.no_grad():
            log_q = F.log_softmax(head_logits(target, mask).float(), dim=-1)
        logits = head_logits(pred, mask)
        if kl_weight:
            loss = loss + kl_weight * token_kl(logits, log_q) / log_q.shape[0]
        if kl_reverse_weight:
            loss = loss + kl_reverse_weight * reverse_token_kl(logits, log_q) / log_q.shape[0]
    return loss


def token_kl(logits: torch.Tensor, log_target: torch.Tensor) -> torch.Tensor:
    """Summed KL(target || softmax(logits)) over rows of token distributions."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), log_target, log_target=True, reduction="sum")


def reverse_token_kl(logits: torch.Tensor, log_target: torch.Tensor) -> torch.Tensor:
    """Summed KL(softmax(logits) || target) over rows of token distributions."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_target)).sum()


def head_logits_for(migm):
    """The base model's head, frozen, for the KL term; refuses families that do not expose it."""
    if not hasattr(migm, "head_logits"):
        raise ValueError(f"--kl-weight and --kl-reverse-weight need the base model's head, which the "
                         f"{type(migm).__name__} adapter does not expose for training; train without them")
    for p in migm.model.parameters():
        p.requires_grad_(False)
    return migm.head_logits


STEP_WEIGHTS = ("none", "reveal", "masked")


def step_weights(kind: str, counts: list[int]) -> list[float]:
    """Loss weight of each pair s -> s+1 (``kind`` reveal or masked), mean 1 over the run's pairs.

    ``reveal``: the tokens step s+1 reveals, which the predicted feature decides (late steps
    reveal most). ``masked``: the tokens still masked when it is used, whose choice the feature
    still shapes (early steps weigh most: their errors are the context of every later step).
    """
    steps = len(counts)
    raw = [counts[s + 1] if kind == "reveal" else sum(counts[s + 1:]) for s in range(steps - 1)]
    mean = sum(raw) / len(raw)
    return [r / mean for r in raw]


def noisy(feats: torch.Tensor, scale: float) -> torch.Tensor:
    """``feats`` plus Gaussian noise of ``scale`` x each position's feature RMS: the shortcut sees
    inputs as imperfect as its own earlier predictions."""
    if not scale:
        return feats
    rms = feats.pow(2).mean(-1, keepdim=True).sqrt()
    return feats + scale * rms * torch.randn_like(feats)


# -- checkpoints -------------------------------------------------------------------


def save_checkpoint(d: Dist, run_dir: Path, step: int, model, ema, opt, stream: PairStream, meta: dict,
                    keep: int) -> Path | None:
    """Every rank calls this (states are gathered); rank 0 writes tensors, then the JSON."""
    rng = {"cpu": torch.get_rng_state().numpy().tobytes()}
    if d.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(d.device).numpy().tobytes()
    gathered = d.gather({"stream": stream.state(), "rng": rng, "read": sorted(stream.read)})
    if not d.is_main:
        return None
    tensors, groups = state_tensors(model, ema, opt)
    for r, g in enumerate(gathered):
        for kind, raw in g["rng"].items():
            tensors[f"rng.{kind}.{r}"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    record = {**meta, "streams": [g["stream"] for g in gathered], "shards_read": [g["read"] for g in gathered],
              "optimizer": {"param_groups": groups}}
    return write_checkpoint(run_dir, step, tensors, record, keep)


def load_checkpoint(path: Path, d: Dist, model, ema, opt) -> dict:
    record, tensors = read_checkpoint(path)
    restore_state(tensors, record["optimizer"]["param_groups"], model, ema, opt)
    cpu = tensors.get(f"rng.cpu.{d.rank}")
    if cpu is not None:
        torch.set_rng_state(cpu)
    cuda = tensors.get(f"rng.cuda.{d.rank}")
    if cuda is not None and d.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, d.device)
    return record


# -- the run -----------------------------------------------------------------------


def train(args: argparse.Namespace, *, argv: Sequence[str] = (), should_stop: Callable[[int], bool] | None = None,
          dist: Dist | None = None) -> TrainResult:
    """Run training as the parsed CLI ``args`` say. ``should_stop(step)`` is asked before each iteration."""
    out = Path(args.out)
    data = [args.data] if isinstance(args.data, (str, Path)) else args.data
    refuse_overwriting(out, args.migm, *data, what="--out")
    d = dist or setup(args.device)
    log = None
    try:
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(out)
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        d.barrier()
        resume_path = resolve_resume(args.resume, run_dir)
        if resume_path is None and checkpoint_paths(run_dir):
            raise TrainingError(f"{run_dir} already holds checkpoints of a run; pass --resume to continue it, "
                                f"or choose another --out / --run-dir")
        log = RunLog(run_dir, d.is_main)
        return _train(args, d, out, run_dir, resume_path, log, argv, should_stop)
    finally:
        if log is not None:
            log.close()
        if dist is None:
            d.close()


def _train(args, d: Dist, out: Path, run_dir: Path, resume_path: Path | None, log: RunLog, argv, should_stop):
    t_setup = time.perf_counter()
    recording = Recording(args.data, verify=not args.no_verify_shards)
    data_names = ", ".join(map(str, recording.roots))
    migm = load_migm(args.migm, device=d.device)
    if migm.family != recording.manifest["family"]:
        raise TrainingError(f"{data_names} holds {recording.manifest['family']} trajectories but --migm {args.migm} "
                            f"is a {migm.family} model")
    if migm.fingerprint != recording.fingerprint:
        msg = (f"{data_names} was recorded from base model fingerprint {recording.fingerprint} "
               f"({recording.manifest.get('base', {}).get('name')}), but --migm {args.migm} has {migm.fingerprint}")
        if not args.allow_fingerprint_mismatch:
            raise CheckpointError(msg + "; train against the model that recorded the data, or pass "
                                        "--allow-fingerprint-mismatch if you know they are the same weights")
        log(f"warning: {msg}; continuing because of --allow-fingerprint-mismatch")
    for root, manifest in zip(recording.roots, recording.manifests):
        if not manifest.get("complete", False):
            log(f"note: the recording in {root} is incomplete ({sum(e['count'] for e in manifest['shards'])} of "
                f"{manifest.get('num_trajectories')} trajectories); training on the finished shards")
    dim = recording.feature_shapes[recording.branches[0]][1]
    recording.check(skip_bad=args.skip_bad_shards, log=log)
    config = shortcut_config_from_args(args, dim, recording.recipe, getattr(migm, "config", None))

    torch.manual_seed(args.seed)
    model = migm.build_shortcut(config)  # refuses features of another width than the base model's
    uses_head = args.kl_weight or args.kl_reverse_weight
    terms = (args.cos_weight, args.kl_weight, head_logits_for(migm) if uses_head else None, args.kl_reverse_weight)
    weights = [1.0] * (recording.steps - 1)  # per pair s -> s+1
    if args.step_weight != "none":
        counts = {tuple(m["reveal_counts"]) for m in recording.manifests}
        if len(counts) != 1:
            raise TrainingError(f"--step-weight {args.step_weight}: the recordings reveal tokens on different "
                                f"schedules ({sorted(counts)}); train on recordings of one schedule, or without it")
        weights = step_weights(args.step_weight, list(counts.pop()))
    if args.init == "zero-out":
        torch.nn.init.zeros_(model.proj_out.weight)  # start as the copy-previous baseline
        torch.nn.init.zeros_(model.proj_out.bias)
    model.train()
    ema = ema_copy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())

    train_rows, val_rows = recording.split(args.val_fraction, args.val_max)
    shard_ids = list(range(len(recording.shards)))
    mine = set(share(shard_ids, d.rank, d.world_size))
    stream = PairStream(recording, {k: v for k, v in train_rows.items() if k in mine}, batch=args.batch,
                        window=args.window, seed=args.seed, rank=d.rank, device=d.device,
                        skip_bad=args.skip_bad_shards, log=log, span=args.rollout)
    my_val = {k: v for k, v in val_rows.items() if k in mine}
    milestones = [int(m) for m in str(args.lr_decay_at).split(",") if m.strip()]
    use_amp = d.device.type == "cuda" and args.autocast in ("auto", "bf16")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()

    exact = {"data_id": recording.data_id(), "world_size": d.world_size, "batch": args.batch, "accum": args.accum,
             "window": args.window, "seed": args.seed, "val_fraction": args.val_fraction, "val_max": args.val_max,
             "shortcut_config": config.to_dict(), "init": args.init}
    settings = {k: getattr(args, k) for k in ("iters", "lr", "weight_decay", "lr_decay", "lr_decay_at", "ema",
                                              "grad_clip", "autocast", "val_every", "ckpt_every", "log_every",
                                              "rollout", "input_noise", "cos_weight", "kl_weight", "kl_reverse_weight",
                                              "step_weight", "val_chain")}
    n_train = sum(len(v) for v in train_rows.values())
    n_val = sum(len(v) for v in val_rows.values())
    shard_names = [recording.shard_name(k) for k in range(len(recording.shards))]
    assignment = d.gather(sorted(shard_names[k] for k in mine))

    start = 0
    last_val = None
    if resume_path is not None:
        record, resume_path = load_newest_valid(resume_path, run_dir, args.resume,
                                                lambda p: load_checkpoint(p, d, model, ema, opt), log)
        changed = [k for k in EXACT_KEYS if record["exact"].get(k) != exact[k]]
        if changed:
            detail = "; ".join(f"{k}: checkpoint {record['exact'].get(k)!r}, now {exact[k]!r}" for k in changed)
            raise TrainingError(f"cannot resume {resume_path} exactly, these settings differ: {detail}. "
                                f"Resume with the same settings and process count, or start a new run")
        start = int(record["step"])
        stream.load_state(record["streams"][d.rank])
        stream.read.update(record["shards_read"][d.rank])
        for name, reason in record.get("bad_shards", {}).items():
            recording.bad.setdefault(name, reason)
        last_val = record.get("last_val")
        different = {k: (record["settings"].get(k), v) for k, v in settings.items() if record["settings"].get(k) != v}
        log(f"resumed from {resume_path} at iteration {start}"
            + (f"; changed settings: {different}" if different else ""))
        log.truncate_metrics(start)
        log.metrics({"event": "resume", "step": start, "from": str(resume_path), "changed": different})

    if start == 0:
        log(f"training a {migm.family} shortcut ({n_params / 1e6:.3f} M parameters: width {config.width}, "
            f"{config.n_block} block(s), {config.heads} heads) on {data_names}: {recording.num_trajectories} "
            f"trajectories ({n_train} train, {n_val} held out), {len(recording.branches)} branch(es), "
            f"N={recording.steps}; {d.world_size} process(es) on {d.device}, batch {args.batch} x accum {args.accum}"
            f" x {d.world_size}")
        log.metrics({"event": "start", "step": 0, "parameters": n_params, "shortcut_config": config.to_dict(),
                     "exact": exact, "settings": settings, "shards_by_rank": assignment,
                     "train_trajectories": n_train, "val_trajectories": n_val})

    net = model
    if d.active:
        net = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                                      **_no_buffer_sync())

    checkpoints: list[Path] = []

    def checkpoint(step: int) -> Path | None:
        meta = {"exact": exact, "settings": settings, "bad_shards": dict(recording.bad), "last_val": last_val,
                "shortcut_config": config.to_dict(), "data": str(args.data), "migm": str(args.migm)}
        try:
            path = save_checkpoint(d, run_dir, step, model, ema, opt, stream, meta, args.keep_ckpts)
        except OSError as exc:  # a full disk, a folder gone read-only
            raise TrainingError(f"training stopped at iteration {step}: {exc}; the last complete checkpoint is "
                                f"{last_good()}; make room (or use another --run-dir) and continue with --resume") \
                from None
        if path is not None:
            checkpoints.append(path)
            log(f"checkpoint {path}")
        return path

    def stop_for_damage(err: ShardError | None, step: int) -> TrainingError:
        """Save the state after ``step`` iterations on every rank, then say how to go on."""
        path = checkpoint(step)
        if err is None:
            return TrainingError("another process met a damaged shard; see its message")
        saved = f"progress up to iteration {step} is saved in {path}" if path else "progress is saved by rank 0"
        return TrainingError(f"{err} ({saved}; continue with --resume, adding --skip-bad-shards to leave the shard "
                             f"out)")

    def last_good() -> str:
        found = checkpoint_paths(run_dir)
        return f"{found[-1][1]} (iteration {found[-1][0]})" if found else "none (no checkpoint was written yet)"

    def validate(step: int) -> dict | None:
        if not val_rows:
            return None
        err = None
        sums = torch.zeros(args.val_chain, recording.steps - 1, VAL_COLUMNS, dtype=torch.float64)
        try:
            sums = evaluate(ema, recording, my_val, batch=args.val_batch or args.batch, device=d.device,
                            autocast=autocast, skip_bad=args.skip_bad_shards, log=log, chain=args.val_chain,
                            head_logits=getattr(migm, "head_logits", None))
        except ShardError as exc:
            err = exc
        if d.any(err is not None):
            raise stop_for_damage(err, step) from err
        v = summarize(d.all_reduce_sum(sums))
        if v["positions"] == 0:
            log(f"warning: no validation data could be read at iteration {step} (every held-out shard was skipped: "
                f"{', '.join(sorted(recording.bad)) or 'none readable'}); the saved shortcut carries no validation")
            return None
        log(f"validation at iteration {step} (EMA weights, {v['positions']} masked positions, single step): "
            f"cos {v['cos']:.4f} "
            f"(copy {v['copy_cos']:.4f}), mse {v['mse']:.4g} (copy {v['copy_mse']:.4g}), ratio {v['mse_ratio']:.3f}"
            + (f", token KL {v['kl']:.4g} (copy {v['copy_kl']:.4g})" if "kl" in v else "") + "\n"
            + format_val(v))
        log.metrics({"event": "val", "step": step, **v})
        return v

    log(f"setup took {time.perf_counter() - t_setup:.1f} s")
    bar = ProgressBar(args.iters, desc="train", unit="it", start=start, enabled=d.is_main and not args.no_progress)
    pairs_per_iter = args.batch * args.accum * d.world_size  # at most: a window's last batch may be short
    t0 = time.perf_counter()
    window_loss, window_n = 0.0, 0
    pairs_done = 0
    for it in range(start, args.iters):
        if should_stop is not None and should_stop(it):
            raise TrainingInterrupted(f"stopped before iteration {it + 1}")
        for group in opt.param_groups:
            group["lr"] = lr_at(it, args.lr, args.lr_decay, milestones)
        position = stream.state()
        batches: list[PairBatch] = []
        err = None
        try:
            batches = [stream.next() for _ in range(args.accum)]
        except ShardError as exc:
            err = exc
        if d.any(err is not None):
            stream.load_state(position)  # the checkpoint resumes this iteration from its start
            raise stop_for_damage(err, it) from err

        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=d.device)
        for i, b in enumerate(batches):
            sync = nullcontext() if (i == len(batches) - 1 or not d.active) else net.no_sync()
            with sync:
                with autocast():
                    pred = net(noisy(b.prev, args.input_noise), **b.inputs)
                loss = weights[b.step] * step_loss(pred.float(), b.target, b.loss_mask, *terms)
                # Rollout: the shortcut consumes its own prediction, as at inference. Later steps call
                # the bare module: DDP reduces each parameter's gradient once, after all its uses.
                for j, (target, inputs, mask) in enumerate(b.later, start=1):
                    with autocast():
                        pred = model(pred, **inputs)
                    loss = loss + weights[b.step + j] * step_loss(pred.float(), target, mask, *terms)
                loss = loss / b.span
                (loss / len(batches)).backward()
            loss_sum += loss.detach()
        loss_value = loss_sum / len(batches)
        finite = bool(torch.isfinite(loss_value))
        if d.any(not finite):
            where = ", ".join(f"s={b.step} {b.branch} from {'/'.join(b.shards)}" for b in batches)
            what = f"loss became {loss_value.item()}" if not finite else "another process's loss became non-finite"
            raise TrainingError(f"{what} at iteration {it + 1} (pairs here: {where}); stopped. The last good "
                                f"checkpoint is {last_good()}; resume from it with a lower --lr or --grad-clip, "
                                f"or check the data")
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        ema_update(ema, model, args.ema)
        step = it + 1
        pairs_done += sum(b.prev.shape[0] for b in batches) * d.world_size
        window_loss += float(loss_value)
        window_n += 1
        bar.update(1, postfix=f"loss {float(loss_value):.4g}")
        if step % args.log_every == 0 or step == args.iters:
            mean = torch.tensor([window_loss / max(window_n, 1)], dtype=torch.float64)
            mean = float(d.all_reduce_sum(mean)) / d.world_size
            rate = pairs_done / (time.perf_counter() - t0)
            log.metrics({"event": "train", "step": step, "loss": mean, "lr": opt.param_groups[0]["lr"],
                         "pairs_per_s": rate, "epoch": stream.epoch})
            if not bar.enabled:
                log(f"iteration {step}/{args.iters}: loss {mean:.5g}, lr {opt.param_groups[0]['lr']:.3g}, "
                    f"{rate:.1f} pairs/s")
            window_loss, window_n = 0.0, 0
        if (args.val_every and step % args.val_every == 0) or step == args.iters:
            last_val = validate(step)
        if (args.ckpt_every and step % args.ckpt_every == 0) or step == args.iters:
            checkpoint(step)
    bar.close()
    seconds = time.perf_counter() - t0
    rate = pairs_done / seconds if seconds > 0 else 0.0
    reads = d.gather(sorted(stream.read))
    if d.is_main:
        if start >= args.iters:
            log(f"the checkpoint is already at iteration {start} >= --iters {args.iters}; writing the output only")
        command = " ".join(shlex.quote(a) for a in ["python", "-m", "training.train", *argv])
        if d.world_size > 1:
            command = f"torchrun --nproc_per_node={d.world_size} " + command.removeprefix("python ")
        info = {
            "architecture": {**config.to_dict(), "parameters": n_params},
            "training": {**settings, **{k: v for k, v in exact.items() if k != "shortcut_config"},
                         "pairs_per_iteration": pairs_per_iter, "device": str(d.device),
                         "loss": "masked MSE" + (f" + {args.cos_weight} x (1 - cos)" if args.cos_weight else "")
                         + (f" + {args.kl_weight} x KL(head)" if args.kl_weight else "")
                         + (f" + {args.kl_reverse_weight} x reverse KL(head)" if args.kl_reverse_weight else "")
                         + (f", averaged over {args.rollout} chained steps" if args.rollout > 1 else "")
                         + (f", pairs weighted by step ({args.step_weight})" if args.step_weight != "none" else "")},
            "data": {"path": [str(r) for r in recording.roots], "base_fingerprint": recording.fingerprint,
                     "trajectories": recording.num_trajectories, "train_trajectories": n_train,
                     "val_trajectories": n_val, "steps": recording.steps, "branches": recording.branches,
                     "sampler": [m.get("sampler") for m in recording.manifests], "bad_shards": dict(recording.bad)},
            "metrics": {"val": last_val, "pairs_per_second": rate},
            "command": command,
        }
        save_shortcut(ema, out, base_fingerprint=recording.fingerprint, info=info)
        log(f"wrote {out} (EMA weights, iteration {args.iters})"
            + (f"; validation mse ratio {last_val['mse_ratio']:.3f}, cos {last_val['cos']:.4f}" if last_val else ""))
        log.metrics({"event": "end", "step": args.iters, "out": str(out), "shards_read_by_rank": reads,
                     "pairs_per_s": rate})
    d.barrier()
    return TrainResult(out=out, steps=args.iters, seconds=seconds, pairs_per_second=rate, val=last_val,
                       checkpoints=checkpoints, shards_read=reads)


# -- command line ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train",
                                description="Train a MIGM shortcut on recorded trajectories (training/record.py).")
    g = p.add_argument_group("data and files")
    g.add_argument("--data", required=True, nargs="+", action="extend",
                   help="trajectory folder(s) written by training.record; several (one base model, one step count) "
                        "mix regimes, e.g. a class-conditional and an unconditional recording")
    g.add_argument("--migm", required=True, help="the base model that recorded the data (embeddings, fingerprint)")
    g.add_argument("--out", required=True, help="output shortcut .safetensors (EMA weights)")
    g.add_argument("--run-dir", help="logs and checkpoints (default: OUT with .run instead of its suffix)")
    g.add_argument("--resume", nargs="?", const="auto", help="continue from the newest checkpoint in the run dir, "
                                                               "or from the given ckpt-*.json")
    g.add_argument("--skip-bad-shards", action="store_true", help="skip truncated or corrupt shards (named in a "
                                                                  "warning) instead of stopping")
    g.add_argument("--allow-fingerprint-mismatch", action="store_true",
                   help="train even if --migm is not the model that recorded the data")
    g.add_argument("--no-verify-shards", action="store_true", help="skip the sha256 check when a shard is read")
    g = p.add_argument_group("optimisation (paper defaults)")
    g.add_argument("--iters", type=int, default=10000, help="optimizer steps (default 10000)")
    g.add_argument("--batch", type=int, default=32, help="pairs per micro-batch per process (default 32)")
    g.add_argument("--accum", type=int, default=1, help="micro-batches accumulated per optimizer step (default 1)")
    g.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    g.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default 1e-2)")
    g.add_argument("--lr-decay", type=float, default=0.1, help="lr factor at each --lr-decay-at step (default 0.1)")
    g.add_argument("--lr-decay-at", default="1000", help="comma-separated iterations where the lr decays "
                                                          "(default 1000; '' for none)")
    g.add_argument("--ema", type=float, default=0.9999, help="EMA decay of the saved weights (default 0.9999; "
                                                              "short runs want ~0.99)")
    g.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (default 0: off)")
    g.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto",
                   help="bf16 autocast on GPUs (auto = bf16 on CUDA, off on CPU)")
    g.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed (default 0)")
    g = p.add_argument_group("tracking the base model over several shortcut steps (beyond the paper)")
    g.add_argument("--rollout", type=int, default=1,
                   help="chain K shortcut steps from each recorded feature, each fed the previous prediction as at "
                        "inference, and average their losses (default 1: the paper's single-step loss)")
    g.add_argument("--input-noise", type=float, default=0.0,
                   help="Gaussian noise on the input feature, as a fraction of its RMS per position (default 0)")
    g.add_argument("--cos-weight", type=float, default=0.0,
                   help="add this weight x (1 - cosine similarity) on the masked positions to the MSE (default 0)")
    g.add_argument("--kl-weight", type=float, default=0.0,
                   help="add this weight x KL divergence between the base model's head on the target and on the "
                        "predicted feature, at the masked positions (default 0; the reference's optional logit term)")
    g.add_argument("--kl-reverse-weight", type=float, default=0.0,
                   help="add this weight x the reverse KL (head on the prediction || head on the target): punishes "
                        "confident tokens the base model finds unlikely (default 0)")
    g.add_argument("--step-weight", choices=STEP_WEIGHTS, default="none",
                   help="weight each pair's loss by its step: reveal = the tokens the next step reveals (late "
                        "steps most), masked = the tokens still masked (early steps most); mean weight 1 "
                        "(default none: all steps alike)")
    g.add_argument("--window", type=int, default=4, help="shards held in memory and shuffled together (default 4)")
    g = p.add_argument_group("shortcut architecture (paper defaults: bottleneck ratio 2, 1 block, 16 heads; "
                             "DiMOO: ratio 2, 1 block, the base model's heads)")
    g.add_argument("--width", type=int, help="bottleneck width (default: feature width / --bottleneck-ratio)")
    g.add_argument("--bottleneck-ratio", type=float, default=2.0, help="feature width / bottleneck width (default 2)")
    g.add_argument("--n-block", type=int, default=1, help="cross+self attention blocks (default 1)")
    g.add_argument("--heads", type=int, help="attention heads (default 16; DiMOO: the base model's, 32)")
    g.add_argument("--mlp-ratio", type=int, help="feed-forward width / bottleneck width (default 4; DiMOO: the "
                                                 "SwiGLU hidden width stays the base model's, 12288)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout (default 0)")
    g.add_argument("--no-mask-ratio-embedding", action="store_true", help="drop the mask-ratio adaLN conditioning")
    g.add_argument("--init", choices=("zero-out", "random"), default="zero-out",
                   help="zero-out (default): proj_out starts at zero, so training starts from the copy baseline")
    g = p.add_argument_group("validation, logging, checkpoints")
    g.add_argument("--val-fraction", type=float, default=0.02, help="trajectories held out (default 0.02)")
    g.add_argument("--val-max", type=int, default=64, help="at most this many held-out trajectories (default 64)")
    g.add_argument("--val-every", type=int, default=500, help="validate every N iterations and at the end (default 500)")
    g.add_argument("--val-batch", type=int, help="validation batch (default --batch)")
    g.add_argument("--val-chain", type=int, default=3,
                   help="also report the error after 2..K chained shortcut steps from a recorded feature (default 3)")
    g.add_argument("--log-every", type=int, default=20, help="metrics.jsonl record every N iterations (default 20)")
    g.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N iterations and at the end (default 500)")
    g.add_argument("--keep-ckpts", type=int, default=2, help="newest checkpoints kept (default 2; 0 keeps all)")
    g.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda")
    g.add_argument("--threads", type=int, help="CPU threads per process (default: torch's choice; 1 is often "
                                                "fastest for small models on busy machines)")
    g.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    return p


def check_args(args) -> None:
    """Every option a user can get wrong, by name, before any file is touched."""
    def flag(name):
        return "--" + name.replace("_", "-")

    for name in ("iters", "batch", "accum", "n_block", "heads", "mlp_ratio", "log_every", "rollout", "val_chain",
                 "window", "width", "val_batch", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"{flag(name)} must be at least 1, got {getattr(args, name)}")
    for name in ("val_every", "ckpt_every", "keep_ckpts", "val_max"):
        if getattr(args, name) < 0:
            raise ValueError(f"{flag(name)} must be >= 0, got {getattr(args, name)}")
    for name in ("lr", "lr_decay", "bottleneck_ratio"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"{flag(name)} must be a finite number > 0, got {getattr(args, name)}")
    for name in ("weight_decay", "grad_clip", "input_noise", "cos_weight", "kl_weight", "kl_reverse_weight"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {getattr(args, name)}")
    for name in ("ema", "val_fraction", "dropout"):
        if not 0 <= getattr(args, name) < 1:  # also refuses NaN
            raise ValueError(f"{flag(name)} must be in [0, 1), got {getattr(args, name)}")
    try:
        [int(m) for m in str(args.lr_decay_at).split(",") if m.strip()]
    except ValueError:
        raise ValueError(f"--lr-decay-at must be comma-separated iterations like '1000,5000' (or '' for none), "
                         f"got {args.lr_decay_at!r}") from None


def main(argv: Sequence[str] | None = None, *, should_stop: Callable[[int], bool] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        train(args, argv=argv, should_stop=should_stop)
        return 0
    except (ValueError, ManifestError, ShardError, CheckpointError, TrainingError, OSError) as exc:  # OSError: disk full, no access
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
