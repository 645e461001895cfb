"""A small Fashion-MNIST CNN whose penultimate features drive the FD-FMNIST metric.

Inputs are float (N, 1, 28, 28) in [-1, 1] (see ``training.fmnist.dataset.to_tensor``).
``features(x)`` returns the 128-d penultimate layer (before its ReLU and the head);
``forward(x)`` returns class logits.

Train and ship the evaluation weights (a few CPU minutes)::

    python -m training.fmnist.classifier --out models/eval/fmnist_classifier.safetensors --epochs 6 --seed 0

The file is safetensors only: its metadata holds the architecture (``config``, JSON) and how
it was made (data, epochs, seed, test accuracy, the exact command), so ``load_classifier``
rebuilds the network from the file alone and never unpickles anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.checkpoints import ResumableRun, TrainingError, add_resume_arguments, restore_state, state_tensors
from training.fmnist.dataset import DEFAULT_ROOT, IMAGE_SIZE, NUM_CLASSES, load_fmnist, to_tensor

FILE_FORMAT = "fmnist_classifier/1"
# The shipped evaluation weights (``load_classifier()`` with no argument reads them): in the clone this
# package runs from, else (installed with ``pip install .``) under the working directory, like the sweep's models.
_SHIPPED = Path("models") / "eval" / "fmnist_classifier.safetensors"
_IN_CLONE = Path(__file__).resolve().parents[2] / _SHIPPED
DEFAULT_CLASSIFIER = _IN_CLONE if _IN_CLONE.is_file() else _SHIPPED

log = logging.getLogger("training.fmnist.classifier")


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # one conv block per entry, each halves the size
    feature_dim: int = 128  # penultimate width = the FD-FMNIST feature size
    num_classes: int = NUM_CLASSES
    dropout: float = 0.2  # between features and head, training only
    image_size: int = IMAGE_SIZE

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        raw = json.loads(text)
        raw["channels"] = tuple(int(c) for c in raw["channels"])
        return cls(**raw)


CLASSIFIER_PRESETS = {
    "fmnist-cnn": ClassifierConfig(),
    "fmnist-cnn-tiny": ClassifierConfig(channels=(8, 16, 16), feature_dim=32),  # for unit tests
}


class ConvBlock(nn.Sequential):
    """3x3 conv, batch norm, ReLU, 2x2 max pool: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )


class FmnistClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        widths = (1, *config.channels)
        self.blocks = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        side = config.image_size // 2 ** len(config.channels)  # 28 -> 14 -> 7 -> 3
        if side < 1:
            raise ValueError(f"{len(config.channels)} pooling blocks leave nothing of a {config.image_size}px image")
        self.feature = nn.Linear(config.channels[-1] * side * side, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, feature_dim) penultimate features.

        Taken before the layer's ReLU: units that never fire after the ReLU would give the
        FD covariance constant-zero dimensions (a singular matrix); pre-activations do not.
        """
        h = self.blocks(x)  # (N, 1, 28, 28) -> (N, C, 3, 3)
        return self.feature(h.flatten(1))  # (N, C*3*3) -> (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, num_classes) logits."""
        return self.head(self.dropout(F.relu(self.features(x))))


def save_classifier(model: FmnistClassifier, path: str | Path, metadata: dict[str, str]) -> None:
    """Write weights + ``config`` JSON + the given provenance strings to a safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FILE_FORMAT, "config": model.config.to_json(), **metadata}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)


def read_classifier_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_classifier(path: str | Path = DEFAULT_CLASSIFIER, device: str | torch.device = "cpu") -> FmnistClassifier:
    """Rebuild the classifier from a safetensors file (config from its metadata) in eval mode.

    The file's metadata (test accuracy, command, ...) is kept on ``model.metadata``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights not found: {path}; train them with "
            f"`python -m training.fmnist.classifier --out {path}`"
        )
    meta = read_classifier_metadata(path)
    if meta.get("format") != FILE_FORMAT or "config" not in meta:
        raise ValueError(
            f"{path} is not a Fashion-MNIST classifier file (format {meta.get('format')!r}, "
            f"expected {FILE_FORMAT!r}); use one written by `python -m training.fmnist.classifier`"
        )
    model = FmnistClassifier(ClassifierConfig.from_json(meta["config"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    model.metadata = meta
    return model.to(device).eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Class ids (N,) for inputs (N, 1, 28, 28) in [-1, 1]; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random shift by up to ``max_shift`` px (background fill) and a random horizontal flip.

    (B, 1, H, W) in [-1, 1] -> same shape.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (B, 1, H+2s, W+2s), -1 = black background
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = dy[:, None] + torch.arange(h)  # (B, H)
    cols = dx[:, None] + torch.arange(w)  # (B, W)
    out = padded[torch.arange(b)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]  # (B, H, W)
    flip = torch.rand(b, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)


# A --resume must share these with the run it continues, or it would not be the same run.
EXACT_ARGS = ("epochs", "seed", "preset", "batch_size", "lr", "weight_decay", "augment")


def load_split(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_fmnist(split, root)
    return to_tensor(images), torch.from_numpy(labels)


def train(args: argparse.Namespace, command: str, should_stop=None) -> Path:
    """Train as ``args`` say; a checkpoint after every epoch in ``--run-dir``, from which
    ``--resume`` continues bit-exactly. ``should_stop(epoch)``, asked before each epoch
    (tests), ends the run there without writing the classifier."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    run = ResumableRun(args.run_dir, args.resume, {k: getattr(args, k) for k in EXACT_ARGS}, 2, log.info)

    x_train, y_train = load_split("train", args.root)
    x_test, y_test = load_split("test", args.root)

    config = CLASSIFIER_PRESETS[args.preset]
    model = FmnistClassifier(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("preset %s: %s, %d parameters, %d threads", args.preset, config, n_params, args.threads)

    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )

    done, seconds_before = 0, 0.0

    def load(record: dict, tensors: dict[str, torch.Tensor]) -> None:
        restore_state(tensors, record["optimizer"]["param_groups"], model, None, optimizer, generator)

    record = run.restore(load)
    if record is not None:
        done, seconds_before, command = record["step"], record["train_seconds"], record["command"]
        schedule.last_epoch = done * steps_per_epoch  # the optimizer's groups hold this step's lr and momentum

    start = time.time() - seconds_before
    for epoch in range(done, args.epochs):
        if should_stop is not None and should_stop(epoch + 1):
            log.info("stopped before epoch %d", epoch + 1)
            return run.run_dir
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss, correct = 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            x, y = x_train[idx], y_train[idx]
            if args.augment:
                x = augment(x, generator)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        test_acc = (predict(model, x_test) == y_test).float().mean().item()
        log.info(
            "epoch %d/%d  train loss %.4f  train acc %.4f  test acc %.4f  (%.0f s)",
            epoch + 1, args.epochs, total_loss / len(x_train), correct / len(x_train), test_acc, time.time() - start,
        )
        if epoch + 1 < args.epochs:
            tensors, groups = state_tensors(model, None, optimizer, generator)
            run.save(epoch + 1, tensors, {"train_seconds": time.time() - start, "command": command,
                                          "optimizer": {"param_groups": groups}})
    train_seconds = time.time() - start

    model.eval()
    test_acc = (predict(model, x_test) == y_test).float().mean().item()
    metadata = {
        "data": f"Fashion-MNIST train split ({len(x_train)} images) for training, "
        f"test split ({len(x_test)} images) for test_accuracy; IDX files from {args.root}",
        "epochs": str(args.epochs),
        "seed": str(args.seed),
        "test_accuracy": f"{test_acc:.4f}",
        "command": command,
        **{k: json.dumps(v) for k, v in run.provenance().items()},
        "preset": args.preset,
        "hyperparameters": json.dumps(
            {
                "batch_size": args.batch_size,
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "schedule": "OneCycleLR pct_start=0.15",
                "optimizer": "AdamW",
                "augment": "random shift <=2px + horizontal flip" if args.augment else "none",
            },
            sort_keys=True,
        ),
        "train_seconds": f"{train_seconds:.0f}",
        "torch_version": torch.__version__,
    }
    save_classifier(model, args.out, metadata)
    size_kb = Path(args.out).stat().st_size / 1024
    log.info("test accuracy %.4f after %.0f s; wrote %s (%.0f KiB)", test_acc, train_seconds, args.out, size_kb)
    return Path(args.out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.fmnist.classifier",
        description="Train the Fashion-MNIST classifier whose features define FD-FMNIST.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER, help="output .safetensors (default: the shipped file)")
    p.add_argument("--epochs", type=int, default=6, help="passes over the 60000 training images (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and augmentation (default 0)")
    p.add_argument("--preset", choices=sorted(CLASSIFIER_PRESETS), default="fmnist-cnn", help="architecture")
    p.add_argument("--batch-size", type=int, default=128, help="default 128")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate, one-cycle (default 3e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="disable shift/flip augmentation")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"Fashion-MNIST folder (default {DEFAULT_ROOT})")
    p.add_argument("--log", type=Path, default=Path("runs/fmnist_classifier/train.log"), help="log file")
    p.add_argument("--run-dir", type=Path, default=Path("runs/fmnist_classifier"), help="checkpoints, one per epoch")
    add_resume_arguments(p, ckpt_every=None)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--epochs, --batch-size and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(args.log)],
    )
    command = shlex.join(["python", "-m", "training.fmnist.classifier", *argv])
    log.info("command: %s", command)
    try:
        return train(args, command)
    except TrainingError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
