"""Growing a trained MaskGIT in depth (how the shipped Fashion-MNIST model was made)."""
import dataclasses

import pytest
import torch

from shortcut_core import MaskGIT, save_migm
from tests.tiny import TINY_MASKGIT, tiny_migm
from training.fmnist.train_maskgit import grow_from, init_weights


@pytest.fixture(scope="module")
def shallow(tmp_path_factory):
    path = tmp_path_factory.mktemp("grow") / "shallow.safetensors"
    migm = tiny_migm()
    save_migm(migm, path)
    return migm, path


def test_grown_model_computes_what_it_grew_from(shallow):
    migm, path = shallow
    deep = MaskGIT(dataclasses.replace(TINY_MASKGIT, depth=3 * TINY_MASKGIT.depth))
    init_weights(deep)
    message = grow_from(deep, path)
    assert f"depth {TINY_MASKGIT.depth} -> {3 * TINY_MASKGIT.depth}" in message
    tokens = torch.randint(0, TINY_MASKGIT.codebook_size + 1, (4, TINY_MASKGIT.num_image_tokens))
    classes = torch.tensor([0, 1, 2, TINY_MASKGIT.null_class])
    with torch.no_grad():
        torch.testing.assert_close(deep(tokens, classes), migm.model(tokens, classes), rtol=0, atol=1e-6)
        # New blocks are the identity through zeroed output projections, with random inner weights
        # so that gradients reach them.
        assert deep.transformer.layers[1][0].fn.mha.out_proj.weight.abs().sum() == 0
        assert deep.transformer.layers[1][0].fn.mha.in_proj_weight.abs().sum() > 0


def test_growing_refuses_a_different_width(shallow):
    _, path = shallow
    wider = MaskGIT(dataclasses.replace(TINY_MASKGIT, hidden=2 * TINY_MASKGIT.hidden, depth=4))
    with pytest.raises(ValueError, match="only the depth may differ"):
        grow_from(wider, path)


# -- resumable training --------------------------------------------------------------

from pathlib import Path  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from shortcut_core.checkpoints import read_safetensors_metadata, rewrite_info  # noqa: E402
from tests.resume_check import assert_resumes_bit_exactly, resume_with_other_threads  # noqa: E402
from training.fmnist import train_maskgit  # noqa: E402


@pytest.fixture
def tiny_recipe(shallow, monkeypatch):
    """The trainer on the tiny model: random tokens instead of Fashion-MNIST, a tiny preset."""
    _, path = shallow
    monkeypatch.setitem(train_maskgit.MASKGIT_FMNIST_PRESETS, "tiny", TINY_MASKGIT)
    monkeypatch.setitem(train_maskgit.MASKGIT_FMNIST_PRESETS, "tiny-deep", dataclasses.replace(TINY_MASKGIT, depth=4))

    def tokenize(vqgan, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 64 if split == "train" else 16
        return (torch.randint(TINY_MASKGIT.codebook_size, (n, TINY_MASKGIT.num_image_tokens), generator=g),
                torch.randint(TINY_MASKGIT.num_classes, (n,), generator=g))

    monkeypatch.setattr(train_maskgit, "tokenize", tokenize)

    def run(out: Path, *extra, should_stop=None):
        argv = ["--preset", "tiny-deep", "--init-from", str(path), "--steps", "8", "--batch-size", "8",
                "--ckpt-every", "3", "--keep-ckpts", "0", "--val-every", "4", "--eval-per-class", "0",
                "--log-every", "1", "--out", str(out), *extra]
        return train_maskgit.train(train_maskgit.parse_args(argv), "cmd " + " ".join(argv), should_stop=should_stop)

    return run


def test_interrupted_base_training_resumes_bit_exactly(tiny_recipe, tmp_path):
    # stopped before step 8, after the checkpoint of step 6
    whole, part = assert_resumes_bit_exactly(tiny_recipe, tmp_path, 8, ("--lr", "0.002"), "lr")
    run_dir = tmp_path / "part.run"
    assert sorted(p.name for p in run_dir.glob("ckpt-*.json")) == ["ckpt-00000003.json", "ckpt-00000006.json"]
    info_a, info_b = (read_safetensors_metadata(p)["info"] for p in (whole, part))
    assert info_a["metrics"]["test_masked_ce_history"] == info_b["metrics"]["test_masked_ce_history"]
    assert [h["step"] for h in info_b["metrics"]["test_masked_ce_history"]] == [4]
    assert info_b["commands"]["maskgit"].startswith("cmd --preset tiny-deep") and "--resume" not in info_b["commands"]["maskgit"]
    assert "threads_by_step" not in info_b
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and "grown from" in log


def test_a_resumption_on_other_threads_is_recorded_under_its_stage(tiny_recipe, shallow, tmp_path):
    # the model grown from carries its tokenizer's record: both stages are kept, keyed like the commands
    _, path = shallow
    source = tmp_path / "source.safetensors"
    earlier = [{"step": 0, "threads": 1}, {"step": 250, "threads": 2}]
    rewrite_info(path, source, "migm", lambda info: {**info, "threads_by_step": {"tokenizer": earlier}})
    info, log = resume_with_other_threads(lambda out, *a, **kw: tiny_recipe(out, "--init-from", str(source), *a, **kw),
                                          tmp_path, 8)
    stage = next(k for k, v in info["commands"].items() if v.startswith("cmd --preset tiny-deep"))
    assert info["threads_by_step"] == {"tokenizer": earlier, stage: [{"step": 0, "threads": 1}, {"step": 6, "threads": 2}]}
    assert "not bit-exact" in log


def test_a_changed_architecture_is_named_not_taken_for_damage(tiny_recipe, tmp_path):
    part = tmp_path / "part.safetensors"
    tiny_recipe(part, should_stop=lambda step: step == 8)
    with pytest.raises(train_maskgit.TrainingError, match="settings differ.*preset"):
        tiny_recipe(part, "--resume", "--preset", "tiny")  # depth 2: the checkpoint's tensors would not fit


def test_resume_skips_a_damaged_newest_checkpoint(tiny_recipe, tmp_path):
    part = tmp_path / "part.safetensors"
    tiny_recipe(part, should_stop=lambda step: step == 8)
    newest = tmp_path / "part.run" / "ckpt-00000006.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # a write cut short
    tiny_recipe(part, "--resume")
    log = (tmp_path / "part.run" / "train.log").read_text()
    assert "is damaged" in log and "resumed from" in log and "ckpt-00000003.json at step 3" in log
    whole = tiny_recipe(tmp_path / "whole.safetensors")
    a, b = load_file(str(whole)), load_file(str(part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_further_at_the_same_depth_keeps_the_recipe(tiny_recipe, tmp_path):
    previous = tiny_recipe(tmp_path / "first.safetensors", "--steps", "2")
    for name in ("second", "third"):  # the same preset again: training further, not growing
        argv = ["--preset", "tiny-deep", "--init-from", str(previous), "--steps", "2", "--batch-size", "8",
                "--ckpt-every", "0", "--eval-per-class", "0", "--out", str(tmp_path / f"{name}.safetensors")]
        previous = train_maskgit.train(train_maskgit.parse_args(argv), f"cmd {name}")
    assert "training further from" in (tmp_path / "third.run" / "train.log").read_text()
    info = read_safetensors_metadata(previous)["info"]
    assert info["commands"]["maskgit"].startswith("cmd --preset tiny-deep")
    assert (info["commands"]["maskgit_grown"], info["commands"]["maskgit_3"]) == ("cmd second", "cmd third")
    assert info["init_from_info"]["steps"] == 2


def test_recipe_commands_in_the_order_they_ran():
    commands = {"maskgit_3": "c", "tokenizer": "t", "maskgit_grown": "b", "maskgit": "a", "maskgit_4": "d"}
    assert train_maskgit.recipe_commands(commands) == ["t", "a", "b", "c", "d"]
    assert train_maskgit.recipe_commands({"maskgit": "a"}) == ["a"]
