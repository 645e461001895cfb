"""Train the Fashion-MNIST image tokenizer: a small VQ autoencoder, 28x28x1 -> 7x7 tokens.

Same code as the 512-px tokenizer (``shortcut_core.vqgan.VQGAN``), a smaller config.
Loss: MSE + L1 reconstruction plus the VQ loss (codebook + 0.25 commitment). The
codebook starts from encoder outputs (data init) and codes unused for a window of
steps are restarted on random encoder outputs, so usage stays healthy.

    python -m training.fmnist.train_tokenizer                      # the shipped tokenizer (~11 min on a busy 2-core machine)
    python -m training.fmnist.train_tokenizer --steps 200 --out runs/fmnist/vq_try.safetensors

Writes ``--out`` (a ``kind=vqgan`` safetensors with config and info metadata) and logs to
stdout and the run folder (``OUT.run/train.log``), which also holds checkpoints every
``--ckpt-every`` steps; ``--resume`` continues an interrupted run bit-exactly.
Bundled into the MIGM file by ``training.fmnist.train_maskgit``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shortcut_core.migm import save_vqgan
from shortcut_core.vqgan import VQGAN, VQGANConfig
from training.checkpoints import ResumableRun, TrainingError, add_resume_arguments, restore_state, state_tensors
from training.fmnist.dataset import load_fmnist, to_tensor
from training.train import default_run_dir

DEFAULT_OUT = Path("runs/fmnist/vq.safetensors")

VQ_PRESETS = {
    # 28x28x1 -> 7x7 tokens from 256 codes; attention only in the 7x7 mid block. Widths
    # 16/32/32: ch 32 cost 2-5x more per step on 2 CPU cores for the same 10-minute budget.
    "fmnist-f4-256": VQGANConfig(
        embed_dim=32, n_embed=256, z_channels=64, resolution=28, in_channels=1, out_ch=1, ch=16,
        ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
    ),
}
# The same tokens (7x7 from 256 codes, so a base model's shape is unchanged) from twice the
# width: an experiment on whether the tokenizer, not the sampler, sets the FD floor.
VQ_PRESETS["fmnist-f4-256-w32"] = dataclasses.replace(VQ_PRESETS["fmnist-f4-256"], ch=32)


class Log:
    """Print to stdout and append to a file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a")

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        self.file.write(msg + "\n")
        self.file.flush()


def run_dir_for(out: str | Path) -> Path:
    """The run folder (log, checkpoints) of a trainer writing ``out``: beside it, except for the
    shipped files under ``models/``, whose runs go to ``runs/fmnist/`` (git-ignored)."""
    out = Path(out)
    if "models" in out.parent.parts:
        return Path("runs/fmnist") / (out.stem + ".run")
    return default_run_dir(out)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), over the whole set."""
    mse = F.mse_loss(x.clamp(-1, 1), y).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(model: VQGAN, images: torch.Tensor, batch_size: int = 500) -> dict:
    """Test PSNR, codebook usage and perplexity of the token distribution."""
    model.eval()
    recon, ids = [], []
    for i in range(0, len(images), batch_size):
        r, _, t = model(images[i:i + batch_size])
        recon.append(r)
        ids.append(t.flatten())
    model.train()
    recon, ids = torch.cat(recon), torch.cat(ids)
    counts = torch.bincount(ids, minlength=model.config.n_embed).double()
    p = counts / counts.sum()
    perplexity = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    return {"psnr_db": round(psnr(recon, images), 3), "codes_used": int((counts > 0).sum()),
            "perplexity": round(perplexity, 1)}


@torch.no_grad()
def restart_dead_codes(model: VQGAN, usage: torch.Tensor, latents: torch.Tensor, generator: torch.Generator) -> int:
    """Codes unused since the last restart jump onto random encoder outputs (slightly jittered)."""
    dead = (usage == 0).nonzero()[:, 0]
    if len(dead) == 0:
        return 0
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # (B, C, h, w) -> (B*h*w, C)
    pick = torch.randint(len(flat), (len(dead),), generator=generator)
    noise = 0.01 * flat.std() * torch.randn(len(dead), flat.shape[1], generator=generator)
    model.quantize.embedding.weight[dead] = flat[pick] + noise
    return len(dead)


# A --resume must share these with the run it continues, or it would not be the same run.
EXACT_ARGS = ("preset", "steps", "batch_size", "lr", "restart_every", "seed")


def train(args: argparse.Namespace, command: str, should_stop=None) -> Path:
    """Train as ``args`` say; checkpoints every ``--ckpt-every`` steps in the run folder, from
    which ``--resume`` continues bit-exactly. ``should_stop(step)``, asked before each step
    (tests), ends the run there without writing the tokenizer."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(out)
    log = Log(Path(args.log) if args.log else run_dir / "train.log")
    log(f"$ {command}")
    run = ResumableRun(run_dir, args.resume, {k: getattr(args, k) for k in EXACT_ARGS}, args.keep_ckpts, log)
    config = VQ_PRESETS[args.preset]
    model = VQGAN(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"VQGAN {args.preset}: {n_params / 1e6:.3f} M parameters, {config.to_dict()}")

    train_images, test_images = load_images()
    generator = torch.Generator().manual_seed(args.seed)

    # Data init: the codebook starts on encoder outputs of random training images.
    with torch.no_grad():
        batch = train_images[torch.randint(len(train_images), (args.batch_size * 4,), generator=generator)]
        z = model.encode_continuous(batch)
        restart_dead_codes(model, torch.zeros(config.n_embed), z, generator)

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    usage = torch.zeros(config.n_embed)
    done, seconds_before = 0, 0.0

    def load(record: dict, tensors: dict[str, torch.Tensor]) -> None:
        restore_state(tensors, record["optimizer"]["param_groups"], model, None, opt, generator)
        usage.copy_(tensors["usage"])

    record = run.restore(load)
    if record is not None:
        done, seconds_before, command = record["step"], record["train_seconds"], record["command"]
        sched.last_epoch = done  # the optimizer's groups already hold the learning rate of this step

    start = time.perf_counter() - seconds_before
    model.train()
    for step in range(done + 1, args.steps + 1):
        if should_stop is not None and should_stop(step):
            log(f"stopped before step {step}")
            return run_dir
        idx = torch.randint(len(train_images), (args.batch_size,), generator=generator)
        x = train_images[idx]
        z = model.encode_continuous(x)
        z_q, ids, vq = model.quantize_latents(z)
        recon = model.decode_latents(z_q)
        rec_loss = F.mse_loss(recon, x) + F.l1_loss(recon, x)
        loss = rec_loss + vq["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        usage += torch.bincount(ids.flatten(), minlength=config.n_embed).float()
        restarted = 0
        if step % args.restart_every == 0 and step <= args.steps * 0.9:
            restarted = restart_dead_codes(model, usage, z.detach(), generator)
            usage.zero_()
        if step % args.log_every == 0 or step == 1 or restarted:
            elapsed = time.perf_counter() - start
            log(f"step {step}/{args.steps}  loss {loss.item():.4f}  rec {rec_loss.item():.4f}  "
                f"vq {vq['total'].item():.4f}  psnr(batch) {psnr(recon.detach(), x):.2f} dB  "
                f"restarted {restarted}  {elapsed:.0f}s ({(elapsed - seconds_before) / (step - done):.3f} s/step)")
        if args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps:
            tensors, groups = state_tensors(model, None, opt, generator)
            tensors["usage"] = usage
            run.save(step, tensors, {"train_seconds": time.perf_counter() - start, "command": command,
                                     "optimizer": {"param_groups": groups}})
    train_seconds = time.perf_counter() - start
    metrics = evaluate(model, test_images)
    log(f"test: {metrics}  train time {train_seconds:.0f}s")
    info = {
        "name": "fmnist_vq", "data": "Fashion-MNIST train split (60000 images), evaluated on the test split",
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_seconds": round(train_seconds), "test_metrics": metrics, "command": command,
        **run.provenance(),
    }
    save_vqgan(model.eval(), out, info=info)
    log(f"saved {out}")
    return out


def load_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The train and test splits as tensors in [-1, 1]."""
    return to_tensor(load_fmnist("train")[0]), to_tensor(load_fmnist("test")[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(VQ_PRESETS), default="fmnist-f4-256")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--restart-every", type=int, default=100, help="restart codes unused for this many steps")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is much faster than 2 on a busy 2-core machine")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--log", default="", help="log file (default: train.log in the run folder)")
    p.add_argument("--run-dir", default="", help="checkpoints and the log (default: OUT's name + .run beside it, or "
                   "in runs/fmnist/ for a file under models/)")
    add_resume_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m training.fmnist.train_tokenizer " + shlex.join(argv)
    try:
        return train(parse_args(argv), command.strip())
    except TrainingError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
