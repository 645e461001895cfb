"""The embedded tokenizer's trainer resumes an interrupted run bit-exactly."""
import dataclasses

import pytest
import torch

from shortcut_core.checkpoints import read_safetensors_metadata
from tests.resume_check import assert_resumes_bit_exactly, resume_with_other_threads
from tests.tiny import TINY_VQGAN
from training.fmnist import train_tokenizer


@pytest.fixture
def tiny_recipe(monkeypatch):
    """The trainer on a tiny VQGAN and random images instead of Fashion-MNIST."""
    # Many codes, few used per step: dead codes restart from the usage counts, which must resume too.
    monkeypatch.setitem(train_tokenizer.VQ_PRESETS, "tiny", dataclasses.replace(TINY_VQGAN, n_embed=256))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(48, TINY_VQGAN.in_channels, TINY_VQGAN.resolution, TINY_VQGAN.resolution, generator=g) * 2 - 1
    monkeypatch.setattr(train_tokenizer, "load_images", lambda: (images[:32], images[32:]))

    def run(out, *extra, should_stop=None):
        argv = ["--preset", "tiny", "--steps", "7", "--batch-size", "4", "--restart-every", "2", "--ckpt-every", "3",
                "--keep-ckpts", "0", "--log-every", "1", "--out", str(out), *extra]
        return train_tokenizer.train(train_tokenizer.parse_args(argv), "cmd " + " ".join(argv), should_stop=should_stop)

    return run


def test_interrupted_tokenizer_training_resumes_bit_exactly(tiny_recipe, tmp_path):
    # stopped before step 5, after the checkpoint of step 3; the codebook's dead codes restart
    # from the generator and the usage counts, which must resume too
    whole, part = assert_resumes_bit_exactly(tiny_recipe, tmp_path, 5, ("--restart-every", "3"), "restart_every")
    # step 3 from the stopped run, step 6 from the resumed one
    assert [p.name for p in sorted((tmp_path / "part.run").glob("ckpt-*.json"))] == ["ckpt-00000003.json", "ckpt-00000006.json"]
    info = read_safetensors_metadata(part)["info"]
    assert info["test_metrics"] == read_safetensors_metadata(whole)["info"]["test_metrics"]
    assert "--resume" not in info["command"] and "threads_by_step" not in info
    assert "resumed from" in (tmp_path / "part.run" / "train.log").read_text()


def test_a_resumption_on_other_threads_is_recorded_as_not_bit_exact(tiny_recipe, tmp_path):
    info, log = resume_with_other_threads(tiny_recipe, tmp_path, 5)
    assert info["threads_by_step"] == [{"step": 0, "threads": 1}, {"step": 3, "threads": 2}]
    assert "--threads 1" in info["command"] and "--resume" not in info["command"]
    assert "used 1 CPU threads, this one 2" in log and "from step 3 on the result is not bit-exact" in log


@pytest.mark.parametrize("preset", sorted(train_tokenizer.VQ_PRESETS))
def test_every_preset_makes_the_tokens_the_base_model_expects(preset):
    # A tokenizer preset may change the network, never the tokens: 7x7 codes from 256 entries, so
    # the base model's recipe (fmnist-h96-*) fits any of them.
    from shortcut_core.vqgan import VQGAN

    model = VQGAN(train_tokenizer.VQ_PRESETS[preset]).eval()
    with torch.no_grad():
        _, _, ids = model(torch.zeros(2, 1, 28, 28))
    assert ids.shape[-2:] == (7, 7) and model.config.n_embed == 256
