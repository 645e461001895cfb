"""Fashion-MNIST from the IDX files, with numpy only (no torchvision).

The data set is Debian's ``dataset-fashion-mnist`` package, which puts
``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in /usr/share/datasets/fashion-mnist
(``bash scripts/setup.sh`` installs it). Set ``FMNIST_ROOT`` to read another folder;
plain (not gzipped) IDX files are read as well.

Pixel conventions used across ``training/``:

- raw images: ``uint8`` numpy, shape (N, 28, 28), 0 = black background, 255 = white;
- model tensors: ``float32`` torch, shape (N, 1, 28, 28), values in [-1, 1]
  (``to_tensor`` / ``to_uint8`` convert between the two, exactly and explicitly).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = Path(os.environ.get("FMNIST_ROOT", "/usr/share/datasets/fashion-mnist"))

# The official label names, index = label id.
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_SPLIT_SIZE = {"train": 60000, "test": 10000}

# IDX magic number: two zero bytes, a type code (0x08 = unsigned byte), the number of dims.
_IDX_UBYTE = 0x08


def _find_file(root: Path, stem: str) -> Path:
    """``root/stem.gz`` or ``root/stem``; a clear error with the remedy when neither exists."""
    for name in (stem + ".gz", stem):
        path = root / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file not found: {root / (stem + '.gz')} (nor the unzipped {root / stem}). "
        "Run `bash scripts/setup.sh` (it installs Debian's dataset-fashion-mnist package, "
        "i.e. `apt-get install dataset-fashion-mnist`), or set FMNIST_ROOT / pass root= "
        "to a folder holding the four IDX files."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzipped or not) into a uint8 array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    type_code, ndim = data[2], data[3]
    if type_code != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX type code 0x{type_code:02x} is not unsigned byte (0x08)")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) + header
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, but its header {shape} implies {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fmnist(split: str, root: str | os.PathLike = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Load a split: ``"train"`` (60000 images) or ``"test"`` (10000 images).

    Returns ``(images, labels)``: images ``uint8`` (N, 28, 28), labels ``int64`` (N,) in 0..9
    (names in ``CLASS_NAMES``). Reads the files each call; keep the result if you need it twice.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root)
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(_find_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{root}: {split} images have shape {images.shape}, expected (N, 28, 28)")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{root}: {images.shape[0]} {split} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{root}: {split} labels outside 0..{NUM_CLASSES - 1}")
    return images, labels


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) in 0..255 -> float32 (N, 1, 28, 28) in [-1, 1] (0 -> -1, 255 -> 1)."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if x.dtype != torch.uint8 or x.ndim != 3:
        raise ValueError(f"to_tensor expects uint8 images of shape (N, H, W), got {x.dtype} {tuple(x.shape)}")
    return (x.to(torch.float32) / 127.5 - 1.0).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 1, 28, 28) in [-1, 1] -> uint8 numpy (N, 28, 28); values are clamped, then rounded."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"to_uint8 expects (N, 1, H, W), got {tuple(x.shape)}")
    pixels = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8)[:, 0].numpy()  # (N, 1, H, W) -> (N, H, W)
