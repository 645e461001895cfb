"""Compiled sampling (inductor on the CPU): the same tokens as eager, and back to eager on request."""
import pytest
import torch

from shortcut_core import generate
from shortcut_core.compiled import compile_sampling, uncompile_sampling
from shortcut_core.dimoo.config import SHORTCUT_PRESETS
from shortcut_core.dimoo.fake import write_fake_dimoo_folder
from shortcut_core.migm import load_migm
from shortcut_core.sampler import sample
from tests.tiny import tiny_migm, tiny_shortcut


def test_compiled_sampling_gives_the_eager_tokens_and_features():
    migm = tiny_migm(vqgan=False)
    sc = tiny_shortcut(migm)
    kwargs = dict(steps=8, full_steps=3, shortcut=sc, seed=4, decode=False, cfg=1.5)

    def run():
        feats = []
        res = generate(migm, [0, 2, "none"], callback=lambda info: feats.append(info.feats.clone()), **kwargs)
        return res, feats

    eager, eager_feats = run()
    assert compile_sampling(migm, sc) == "default"
    assert "features" in migm.model.__dict__ and "forward" in sc.__dict__
    compiled, compiled_feats = run()
    assert torch.equal(eager.tokens, compiled.tokens)
    for a, b in zip(eager_feats, compiled_feats):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    uncompile_sampling(migm, sc)
    assert "features" not in migm.model.__dict__ and "forward" not in sc.__dict__
    assert torch.equal(run()[0].tokens, eager.tokens)


def test_unknown_compile_mode_is_refused_by_name():
    migm = tiny_migm(vqgan=False)
    with pytest.raises(ValueError, match="compile mode must be one of default, reduce-overhead"):
        compile_sampling(migm, mode="fastest")
    assert "features" not in migm.model.__dict__


def test_compiled_dimoo_sampling_gives_the_eager_tokens(tmp_path):
    migm = load_migm(write_fake_dimoo_folder(tmp_path, seed=0))
    torch.manual_seed(3)
    sc = migm.build_shortcut(SHORTCUT_PRESETS["tiny"]).eval()
    kwargs = dict(steps=6, full_steps=3, shortcut=sc, seed=2, decode=False, width=64, height=48)
    eager = sample(migm, ["a red cat", "two dogs on a sofa"], **kwargs)
    compile_sampling(migm, sc)
    compiled = sample(migm, ["a red cat", "two dogs on a sofa"], **kwargs)
    assert torch.equal(eager.tokens, compiled.tokens)


def test_use_compiled_keeps_what_is_compiled_and_goes_back_on_request():
    from shortcut_core.compiled import compiled_mode, use_compiled

    migm = tiny_migm(vqgan=False)
    sc = tiny_shortcut(migm)
    assert compiled_mode(migm, sc) is None
    assert use_compiled(migm, sc) == "default" and compiled_mode(migm, sc) == "default"
    features, forward = migm.model.__dict__["features"], sc.__dict__["forward"]
    assert use_compiled(migm, sc) == "default"  # nothing recompiled
    assert migm.model.__dict__["features"] is features and sc.__dict__["forward"] is forward
    other = tiny_shortcut(migm)  # a shortcut not yet compiled: compiled, the base model's wrapper renewed
    assert use_compiled(migm, other) == "default" and compiled_mode(migm, other) == "default"
    assert use_compiled(migm, other, compiled=False) is None
    assert compiled_mode(migm) is None and "forward" not in other.__dict__
