"""FD-FMNIST: a Fréchet distance on Fashion-MNIST classifier features, plus class consistency.

FD-FMNIST is **not** FID: it has the same formula,

    FD = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2}),

but the features are the 128-d penultimate layer (pre-activation) of this project's own
Fashion-MNIST classifier (``training.fmnist.classifier``), not Inception-v3 pool3. Its values are
comparable only with other FD-FMNIST values computed with the same classifier file, the same
reference split and the same number of images (the estimate is biased upwards at small N:
train vs test gives about 0.8 with 10000 images and about 3 with 2000); never put them next to
published FID numbers.

Image conventions accepted by every function here (converted explicitly by
``to_classifier_input``):

- float ``(N, 1, 28, 28)`` in [-1, 1]  -- the library's model convention (tokenizer output);
- float ``(N, 28, 28, C)``, C = 1 or 3, in [0, 1] -- the ComfyUI ``IMAGE`` convention
  (the sampler's ``decode`` output); 3 channels are reduced to gray with BT.601 luma
  (0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``);
- uint8 ``(N, 28, 28)`` in 0..255 -- raw pixels as ``training.fmnist.dataset.load_fmnist`` returns.

Float values slightly outside the range (decoders overshoot) are clamped; values far outside
it (e.g. 0..255 floats) raise an error. Images must already be 28x28.

The matrix square root is ``scipy.linalg.sqrtm``, as in the usual FID code; a numpy
eigen-decomposition (``method="eigh"``) is there for singular covariances and as a check.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from training.fmnist.classifier import predict
from training.fmnist.dataset import DEFAULT_ROOT, IMAGE_SIZE, load_fmnist

# Reference statistics: in the clone's git-ignored .cache/, else (installed with ``pip install .``) the user's cache.
_CLONE = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = (
    _CLONE / ".cache" / "fd_fmnist" if (_CLONE / "pyproject.toml").is_file()
    else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "migm-shortcut" / "fd_fmnist"
)

_LUMA = (0.299, 0.587, 0.114)
_RANGE_SLACK = 0.5  # how far outside the documented range a float input may stray before it is an error


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian summary of a feature set: mean (D,), covariance (D, D), both float64."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def feature_stats(features: np.ndarray | torch.Tensor) -> FeatureStats:
    """Mean and (unbiased, N-1) covariance of features (N, D); needs N >= 2."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs features of shape (N >= 2, D), got {f.shape}")
    d = f.shape[1]
    sigma = np.cov(f, rowvar=False).reshape(d, d)  # reshape: np.cov returns a scalar when D = 1
    return FeatureStats(mu=f.mean(axis=0), sigma=sigma, count=f.shape[0])


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str = "auto") -> float:
    """tr((S_1 S_2)^{1/2}) for covariance matrices S_1, S_2.

    ``"eigh"``: S_1 S_2 has the eigenvalues of the symmetric PSD matrix A S_2 A with
    A = S_1^{1/2}, so the trace is the sum of their square roots (numpy only, stable for
    singular matrices). ``"scipy"``: ``scipy.linalg.sqrtm(S_1 S_2)`` as in the usual FID code.
    ``"auto"``: scipy.
    """
    if method == "auto":
        method = "scipy"
    if method == "eigh":
        a = _psd_sqrt(sigma1)
        w = np.linalg.eigvalsh(a @ sigma2 @ a)
        return float(np.sqrt(np.clip(w, 0.0, None)).sum())
    if method == "scipy":
        root = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(root).all():
            # Near-singular product: shift both covariances slightly, as pytorch-fid does.
            offset = np.eye(sigma1.shape[0]) * 1e-6
            root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        return float(np.real(np.trace(root)))
    raise ValueError(f"method must be 'auto', 'eigh' or 'scipy', not {method!r}")


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "auto"
) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    cross = trace_sqrt_product(sigma1, sigma2, method)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def frechet_distance_stats(a: FeatureStats, b: FeatureStats, method: str = "auto") -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method)


def to_classifier_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any accepted image convention (see the module docstring) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    x = x.detach().cpu()
    shape = tuple(x.shape)
    accepted = "float (N, 1, 28, 28) in [-1, 1], float (N, 28, 28, 1|3) in [0, 1], or uint8 (N, 28, 28)"
    if x.dtype == torch.uint8:
        if x.ndim != 3:
            raise ValueError(f"uint8 images must be (N, 28, 28); got {shape}. Accepted: {accepted}")
        x = (x.float() / 127.5 - 1.0).unsqueeze(1)  # (N, H, W) 0..255 -> (N, 1, H, W) in [-1, 1]
    elif x.is_floating_point() and x.ndim == 4 and x.shape[1] == 1:
        x = x.float()
        _check_range(x, -1.0, 1.0, "(N, 1, H, W) images", "[-1, 1]")
        x = x.clamp(-1.0, 1.0)
    elif x.is_floating_point() and x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.float()
        _check_range(x, 0.0, 1.0, "(N, H, W, C) images", "[0, 1]")
        x = x.clamp(0.0, 1.0)
        if x.shape[-1] == 3:
            x = x @ torch.tensor(_LUMA)  # (N, H, W, 3) -> (N, H, W)
        else:
            x = x[..., 0]  # (N, H, W, 1) -> (N, H, W)
        x = (x * 2.0 - 1.0).unsqueeze(1)  # [0, 1] (N, H, W) -> [-1, 1] (N, 1, H, W)
    else:
        raise ValueError(f"unsupported images {x.dtype} {shape}. Accepted: {accepted}")
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images are {tuple(x.shape[-2:])} pixels; resize them to 28x28 first")
    return x


def _check_range(x: torch.Tensor, lo: float, hi: float, what: str, expected: str) -> None:
    if x.numel() == 0:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    x_min, x_max = x.min().item(), x.max().item()
    if x_min < lo - _RANGE_SLACK or x_max > hi + _RANGE_SLACK:
        raise ValueError(
            f"{what} span [{x_min:.3g}, {x_max:.3g}] but must be in {expected}; "
            "rescale them (0..255 pixels: pass uint8 (N, 28, 28) instead)"
        )


@torch.no_grad()
def extract_features(images, classifier: torch.nn.Module, batch_size: int = 500) -> np.ndarray:
    """Penultimate classifier features (N, D) as float64 numpy; the classifier's mode is restored."""
    x = to_classifier_input(images)
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        feats = [classifier.features(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        classifier.train(was_training)
    if not feats:
        raise ValueError("no images given")
    return torch.cat(feats).double().numpy()


def image_stats(images, classifier: torch.nn.Module, batch_size: int = 500) -> FeatureStats:
    """Feature mean/covariance of ``images`` in the classifier's penultimate features."""
    return feature_stats(extract_features(images, classifier, batch_size))


def halves_fd(features: np.ndarray, half: int, reference_stats: FeatureStats) -> list[float]:
    """FD of the two seed blocks of already extracted ``features`` (before and after ``half``): the
    gap between them shows the sampling noise."""
    return [frechet_distance_stats(feature_stats(part), reference_stats) for part in (features[:half], features[half:])]


def fd_and_blocks(images, half: int, classifier: torch.nn.Module,
                  reference_stats: FeatureStats) -> tuple[float, list[float]]:
    """FD of all ``images`` and of the two seed blocks (before and after ``half``), whose gap shows
    the noise; the classifier runs once."""
    feats = extract_features(images, classifier)
    return frechet_distance_stats(feature_stats(feats), reference_stats), halves_fd(feats, half, reference_stats)


def fd_fmnist(images, classifier: torch.nn.Module, reference_stats: FeatureStats, batch_size: int = 500) -> float:
    """FD-FMNIST of ``images`` against precomputed reference statistics (see ``reference_stats``).

    Use several thousand images: with few samples the covariance estimate, and so the
    distance, is biased upwards (compare only values computed with the same N).
    """
    return frechet_distance_stats(image_stats(images, classifier, batch_size), reference_stats)


def classifier_fingerprint(classifier: torch.nn.Module) -> str:
    """sha256 over the classifier's state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(classifier.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def reference_stats(
    classifier: torch.nn.Module,
    split: str = "test",
    root: str | os.PathLike = DEFAULT_ROOT,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    batch_size: int = 500,
) -> FeatureStats:
    """FD-FMNIST reference: feature mean/covariance of a whole Fashion-MNIST split.

    Cached as ``.npz`` in ``cache_dir`` (``None`` disables the cache), keyed by the classifier's
    weights, the split and the data folder, so a retrained classifier never reads stale stats.
    """
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{classifier_fingerprint(classifier)}|{split}|{Path(root).resolve()}".encode())
        cache_file = Path(cache_dir) / f"{split}_{key.hexdigest()[:20]}.npz"
        cached = _read_stats(cache_file)
        if cached is not None:
            return cached
    images, _ = load_fmnist(split, root)
    stats = image_stats(images, classifier, batch_size)
    if cache_file is not None:
        _write_stats(cache_file, stats)
    return stats


def _read_stats(path: Path) -> FeatureStats | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma, count = data["mu"], data["sigma"], int(data["count"])
    except (OSError, ValueError, KeyError):
        return None  # unreadable or partial cache file: recompute
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        return None
    return FeatureStats(mu=mu, sigma=sigma, count=count)


def _write_stats(path: Path, stats: FeatureStats) -> None:
    """Write atomically (temp file + rename) so concurrent runs never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def class_consistency(images, labels, classifier: torch.nn.Module, batch_size: int = 500) -> float:
    """Fraction of images the classifier assigns to the class they were generated for (0..1)."""
    x = to_classifier_input(images)
    if isinstance(labels, torch.Tensor):
        y = labels.detach().cpu().long()
    else:
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if y.shape != (x.shape[0],):
        raise ValueError(f"{x.shape[0]} images but labels of shape {tuple(y.shape)}")
    return float((predict(classifier, x, batch_size) == y).float().mean().item())
