"""Train the embedded class-conditional MaskGIT on Fashion-MNIST tokens.

The model is ``shortcut_core.maskgit.MaskGIT`` (the code path of the 512-px model) on the
7x7 token grids of the tokenizer from ``training.fmnist.train_tokenizer``. Objective as in
MaskGIT: per image a mask ratio ``arccos(u) / (pi/2)``, ``u ~ U(0, 1)``; every token is
masked with that probability; cross-entropy (label smoothing 0.1) on the masked positions
only. The class is replaced by "no class" (``config.null_class``) with probability 0.1,
which is what classifier-free guidance needs at sampling time.

    python -m training.fmnist.train_maskgit --steps 1800    # depth 8, then grow it to the shipped depth 16:
    python -m training.fmnist.train_maskgit --preset fmnist-h96-d16 --init-from models/migm/fmnist_maskgit.safetensors \
        --steps 1000 --lr 5e-4
    python -m training.fmnist.train_maskgit --steps 20 --out runs/fmnist/try.safetensors

Writes one bundled MIGM file (base + tokenizer, ``shortcut_core.save_migm``) whose info
metadata holds the data, steps, metrics, class names and the commands that made it.
"""
from __future__ import annotations

import argparse
import copy
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shortcut_core import MaskGIT, MaskGITConfig, MaskGITMIGM, fingerprint, generate, load_migm, load_vqgan, save_migm
from shortcut_core.checkpoints import read_safetensors_metadata
from training.fmnist.dataset import CLASS_NAMES, load_fmnist, to_tensor
from training.checkpoints import ResumableRun, TrainingError, add_resume_arguments, restore_state, state_tensors
from training.train import ema_update
from training.fmnist.train_tokenizer import Log, run_dir_for

DEFAULT_OUT = Path("models/migm/fmnist_maskgit.safetensors")
DEFAULT_VQ = Path("runs/fmnist/vq.safetensors")
CACHE_DIR = Path(".cache/fmnist_tokens")  # git-ignored

MASKGIT_FMNIST_PRESETS = {
    # The shipped model is fmnist-h96-d16 (1.86 M parameters), grown from a trained
    # fmnist-h96-d8 (--init-from). Its whole sampling step (network + head + sampling) costs
    # 29-36x the shipped shortcut's (width 32, 1 block); depth 8 reached only ~17x even
    # with the lean head and sampling (9.6x before them). A sweep of >=2000 images per
    # setting takes about half an hour on 2 CPU threads.
    "fmnist-h96-d8": MaskGITConfig(hidden=96, depth=8, heads=4, mlp_dim=384, grid=7, codebook_size=256, num_classes=10),
    "fmnist-h128-d6": MaskGITConfig(hidden=128, depth=6, heads=4, mlp_dim=512, grid=7, codebook_size=256, num_classes=10),
    "fmnist-h128-d8": MaskGITConfig(hidden=128, depth=8, heads=4, mlp_dim=512, grid=7, codebook_size=256, num_classes=10),
    "fmnist-h96-d16": MaskGITConfig(hidden=96, depth=16, heads=4, mlp_dim=384, grid=7, codebook_size=256, num_classes=10),
}

# Sampling settings the sweep, the demo and the tests use for this model (stored in its info).
# First picked from 500 images at N=12 (cfg 2, r_temp 3); r_temp 4.5 from 2026-12-01 (plain N=16
# FD-FMNIST in both regimes, docs/results/fmnist_settings.md). On the base over the 24.4 dB
# tokenizer (shipped since 2026-12-03) r_temp 9 is 3.4-7.4 points better class-conditionally at
# N=4/8/16 and level at unconditional N=16 (docs/results/fmnist_v3_scan/scan_d16a.md). The shipped
# file was set with python -m training.sampling_defaults, which leaves the weights untouched.
SAMPLING_DEFAULTS = {"cfg": 2.0, "r_temp": 9.0, "sm_temp": 1.0, "schedule": "arccos"}


@torch.no_grad()
def tokenize(vqgan, split: str, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 7*7) long token ids and (N,) labels of a split, cached by the tokenizer's weights."""
    cache = CACHE_DIR / f"{split}_{fingerprint(vqgan.state_dict(), vqgan.config.to_dict())}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return torch.from_numpy(data["tokens"]).long(), torch.from_numpy(data["labels"]).long()
    images, labels = load_fmnist(split)
    x = to_tensor(images)
    tokens = torch.cat([vqgan.encode(x[i:i + batch_size]).flatten(1) for i in range(0, len(x), batch_size)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, tokens=tokens.numpy().astype(np.int16), labels=labels)
    return tokens, torch.from_numpy(labels).long()


def init_weights(model: MaskGIT) -> None:
    """MaskGIT's initialisation: truncated normal (std 0.02) for linear and embedding weights.

    The default N(0, 1) embedding makes the tied head's initial logits ~10x too large.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("in_proj_weight"):
            torch.nn.init.trunc_normal_(p, std=0.02)


def grow_from(model: MaskGIT, path: str | Path) -> str:
    """Start ``model`` from a trained shallower MaskGIT of the same width (progressive growing),
    or of the same depth (training further).

    Trained block i goes to block ``i * depth // old_depth``; every block in between is
    new with zeroed output projections, so it starts as the identity and the grown model
    computes exactly what the trained one does. Returns a line for the log.
    """
    old = load_migm(path).model
    oc, nc = old.config, model.config
    if (oc.hidden, oc.heads, oc.mlp_dim, oc.grid, oc.codebook_size, oc.num_classes) != (
            nc.hidden, nc.heads, nc.mlp_dim, nc.grid, nc.codebook_size, nc.num_classes) or nc.depth < oc.depth:
        raise ValueError(f"--init-from {path}: {oc.to_dict()} cannot grow into {nc.to_dict()}; "
                         f"only the depth may differ (and only grow)")
    placed = {i * nc.depth // oc.depth: i for i in range(oc.depth)}
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("transformer.layers.")}
    for new_index in range(nc.depth):
        if new_index in placed:
            prefix = f"transformer.layers.{placed[new_index]}."
            state.update({f"transformer.layers.{new_index}.{k[len(prefix):]}": v
                          for k, v in old.state_dict().items() if k.startswith(prefix)})
        else:
            attn, ff = model.transformer.layers[new_index]
            with torch.no_grad():
                for linear in (attn.fn.mha.out_proj, ff.fn.net[3]):
                    linear.weight.zero_()
                    linear.bias.zero_()
            prefix = f"transformer.layers.{new_index}."
            state.update({k: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    model.load_state_dict(state)
    if nc.depth == oc.depth:
        return f"training further from {path} (depth {nc.depth})"
    return f"grown from {path} (depth {oc.depth} -> {nc.depth}; trained blocks at {sorted(placed)})"


def mask_tokens(tokens: torch.Tensor, generator: torch.Generator, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT's training corruption: (B, L) ids -> (input ids with [MASK], bool mask (B, L))."""
    B, L = tokens.shape
    ratio = torch.arccos(torch.rand(B, generator=generator)) / (math.pi / 2)  # (B,) in [0, 1]
    mask = torch.rand(B, L, generator=generator) < ratio[:, None]
    # At least one masked position per image, so every image contributes to the loss.
    empty = ~mask.any(dim=1)
    if empty.any():
        mask[empty, torch.randint(L, (int(empty.sum()),), generator=generator)] = True
    return tokens.masked_fill(mask, mask_id), mask


def drop_labels(labels: torch.Tensor, generator: torch.Generator, p: float, null_class: int) -> torch.Tensor:
    return torch.where(torch.rand(labels.shape, generator=generator) < p, torch.full_like(labels, null_class), labels)


@torch.no_grad()
def masked_loss(model: MaskGIT, tokens: torch.Tensor, labels: torch.Tensor, seed: int = 0, batch_size: int = 1000) -> float:
    """Mean masked-token cross-entropy on a token set, with fixed masks (a validation number)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        t, y = tokens[i:i + batch_size], labels[i:i + batch_size]
        inp, mask = mask_tokens(t, generator, model.config.mask_id)
        logits = model(inp, y)
        total += F.cross_entropy(logits[mask], t[mask], reduction="sum").item()
        count += int(mask.sum())
    return total / count


def quick_eval(migm: MaskGITMIGM, per_class: int, steps: int, seed: int = 0) -> dict:
    """Class consistency (and FD-FMNIST) of a small sample, when the shipped classifier exists."""
    try:
        from training.fmnist.classifier import DEFAULT_CLASSIFIER, load_classifier
        from training.fmnist.fd import class_consistency, fd_fmnist, reference_stats
    except ImportError as exc:  # the evaluation helpers are optional for training
        return {"skipped": str(exc)}
    if not DEFAULT_CLASSIFIER.is_file():
        return {"skipped": f"no classifier at {DEFAULT_CLASSIFIER}"}
    classifier = load_classifier()
    classes = [c for c in range(10) for _ in range(per_class)]
    result = generate(migm, classes, steps=steps, seed=seed, **SAMPLING_DEFAULTS)
    images = (result.images[..., 0] * 255).round().to(torch.uint8).numpy()  # (B, H, W, 3) -> (B, H, W)
    return {
        "images": len(classes), "steps": steps, **SAMPLING_DEFAULTS,
        "class_consistency": round(class_consistency(images, classes, classifier), 4),
        "fd_fmnist": round(fd_fmnist(images, classifier, reference_stats(classifier)), 3),
    }


# A --resume must share these with the run it continues, or it would not be the same run.
EXACT_ARGS = ("preset", "init_from", "vq", "steps", "batch_size", "lr", "weight_decay", "label_drop",
              "label_smoothing", "ema", "seed")


def lr_lambda(steps: int):
    """Linear warm-up over 5 % of the run, then cosine down to 0.1 of the peak."""
    warmup = max(1, steps // 20)
    return lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def stage_key(earlier: int) -> str:
    """The metadata key of a model's training command after ``earlier`` base-model stages."""
    return ("maskgit", "maskgit_grown")[earlier] if earlier < 2 else f"maskgit_{earlier + 1}"


def recipe_commands(commands: dict[str, str]) -> list[str]:
    """A model file's commands in the order they ran: tokenizer, then each base-model stage."""
    stages = [commands[stage_key(i)] for i in range(len(commands)) if stage_key(i) in commands]
    return ([commands["tokenizer"]] if "tokenizer" in commands else []) + stages


def tokenizer_path(args: argparse.Namespace) -> str:
    """A grown model keeps the tokenizer of the model it grows from: its bundled one, unless --vq says."""
    return args.vq or args.init_from or str(DEFAULT_VQ)


def train(args: argparse.Namespace, command: str, should_stop=None) -> Path:
    """Train as ``args`` say; checkpoints every ``--ckpt-every`` steps in the run folder, from
    which ``--resume`` continues bit-exactly. ``should_stop(step)``, asked before each step
    (tests), ends the run there without writing the model."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    vq = tokenizer_path(args)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(out)
    log = Log(Path(args.log) if args.log else run_dir / "train.log")
    log(f"$ {command}")
    vqgan = load_vqgan(vq)
    vq_info = read_safetensors_metadata(vq).get("info", {})
    # The tokenizer by content: growing in place (--out = --init-from) replaces the file at the end.
    exact = {k: getattr(args, k) for k in EXACT_ARGS} | {"vq": fingerprint(vqgan.state_dict(), vqgan.config.to_dict())}
    run = ResumableRun(run_dir, args.resume, exact, args.keep_ckpts, log)
    config = MASKGIT_FMNIST_PRESETS[args.preset]
    model = MaskGIT(config)
    init_weights(model)
    # A resumed run takes --init-from's recipe from its checkpoint: an in-place run may have replaced the file.
    grown = {}
    if args.init_from and run.resume_path is None:
        grown = read_safetensors_metadata(args.init_from).get("info", {})
        log(grow_from(model, args.init_from))
    log(f"MaskGIT {args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters, {config.to_dict()}")

    t0 = time.perf_counter()
    train_tokens, train_labels = tokenize(vqgan, "train")
    test_tokens, test_labels = tokenize(vqgan, "test")
    log(f"tokenized train {tuple(train_tokens.shape)} and test {tuple(test_tokens.shape)} in {time.perf_counter() - t0:.0f}s")

    ema = copy.deepcopy(model).eval().requires_grad_(False)
    decay_params = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    other_params = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": args.weight_decay},
                             {"params": other_params, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.96))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.steps))
    generator = torch.Generator().manual_seed(args.seed)
    done, seconds_before, history = 0, 0.0, []

    def load(record: dict, tensors: dict[str, torch.Tensor]) -> None:
        restore_state(tensors, record["optimizer"]["param_groups"], model, ema, opt, generator)

    record = run.restore(load)
    if record is not None:
        done, seconds_before, history = record["step"], record["train_seconds"], record["val_history"]
        grown, command = record["grown_info"], record["command"]  # the file records the run, not its resumption
        sched.last_epoch = done  # the optimizer's groups already hold the learning rate of this step

    def checkpoint(step: int, seconds: float) -> None:
        tensors, groups = state_tensors(model, ema, opt, generator)
        run.save(step, tensors, {"train_seconds": seconds, "val_history": history, "grown_info": grown,
                                 "command": command, "optimizer": {"param_groups": groups}})

    start = time.perf_counter() - seconds_before
    model.train()
    for step in range(done + 1, args.steps + 1):
        if should_stop is not None and should_stop(step):
            log(f"stopped before step {step}")
            return run_dir
        idx = torch.randint(len(train_tokens), (args.batch_size,), generator=generator)
        tokens = train_tokens[idx]
        inp, mask = mask_tokens(tokens, generator, config.mask_id)
        classes = drop_labels(train_labels[idx], generator, args.label_drop, config.null_class)
        logits = model(inp, classes)  # (B, 49, codebook)
        loss = F.cross_entropy(logits[mask], tokens[mask], label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            ema_update(ema, model, min(args.ema, (1 + step) / (10 + step)))
        if step % args.log_every == 0 or step == 1:
            elapsed = time.perf_counter() - start
            log(f"step {step}/{args.steps}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{elapsed:.0f}s ({(elapsed - seconds_before) / (step - done):.2f} s/step)")
        if args.val_every and step % args.val_every == 0 and step < args.steps:
            history.append({"step": step, "test_masked_ce": round(masked_loss(ema, test_tokens, test_labels), 4)})
            log(f"step {step}: masked-token CE on the test split (EMA) {history[-1]['test_masked_ce']:.4f}")
        if args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps:
            checkpoint(step, time.perf_counter() - start)
    train_seconds = time.perf_counter() - start
    val = masked_loss(ema, test_tokens, test_labels)
    log(f"trained {args.steps} steps in {train_seconds:.0f}s; masked-token CE on the test split (EMA): {val:.4f}")

    migm = MaskGITMIGM(ema, vqgan, name="fmnist_maskgit", class_names=CLASS_NAMES,
                       fingerprint=fingerprint(ema.state_dict(), config.to_dict()))
    metrics = {"test_masked_ce": round(val, 4), "tokenizer": vq_info.get("test_metrics", grown.get("metrics", {}).get("tokenizer", {}))}
    if history:
        metrics["test_masked_ce_history"] = history
    if args.eval_per_class:
        t0 = time.perf_counter()
        metrics["quick_sample"] = quick_eval(migm, args.eval_per_class, steps=8)
        log(f"quick sample check: {metrics['quick_sample']} ({time.perf_counter() - t0:.0f}s)")
    info = {
        "data": "Fashion-MNIST train split (60000 images) tokenized to 7x7 codes; metrics on the test split",
        "preset": args.preset, "init_from": args.init_from or None, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "label_drop": args.label_drop, "ema": args.ema, "seed": args.seed, "train_seconds": round(train_seconds),
        "metrics": metrics, "sampling_defaults": grown.get("sampling_defaults", SAMPLING_DEFAULTS),
        "commands": {"tokenizer": vq_info.get("command", "python -m training.fmnist.train_tokenizer"), "maskgit": command},
    }
    # Stages resumed with another thread count, keyed like the commands (see ResumableRun).
    threads = {"tokenizer": vq_info["threads_by_step"]} if isinstance(vq_info.get("threads_by_step"), list) else {}
    stage = "maskgit"
    if args.init_from:  # the whole recipe: how the model this one grew from was made
        commands = dict(grown.get("commands", {}))
        stage = stage_key(sum(k.startswith("maskgit") for k in commands))
        info["commands"] = {**commands, stage: command}
        info["init_from_info"] = {k: grown.get(k) for k in ("preset", "steps", "train_seconds", "metrics")}
        threads = dict(grown.get("threads_by_step", {}))
    own = run.provenance().get("threads_by_step")
    if own:
        threads[stage] = own
    if threads:
        info["threads_by_step"] = threads
    save_migm(migm, out, info=info)
    log(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(MASKGIT_FMNIST_PRESETS), default="fmnist-h96-d8")
    p.add_argument("--vq", default="", help="tokenizer from training.fmnist.train_tokenizer (default: the one bundled in "
                   f"--init-from when growing, else {DEFAULT_VQ})")
    p.add_argument("--init-from", default="", help="a trained MIGM of the same width to grow in depth from (or to "
                   "train further, at the same depth)")
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.03)
    p.add_argument("--label-drop", type=float, default=0.1, help="probability of training a sample as 'no class'")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--eval-per-class", type=int, default=50, help="images per class for the final quick check (0: skip)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is much faster than 2 on a busy 2-core machine")
    p.add_argument("--log", default="", help="log file (default: train.log in the run folder)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--run-dir", default="", help="checkpoints and the log (default: OUT's name + .run beside it, or "
                   "in runs/fmnist/ for a file under models/)")
    add_resume_arguments(p)
    p.add_argument("--val-every", type=int, default=0, help="steps between test-split masked-token CE checks (0: at the end only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return train(parse_args(argv), ("python -m training.fmnist.train_maskgit " + shlex.join(argv)).strip())
    except (TrainingError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
