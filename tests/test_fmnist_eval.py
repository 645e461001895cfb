"""Fashion-MNIST data, the shipped evaluation classifier, FD-FMNIST and class consistency.

Uses the real data set (installed by scripts/setup.sh; missing data fails, naming the remedy) and the shipped
``models/eval/fmnist_classifier.safetensors``. The shipped classifier sees about 10k images
in all; the reference-statistics cache is exercised with a tiny random classifier on a
small IDX split written by the test.
"""

from __future__ import annotations

import gzip
import math
import re
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from training.fmnist.classifier import (
    CLASSIFIER_PRESETS,
    DEFAULT_CLASSIFIER,
    FmnistClassifier,
    load_classifier,
    save_classifier,
)
from training.fmnist.fd import (
    class_consistency,
    extract_features,
    fd_fmnist,
    feature_stats,
    frechet_distance,
    frechet_distance_stats,
    reference_stats,
    to_classifier_input,
    trace_sqrt_product,
)
from training.fmnist.dataset import CLASS_NAMES, DEFAULT_ROOT, load_fmnist, to_tensor, to_uint8

N_ACC = 2000  # test images in the accuracy check
N_FD = 1500  # images per set in the real-data FD ordering check


@pytest.fixture(scope="module")
def test_split():
    # scripts/setup.sh installs the data set: missing data is a failure, not a skip.
    return load_fmnist("test")


@pytest.fixture(scope="module")
def train_split():
    return load_fmnist("train")


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def tiny_classifier():
    torch.manual_seed(0)
    return FmnistClassifier(CLASSIFIER_PRESETS["fmnist-cnn-tiny"]).eval()


# --- data -----------------------------------------------------------------------------


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_loader_shapes_dtypes_labels(split, n, request):
    images, labels = request.getfixturevalue(f"{split}_split")
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10  # balanced classes
    assert images.min() == 0 and images.max() == 255


def test_class_names():
    assert CLASS_NAMES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )


def test_tensor_conversion_round_trip(test_split):
    images = test_split[0][:64]
    x = to_tensor(images)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(to_uint8(x), images)
    assert to_uint8(torch.tensor([-3.0, 3.0]).view(2, 1, 1, 1)).ravel().tolist() == [0, 255]  # clamped


def test_missing_data_names_path_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_fmnist("test", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "scripts/setup.sh" in str(err.value)
    with pytest.raises(ValueError, match="split"):
        load_fmnist("validation", root=DEFAULT_ROOT)


# --- classifier -----------------------------------------------------------------------


def test_shipped_classifier_file_and_accuracy(classifier, test_split):
    assert DEFAULT_CLASSIFIER.stat().st_size < 2 * 1024 * 1024
    meta = classifier.metadata
    for key in ("config", "data", "epochs", "seed", "test_accuracy", "command"):
        assert key in meta
    # The shipped file was trained before the recipe moved to training/fmnist/.
    assert re.match(r"python -m training(\.fmnist)?\.classifier ", meta["command"])
    assert float(meta["test_accuracy"]) >= 0.90
    images, labels = test_split
    # class_consistency with the true labels is plain accuracy.
    acc = class_consistency(images[:N_ACC], labels[:N_ACC], classifier)
    assert acc >= 0.88
    assert acc == pytest.approx(float(meta["test_accuracy"]), abs=0.02)
    assert classifier.features(to_tensor(images[:3])).shape == (3, classifier.config.feature_dim)


def test_class_consistency_with_shuffled_labels_is_chance(classifier, test_split):
    images, labels = test_split[0][:1000], test_split[1][:1000]
    shuffled = np.random.default_rng(0).permutation(labels)
    assert class_consistency(images, shuffled, classifier) == pytest.approx(0.1, abs=0.035)
    with pytest.raises(ValueError, match="labels"):
        class_consistency(images, labels[:10], classifier)


def test_save_load_round_trip_and_refusal(tiny_classifier, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_classifier(tiny_classifier, path, {"epochs": "0", "seed": "0"})
    loaded = load_classifier(path)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(tiny_classifier(x), loaded(x))
    assert loaded.config == tiny_classifier.config and not loaded.training

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something_else"})
    with pytest.raises(ValueError, match="not a Fashion-MNIST classifier"):
        load_classifier(other)
    with pytest.raises(FileNotFoundError, match="python -m training.fmnist.classifier"):
        load_classifier(tmp_path / "missing.safetensors")


# --- Fréchet distance -----------------------------------------------------------------


def test_fd_closed_form_diagonal_gaussians():
    # N([0, 0], diag(1, 4)) vs N([1, 2], diag(4, 1)):
    # |mu diff|^2 = 1 + 4 = 5; tr(S1 + S2 - 2 (S1 S2)^1/2) = (1 - 2)^2 + (2 - 1)^2 = 2 -> FD = 7.
    mu1, s1 = np.zeros(2), np.diag([1.0, 4.0])
    mu2, s2 = np.array([1.0, 2.0]), np.diag([4.0, 1.0])
    for method in ("eigh", "auto"):
        assert frechet_distance(mu1, s1, mu2, s2, method) == pytest.approx(7.0, abs=1e-9)
        assert frechet_distance(mu1, s1, mu1, s1, method) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (mu1 - mu2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[9.0]], [3.0], [[1.0]], "eigh") == pytest.approx(4.0 + 4.0)


def test_fd_closed_form_non_commuting_2x2():
    # For 2x2 M with non-negative eigenvalues: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    m = s1 @ s2
    expected_cross = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    assert trace_sqrt_product(s1, s2, "eigh") == pytest.approx(expected_cross, rel=1e-10)
    mu1, mu2 = np.array([0.5, -1.0]), np.array([0.0, 1.0])
    expected = 0.25 + 4.0 + np.trace(s1) + np.trace(s2) - 2 * expected_cross
    assert frechet_distance(mu1, s1, mu2, s2, "eigh") == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2, "auto") == pytest.approx(expected, rel=1e-8)


def test_fd_scipy_and_eigh_agree():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    b = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    sa, sb = feature_stats(a), feature_stats(b)
    assert frechet_distance_stats(sa, sb, "scipy") == pytest.approx(frechet_distance_stats(sa, sb, "eigh"), rel=1e-6)


def test_fd_fmnist_orders_real_above_corrupted(classifier, test_split, train_split):
    reference = feature_stats(extract_features(test_split[0][:N_FD], classifier))
    images = train_split[0][:N_FD]
    rng = np.random.default_rng(0)
    shuffled = images.reshape(N_FD, -1)[:, rng.permutation(28 * 28)].reshape(N_FD, 28, 28)  # same histogram
    noise = torch.rand(500, 1, 28, 28) * 2 - 1
    fd_train = fd_fmnist(images, classifier, reference)
    fd_shuffled = fd_fmnist(shuffled, classifier, reference)
    fd_noise = fd_fmnist(noise, classifier, reference)
    assert 0 < fd_train < 0.05 * fd_shuffled
    assert fd_train < 0.05 * fd_noise


def _write_idx(path, array):
    """IDX file of unsigned bytes: 0, 0, type 0x08, ndim, big-endian uint32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def small_split_root(tmp_path):
    """A folder holding a 300-image 'test' split in the IDX format (random pixels)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (300, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(300) % 10)
    return root


def test_idx_reader_on_written_files(small_split_root):
    images, labels = load_fmnist("test", small_split_root)
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    bad = small_split_root / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 300) + bytes(299))  # one byte short
    with pytest.raises(ValueError, match="implies"):
        load_fmnist("test", small_split_root)


def test_reference_stats_cache(tiny_classifier, small_split_root, tmp_path):
    cache = tmp_path / "cache"
    stats = reference_stats(tiny_classifier, "test", root=small_split_root, cache_dir=cache)
    assert len(list(cache.glob("test_*.npz"))) == 1 and stats.count == 300
    direct = feature_stats(extract_features(load_fmnist("test", small_split_root)[0], tiny_classifier))
    assert np.allclose(stats.mu, direct.mu) and np.allclose(stats.sigma, direct.sigma)
    again = reference_stats(tiny_classifier, "test", root=small_split_root, cache_dir=cache)  # from the file
    assert np.array_equal(stats.mu, again.mu) and np.array_equal(stats.sigma, again.sigma)

    changed = FmnistClassifier(tiny_classifier.config).eval()  # other weights -> other cache entry
    changed.load_state_dict(tiny_classifier.state_dict())
    with torch.no_grad():
        changed.feature.bias += 1.0
    moved = reference_stats(changed, "test", root=small_split_root, cache_dir=cache)
    assert len(list(cache.glob("test_*.npz"))) == 2
    assert np.allclose(moved.mu, stats.mu + 1.0) and np.allclose(moved.sigma, stats.sigma)
    uncached = reference_stats(tiny_classifier, "test", root=small_split_root, cache_dir=None)
    assert np.allclose(uncached.mu, stats.mu)


def test_image_conventions_give_the_same_features(classifier, test_split):
    raw = test_split[0][:32]
    nchw = to_tensor(raw)  # (N, 1, 28, 28) in [-1, 1]
    gray01 = torch.from_numpy(raw).float().div(255).unsqueeze(-1)  # (N, 28, 28, 1) in [0, 1]
    rgb01 = gray01.expand(-1, -1, -1, 3)  # (N, 28, 28, 3) in [0, 1]
    ref = extract_features(nchw, classifier)
    for images in (raw, gray01, rgb01, gray01.numpy()):
        assert np.allclose(extract_features(images, classifier), ref, atol=1e-4)
    assert torch.equal(to_classifier_input(nchw * 1.05), (nchw * 1.05).clamp(-1, 1))  # overshoot is clamped
    with pytest.raises(ValueError, match="uint8"):
        to_classifier_input(torch.from_numpy(raw).float().unsqueeze(-1))  # 0..255 floats
    with pytest.raises(ValueError, match="28x28"):
        to_classifier_input(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="Accepted"):
        to_classifier_input(torch.zeros(2, 28, 28))  # float without a channel axis is ambiguous


def test_interrupted_classifier_training_resumes_bit_exactly(tmp_path, monkeypatch):
    from tests.resume_check import assert_resumes_bit_exactly
    from training.fmnist import classifier

    g = torch.Generator().manual_seed(0)
    splits = {split: (torch.rand(n, 1, 28, 28, generator=g) * 2 - 1, torch.randint(10, (n,), generator=g))
              for split, n in (("train", 40), ("test", 20))}
    monkeypatch.setattr(classifier, "load_split", lambda split, root: splits[split])

    def run(out, *extra, should_stop=None):
        argv = ["--epochs", "3", "--batch-size", "16", "--threads", "1", "--out", str(out),
                "--run-dir", str(out.with_suffix(".run")), *extra]
        return classifier.train(classifier.parse_args(argv), f"cmd {out.stem}", should_stop=should_stop)

    # stopped before epoch 3, after the checkpoint of epoch 2; augmentation draws from the generator
    _, part = assert_resumes_bit_exactly(run, tmp_path, 3, ("--no-augment",), "augment")
    assert classifier.read_classifier_metadata(part)["command"] == "cmd part"
