"""Fashion-MNIST data, the shipped evaluation classifier, FD-FMNIST and class consistency.

Uses the real data set (skipped with the remedy when it is not installed) and the shipped
``models/eval/fmnist_classifier.safetensors``. About 35k classifier forwards in all.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from training.classifier import (
    CLASSIFIER_PRESETS,
    DEFAULT_CLASSIFIER,
    FmnistClassifier,
    load_classifier,
    predict,
    save_classifier,
)
from training.fd import (
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
from training.fmnist import CLASS_NAMES, DEFAULT_ROOT, load_fmnist, to_tensor, to_uint8


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    """The CPUs are shared: run this module on at most 2 threads, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def _load_or_skip(split):
    try:
        return load_fmnist(split)
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")


@pytest.fixture(scope="module")
def test_split():
    return _load_or_skip("test")


@pytest.fixture(scope="module")
def train_split():
    return _load_or_skip("train")


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def test_stats(classifier, test_split, tmp_path_factory):
    """Reference stats of the whole test split, through a fresh cache folder."""
    return reference_stats(classifier, "test", cache_dir=tmp_path_factory.mktemp("fd_cache"))


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_loader_shapes_dtypes_labels(split, n, request):
    images, labels = request.getfixturevalue(f"{split}_split")
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10  # balanced classes
    assert images.max() == 255 and images.min() == 0


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
    with pytest.raises(ValueError):
        load_fmnist("validation", root=DEFAULT_ROOT)


# ---------------------------------------------------------------- classifier


def test_shipped_classifier_file_and_accuracy(classifier, test_split):
    assert DEFAULT_CLASSIFIER.stat().st_size < 2 * 1024 * 1024
    meta = classifier.metadata
    for key in ("config", "data", "epochs", "seed", "test_accuracy", "command"):
        assert key in meta
    assert meta["command"].startswith("python -m training.classifier")
    assert float(meta["test_accuracy"]) >= 0.90
    images, labels = test_split
    acc = (predict(classifier, to_tensor(images[:2000])) == torch.from_numpy(labels[:2000])).float().mean()
    assert acc >= 0.88
    assert classifier.features(to_tensor(images[:3])).shape == (3, classifier.config.feature_dim)


def test_save_load_round_trip_and_refusal(tmp_path):
    torch.manual_seed(0)
    model = FmnistClassifier(CLASSIFIER_PRESETS["fmnist-cnn-tiny"]).eval()
    path = tmp_path / "tiny.safetensors"
    save_classifier(model, path, {"epochs": "0", "seed": "0"})
    loaded = load_classifier(path)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(model(x), loaded(x))
    assert loaded.config == model.config and not loaded.training

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something_else"})
    with pytest.raises(ValueError, match="not a Fashion-MNIST classifier"):
        load_classifier(other)
    with pytest.raises(FileNotFoundError, match="python -m training.classifier"):
        load_classifier(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- Fréchet distance


def test_fd_closed_form_diagonal_gaussians():
    # N([0, 0], diag(1, 4)) vs N([1, 2], diag(4, 1)):
    # |mu diff|^2 = 1 + 4 = 5; tr(S1 + S2 - 2 (S1 S2)^1/2) = (1 - 2)^2 + (2 - 1)^2 = 2 -> FD = 7.
    mu1, s1 = np.zeros(2), np.diag([1.0, 4.0])
    mu2, s2 = np.array([1.0, 2.0]), np.diag([4.0, 1.0])
    for method in ("eigh", "auto"):
        assert frechet_distance(mu1, s1, mu2, s2, method) == pytest.approx(7.0, abs=1e-9)
        assert frechet_distance(mu1, s1, mu1, s1, method) == pytest.approx(0.0, abs=1e-9)


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


def test_fd_scipy_and_eigh_agree():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 16)), rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    sa, sb = feature_stats(a), feature_stats(b)
    assert frechet_distance_stats(sa, sb, "scipy") == pytest.approx(frechet_distance_stats(sa, sb, "eigh"), rel=1e-6)


def test_reference_stats_cache(classifier, test_stats, tmp_path):
    assert test_stats.count == 10000 and test_stats.mu.shape == (classifier.config.feature_dim,)
    first = reference_stats(classifier, "test", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("test_*.npz"))) == 1
    again = reference_stats(classifier, "test", cache_dir=tmp_path)  # from the cache file
    assert np.array_equal(first.mu, again.mu) and np.array_equal(first.sigma, again.sigma)
    assert np.allclose(first.sigma, test_stats.sigma)


def test_fd_fmnist_orders_real_above_corrupted(classifier, test_stats, train_split):
    images = train_split[0][:5000]
    rng = np.random.default_rng(0)
    shuffled = images.reshape(5000, -1)[:, rng.permutation(28 * 28)].reshape(5000, 28, 28)  # same pixel histogram
    noise = torch.rand(5000, 1, 28, 28) * 2 - 1
    fd_train = fd_fmnist(images, classifier, test_stats)
    fd_shuffled = fd_fmnist(shuffled, classifier, test_stats)
    fd_noise = fd_fmnist(noise, classifier, test_stats)
    assert 0 <= fd_train < 0.05 * fd_shuffled
    assert fd_train < 0.05 * fd_noise


def test_image_conventions_give_the_same_features(classifier, test_split):
    raw = test_split[0][:32]
    nchw = to_tensor(raw)  # [-1, 1]
    gray01 = torch.from_numpy(raw).float().div(255).unsqueeze(-1)  # (N, 28, 28, 1) in [0, 1]
    rgb01 = gray01.expand(-1, -1, -1, 3)
    ref = extract_features(nchw, classifier)
    for images in (raw, gray01, rgb01, gray01.numpy()):
        assert np.allclose(extract_features(images, classifier), ref, atol=1e-4)
    assert torch.equal(to_classifier_input(nchw * 1.05), (nchw * 1.05).clamp(-1, 1))  # overshoot is clamped
    with pytest.raises(ValueError, match="uint8"):
        to_classifier_input(torch.from_numpy(raw).float().unsqueeze(-1))  # 0..255 floats
    with pytest.raises(ValueError, match="28x28"):
        to_classifier_input(torch.zeros(2, 1, 32, 32))


def test_class_consistency(classifier, test_split):
    images, labels = test_split
    acc = class_consistency(images, labels, classifier)
    assert acc == pytest.approx(float(classifier.metadata["test_accuracy"]), abs=2e-3)
    shuffled = np.random.default_rng(0).permutation(labels[:3000])
    assert class_consistency(images[:3000], shuffled, classifier) == pytest.approx(0.1, abs=0.03)
