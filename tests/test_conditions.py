"""Class conditions (one parser for API, CLI and nodes), unconditional sampling, and the
sampling defaults a model file carries."""
from __future__ import annotations

import pytest
import torch

from shortcut_core import generate
from shortcut_core.conditions import parse_class_spec, resolve_class_list
from tests.tiny import tiny_migm, tiny_shortcut

NAMES = ["a", "b", "c"]


def test_class_spec_forms():
    assert parse_class_spec("all", 3) == [0, 1, 2]
    assert parse_class_spec("none", 3) == ["none"]
    assert parse_class_spec(" 0-1, none ,b", 3) == [0, 1, "none", "b"]
    for bad, match in (("0-5", "past the last class 2"), ("3", "outside 0..2"), ("2-1", "runs backwards"),
                       (" , ", "no class given")):
        with pytest.raises(ValueError, match=match):
            parse_class_spec(bad, 3)
    with pytest.raises(TypeError, match="expected a string"):
        parse_class_spec(3, 3)


def test_resolve_class_list_maps_none_names_and_repeats():
    assert resolve_class_list("none", 3, 3, NAMES, batch=2) == [3, 3]
    assert resolve_class_list(["none", "B", 2, "1"], 3, 3, NAMES) == [3, 1, 2, 1]
    assert resolve_class_list([3], 3, 3, NAMES) == [3]  # the null class's own index, as recordings store it
    for bad, err in ((True, TypeError), ([1.5], TypeError), (["zebra"], ValueError), ([7], ValueError)):
        with pytest.raises(err):
            resolve_class_list(bad, 3, 3, NAMES)
    with pytest.raises(ValueError, match="batch"):
        resolve_class_list("a", 3, 3, NAMES, batch=0)


def test_generate_takes_class_specs():
    migm = tiny_migm(vqgan=False)
    spec = generate(migm, classes="0-2", steps=3, seed=4, decode=False)
    listed = generate(migm, classes=[0, 1, 2], steps=3, seed=4, decode=False)
    assert torch.equal(spec.tokens, listed.tokens)
    assert generate(migm, classes="all", steps=2, decode=False).tokens.shape[0] == 3


def test_unconditional_runs_one_pass_per_step_and_ignores_cfg():
    migm = tiny_migm(vqgan=False)
    runs = [generate(migm, classes="none", batch=3, steps=4, seed=1, cfg=w, decode=False) for w in (0.0, 2.8, 9.0)]
    assert all(r.stats.base_passes + r.stats.memo_passes == 4 == r.stats.plain_base_passes for r in runs)
    assert all(torch.equal(runs[0].tokens, r.tokens) for r in runs[1:])
    guided = generate(migm, classes=1, batch=3, steps=4, seed=1, cfg=2.8, decode=False)
    assert not torch.equal(guided.tokens, runs[0].tokens)


def test_mixed_list_guides_only_the_conditional_rows():
    migm = tiny_migm(vqgan=False)
    sc = tiny_shortcut(migm)
    # The same random draws in every run (same shapes): only guidance differs between them.
    a = generate(migm, classes=["none", 1], steps=5, seed=0, cfg=0.3, decode=False, full_steps=3, shortcut=sc)
    b = generate(migm, classes=["none", 1], steps=5, seed=0, cfg=1.5, decode=False, full_steps=3, shortcut=sc)
    assert torch.equal(a.tokens[0], b.tokens[0])  # the unconditional row does not see cfg
    assert not torch.equal(a.tokens[1], b.tokens[1])
    assert a.stats.base_passes + a.stats.memo_passes == 3  # one batched pass (cond + uncond halves) per full step


def test_defaults_come_from_the_model_file():
    migm = tiny_migm(vqgan=False)
    assert migm.sampling_defaults == {"cfg": 2.8, "sm_temp": 1.0, "r_temp": 7.0, "schedule": "arccos",
                                      "randomize": "linear"}  # published MaskGIT-512, without recommendations
    published = generate(migm, classes=[0, 1], steps=4, seed=3, decode=False)
    migm.info["sampling_defaults"] = {"cfg": 0.5, "r_temp": 1.0, "schedule": "linear"}
    own = generate(migm, classes=[0, 1], steps=4, seed=3, decode=False)
    explicit = generate(migm, classes=[0, 1], steps=4, seed=3, decode=False, cfg=0.5, r_temp=1.0,
                        schedule="linear", sm_temp=1.0)
    assert torch.equal(own.tokens, explicit.tokens) and not torch.equal(own.tokens, published.tokens)
    state = migm.start([0], steps=4, generator=torch.Generator())
    assert (state.cfg, state.r_temp, state.sm_temp) == (0.5, 1.0, 1.0)


def test_bad_options_are_named():
    migm = tiny_migm(vqgan=False)
    with pytest.raises(TypeError, match=r"'cfgg'.*valid: cfg, sm_temp, r_temp"):
        generate(migm, classes=0, steps=2, cfgg=1.0)
    for name, value in (("cfg", float("nan")), ("sm_temp", float("inf")), ("r_temp", True)):
        with pytest.raises(ValueError, match=name):
            generate(migm, classes=0, steps=2, **{name: value})
