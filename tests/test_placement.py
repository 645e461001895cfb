"""Calibrated full-step placement: the dynamic programme, the carry-over to other step
counts, and the sampler's use of placements stored in a shortcut file."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from shortcut_core import FeatureCache, generate, load_migm, load_shortcut, save_migm, save_shortcut
from shortcut_core.placement import (calibrated_indices, masked_before, optimal_placement, placement_cost,
                                     regime_of, remap_errors, resolve_placement, sampled_with)
from shortcut_core.schedules import full_step_indices, reveal_counts
from tests.tiny import tiny_migm, tiny_shortcut


def brute_force(errors: np.ndarray, budget: int) -> float:
    n = errors.shape[0]
    return min(placement_cost(errors, [0, *rest]) for rest in itertools.combinations(range(1, n), budget - 1))


@pytest.mark.parametrize("seed", range(6))
def test_dp_finds_the_exhaustive_optimum(seed):
    rng = np.random.default_rng(seed)
    n = 9
    errors = np.cumsum(rng.random((n, n)) * rng.random((n, 1)) * 3, axis=1)  # drift grows with chain length
    for budget in range(1, n + 1):
        best = optimal_placement(errors, budget)
        assert best[0] == 0 and len(best) == budget and best == sorted(set(best))
        assert placement_cost(errors, best) == pytest.approx(brute_force(errors, budget))


def test_dp_spends_full_steps_where_the_drift_is():
    n = 10
    s, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    errors = k * np.where(s + k >= 5, 10.0, 1.0)  # drift grows with the chain, and fast in the second half
    best = optimal_placement(errors, 4)
    assert sum(i >= 5 for i in best) >= 2 and placement_cost(errors, best) < placement_cost(errors, full_step_indices(n, 4))
    assert optimal_placement(errors, n) == list(range(n)) and optimal_placement(errors, 1) == [0]
    with pytest.raises(ValueError, match="between 1 and"):
        optimal_placement(errors, 0)


def test_remap_is_the_identity_at_the_recorded_step_count_and_monotone_elsewhere():
    counts = reveal_counts(49, 16, "arccos")
    rng = np.random.default_rng(0)
    n = 16
    errors = np.cumsum(rng.random((n, n)), axis=1)
    ratios = masked_before(counts)
    same = remap_errors(errors, ratios, ratios)
    for s in range(n):
        np.testing.assert_allclose(same[s, 1:n - s], errors[s, 1:n - s])
    longer = remap_errors(errors, ratios, masked_before(reveal_counts(49, 24, "arccos")))
    assert longer.shape == (24, 24)
    # Chains that cover more of the run drift more, as in the measured table.
    assert all(longer[s, k] <= longer[s, k + 1] + 1e-12 for s in range(23) for k in range(1, 23 - s - 1))


def saved_pair(tmp_path, shortcut=None, info=None):
    """A tiny base model and a shortcut for it, both through their files: (base path, MIGM, shortcut path)."""
    base = tmp_path / "base.safetensors"
    save_migm(tiny_migm(vqgan=False), base)
    migm = load_migm(base)
    sc_path = tmp_path / "sc.safetensors"
    save_shortcut(shortcut(migm) if shortcut else tiny_shortcut(migm), sc_path, base_fingerprint=migm.fingerprint,
                  info=info)
    return base, migm, sc_path


def test_calibrated_placements_round_trip_and_fall_back(tmp_path):
    _, migm, sc_path = saved_pair(tmp_path, info={"placements": {"table": {"8": {"3": [0, 5, 6]}}, "metric": "tokens"}})
    shortcut = load_shortcut(sc_path, migm)
    assert calibrated_indices(shortcut, 8, 3) == [0, 5, 6] and calibrated_indices(shortcut, 8, 4) is None
    run = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, placement="calibrated",
                   decode=False)
    assert run.stats.full_step_indices == [0, 5, 6] and "calibrated placement 0,5,6" in run.stats.report()
    fallback = generate(migm, classes=[0, 1], steps=8, full_steps=4, shortcut=shortcut, placement="calibrated",
                        decode=False)
    assert fallback.stats.full_step_indices == full_step_indices(8, 4)
    assert "no calibrated placement for N=8, B=4" in fallback.stats.report()
    paper = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, placement="paper", decode=False)
    assert paper.stats.full_step_indices == full_step_indices(8, 3) and "placement" not in paper.stats.report()
    with pytest.raises(ValueError, match="count B"):
        resolve_placement(8, [0, 2], "calibrated", shortcut)
    with pytest.raises(ValueError, match="placement must be one of"):
        generate(migm, classes=0, steps=4, full_steps=2, shortcut=shortcut, placement="smart")


def test_auto_placement_is_the_files_where_it_has_one_and_the_papers_elsewhere(tmp_path):
    """The default: a calibrated file's placement for (N, B); the paper's, with a note, for an
    (N, B) it lacks; the paper's, silently, for a file never calibrated (the published ones)."""
    _, migm, sc_path = saved_pair(tmp_path, info={"placements": {"table": {"8": {"3": [0, 5, 6]}}}})
    shortcut = load_shortcut(sc_path, migm)
    run = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, decode=False)
    assert run.stats.full_step_indices == [0, 5, 6] and "calibrated placement 0,5,6" in run.stats.report()
    same = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, placement="calibrated", decode=False)
    assert torch.equal(run.tokens, same.tokens)
    uncovered = generate(migm, classes=[0, 1], steps=8, full_steps=4, shortcut=shortcut, decode=False)
    assert uncovered.stats.full_step_indices == full_step_indices(8, 4)
    assert "no calibrated placement for N=8, B=4" in uncovered.stats.report()
    every = generate(migm, classes=[0, 1], steps=8, full_steps=8, shortcut=shortcut, decode=False)
    assert every.stats.full_step_indices == list(range(8)) and "placement" not in every.stats.report()
    explicit = generate(migm, classes=[0, 1], steps=8, full_steps=[0, 1, 7], shortcut=shortcut, decode=False)
    assert explicit.stats.full_step_indices == [0, 1, 7] and "placement" not in explicit.stats.report()
    cache = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=FeatureCache(), decode=False)
    assert cache.stats.full_step_indices == full_step_indices(8, 3)
    with pytest.raises(ValueError, match="feature cache has none"):
        generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=FeatureCache(), placement="calibrated")

    plain_file = tmp_path / "never_calibrated"
    plain_file.mkdir()
    _, migm2, sc2 = saved_pair(plain_file)
    published = generate(migm2, classes=[0, 1], steps=8, full_steps=3, shortcut=load_shortcut(sc2, migm2), decode=False)
    assert published.stats.full_step_indices == full_step_indices(8, 3)
    assert "placement" not in published.stats.report()


def test_a_placement_made_at_other_sampling_settings_is_not_taken_by_default(tmp_path):
    """Measured on the Fashion-MNIST v3 pair: a placement chosen at r_temp 9 was 10-14 FD worse
    than the paper's at r_temp 4.5. "auto" takes it only at the settings it was made at."""
    made_at = {"sm_temp": 1.0, "r_temp": 9.0, "schedule": "arccos", "randomize": "linear"}
    _, migm, sc_path = saved_pair(tmp_path, info={"placements": {"table": {"8": {"3": [0, 5, 6]}},
                                                                 "sampled_with": made_at}})
    shortcut = load_shortcut(sc_path, migm)
    same = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, r_temp=9.0, sm_temp=1.0,
                    schedule="arccos", randomize="linear", decode=False)
    assert same.stats.full_step_indices == [0, 5, 6] and "made at" not in same.stats.report()
    other = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, r_temp=4.5, decode=False)
    assert other.stats.full_step_indices == full_step_indices(8, 3)
    assert "was made at r_temp 9.0 (this run: 4.5)" in other.stats.report()
    forced = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, r_temp=4.5,
                      placement="calibrated", decode=False)
    assert forced.stats.full_step_indices == [0, 5, 6]
    assert "made at r_temp 9.0 (this run: 4.5)" in forced.stats.report()
    # A run without options samples at the base file's recommended settings (the tiny model's r_temp is 7).
    assert migm.sampling_defaults["r_temp"] == 7.0
    default = generate(migm, classes=[0, 1], steps=8, full_steps=3, shortcut=shortcut, decode=False)
    assert default.stats.full_step_indices == full_step_indices(8, 3)
    assert "was made at r_temp 9.0 (this run: 7.0)" in default.stats.report()


def committed_drift(migm, run: list, plain: list) -> float:
    """What calibration minimises, measured on sampled runs against the plain run of the same seed:
    per step, the feature MSE at the positions still masked, weighted by the share of the image
    that step commits."""
    L = migm.config.num_image_tokens
    revealed = plain[-1][1][:, :L]  # the plain run's step of reveal for each image position
    total = 0.0
    for step, ((feats, _), (plain_feats, _)) in enumerate(zip(run, plain)):
        masked = (revealed >= step).float().repeat(feats.shape[0] // revealed.shape[0], 1)
        mse = ((feats - plain_feats) ** 2).mean(-1)[:, :L]
        total += float((revealed == step).float().mean()) * float((mse * masked).sum() / masked.sum().clamp(min=1))
    return total


def test_calibrated_run_drifts_less_from_the_plain_run_than_the_paper_placement(tmp_path):
    """A shortcut that copies the previous feature (its output layer zeroed: the residual is all
    that is left) drifts most where the base features move most; calibration on recorded
    trajectories must find those steps, and sampling with its placement must follow the plain
    run more closely than the paper's even placement, on seeds the recording never saw."""
    from training.calibrate import main as calibrate_main
    from training.record import main as record_main

    def copy_previous(migm):
        shortcut = tiny_shortcut(migm)
        torch.nn.init.zeros_(shortcut.proj_out.weight)
        torch.nn.init.zeros_(shortcut.proj_out.bias)
        return shortcut

    base, migm, copy_path = saved_pair(tmp_path, copy_previous)
    assert record_main(["--migm", str(base), "--out", str(tmp_path / "rec"), "--count", "64", "--steps", "8",
                        "--batch", "32", "--no-progress"]) == 0
    assert calibrate_main(["--data", str(tmp_path / "rec"), "--migm", str(base), "--shortcut", str(copy_path),
                           "--steps", "8", "--budgets", "3", "--metric", "mse", "--val-fraction", "0.5",
                           "--val-max", "64"]) == 0
    shortcut = load_shortcut(copy_path, migm)
    assert calibrated_indices(shortcut, 8, 3) != full_step_indices(8, 3)  # calibration moved the full steps
    assert shortcut.info["placements"]["sampled_with"] == sampled_with(migm.sampling_defaults)  # as recorded

    def steps_of(**kw):
        seen = []
        generate(migm, classes=list(range(migm.config.num_classes)) * 20, steps=8, seed=123, decode=False,
                 callback=lambda info: seen.append((info.feats.clone(), info.state.revealed_at.clone())), **kw)
        return seen

    plain = steps_of()
    paper = committed_drift(migm, steps_of(shortcut=shortcut, full_steps=3, placement="paper"), plain)
    calibrated = committed_drift(migm, steps_of(shortcut=shortcut, full_steps=3, placement="calibrated"), plain)
    assert calibrated < 0.95 * paper, (calibrated, paper)


def test_adaptive_rule_spends_at_most_the_budget_where_the_drift_account_fills():
    from training.fmnist.adaptive import adaptive_run

    migm = tiny_migm()
    shortcut = tiny_shortcut(migm)
    run = lambda **kw: adaptive_run(migm, shortcut, [0, 1], steps=8, seed=3, **kw)[1]  # noqa: E731
    assert run(budget=3, tau=0.0) == [0, 1, 2]  # an empty account never waits: the first B steps
    assert run(budget=3, tau=1e9) == [0]  # an account that never fills: step 0 only
    uncapped = run(budget=None, tau=0.5)
    capped = run(budget=2, tau=0.5)
    assert capped == uncapped[:2] and len(uncapped) > 2  # the cap keeps the rule's own first choices
    images, full = adaptive_run(migm, shortcut, [0, 1], steps=8, seed=3, budget=8, tau=0.0)
    plain = generate(migm, classes=[0, 1], steps=8, seed=3)
    assert full == list(range(8)) and torch.equal(images, plain.images)  # every step full: exactly plain


@pytest.mark.parametrize("classes", [[0, 1, 2], ["none"] * 3], ids=["guided", "unconditional"])
def test_per_image_rule_runs_the_base_model_only_for_the_images_whose_account_is_full(classes):
    from training.fmnist.adaptive import adaptive_run, per_image_run

    migm = tiny_migm()
    shortcut = tiny_shortcut(migm)
    run = lambda cls, **kw: per_image_run(migm, shortcut, cls, steps=8, seed=3, **kw)  # noqa: E731
    images, full = run(classes, budget=3, tau=0.0)
    assert full == [[0, 1, 2]] * 3
    assert torch.equal(images, generate(migm, classes=classes, steps=8, seed=3, shortcut=shortcut,
                                        full_steps=[0, 1, 2]).images)
    for tau in (0.6, 1.0):  # one image alone: the batch rule, decision for decision
        alone, alone_full = run(classes[:1], budget=None, tau=tau)
        batch_images, batch_full = adaptive_run(migm, shortcut, classes[:1], steps=8, seed=3, budget=None, tau=tau)
        assert alone_full == [batch_full] and torch.equal(alone, batch_images)

    # Images that disagree: the sub-batch passes must land on their own rows (both halves when
    # guided). Reference: the base model on every row at every step, each image taking it at its steps.
    images, full = run(classes, budget=None, tau=1.4)
    assert len({tuple(f) for f in full}) > 1  # the images do disagree
    assert run(classes, budget=2, tau=1.4)[1] == [f[:2] for f in full]  # each capped at its own first choices
    generator = torch.Generator().manual_seed(3)
    state = migm.start(classes, steps=8, generator=generator)
    feats = None
    with torch.inference_mode():
        for step in range(8):
            base = migm.batched_features(state)
            take = torch.tensor([step in f for f in full]).repeat(base.shape[0] // 3)[:, None, None]
            feats = base if step == 0 else torch.where(take, base, migm.shortcut_features(shortcut, feats, state))
            migm.advance(state, feats, step, generator)
        reference = migm.decode(state)
    assert torch.allclose(images, reference, atol=1e-5)


def test_tracking_probe_runs_from_plain_sampling_to_the_shortcut_as_t_goes_from_0_to_1():
    from training.fmnist.tracking_probe import blended_run

    migm = tiny_migm()
    shortcut = tiny_shortcut(migm)
    full = [0, 3, 6]

    def run(t, filler="shortcut", classes=(0, 1)):
        return blended_run(migm, shortcut, list(classes), steps=8, full_steps=full, t=t, seed=3, filler=filler)

    def sampled(classes=(0, 1), **kw):
        return generate(migm, classes=list(classes), steps=8, seed=3, **kw).images

    images, error, copy = run(0.0)
    assert torch.equal(images, sampled()) and error == 0.0 and copy > 0  # the true feature: plain sampling
    images, error, copy = run(1.0)
    assert torch.equal(images, sampled(shortcut=shortcut, full_steps=full)) and error > 0
    images, cache_error, cache_copy = run(1.0, "cache")
    assert torch.equal(images, sampled(shortcut=FeatureCache(), full_steps=full))
    assert cache_error > 0 and cache_copy > 0
    # Where every skipped step follows a full step, the cache's feature is copy-previous itself.
    alternate = blended_run(migm, shortcut, [0, 1], steps=8, full_steps=[0, 2, 4, 6], t=1.0, seed=3, filler="cache")
    assert alternate[1] == pytest.approx(alternate[2], rel=1e-6) and alternate[1] > 0
    unguided = ("none", "none")  # one base row per image instead of two
    assert torch.equal(run(0.0, classes=unguided)[0], sampled(unguided))
    assert torch.equal(run(1.0, classes=unguided)[0], sampled(unguided, shortcut=shortcut, full_steps=full))
    with pytest.raises(ValueError, match="unknown filler"):
        run(1.0, "oracle")
    # Blending on some skipped steps only: the others take the shortcut as it is.
    skipped = set(range(8)) - set(full)
    nowhere = blended_run(migm, shortcut, [0, 1], steps=8, full_steps=full, t=0.0, seed=3, blend_steps=set())
    assert torch.equal(nowhere[0], sampled(shortcut=shortcut, full_steps=full)) and nowhere[1] == error
    everywhere = blended_run(migm, shortcut, [0, 1], steps=8, full_steps=full, t=0.0, seed=3, blend_steps=skipped)
    assert torch.equal(everywhere[0], sampled()) and everywhere[1] == 0.0


def test_tracking_probe_cli_reports_fd_and_error_per_blend(tmp_path):
    import json

    from training.fmnist.tracking_probe import main

    out = tmp_path / "probe"
    rows = main(["--t", "0,1", "--cache-t", "1", "--images", "20", "--batch", "10", "--threads", "1",
                 "--out", str(out)])
    assert [(r["filler"], r["t"]) for r in rows] == [("shortcut", 0.0), ("shortcut", 1.0), ("cache", 1.0)]
    assert rows[0]["error_ratio"] == 0.0 and rows[1]["error_ratio"] > 0 and rows[2]["error_ratio"] > 0
    assert json.loads(out.with_suffix(".json").read_text()) == rows
    assert "| uncond | cache | 1 | every skipped step |" in out.with_suffix(".md").read_text()
    late = main(["--t", "0", "--cache-t", "", "--blend-steps", "9,10,11,12,13,14,15", "--images", "20", "--batch",
                 "10", "--threads", "1", "--out", str(out)])[0]
    assert late["blend_steps"] == list(range(9, 16)) and 0 < late["error_ratio"] < rows[1]["error_ratio"]
    with pytest.raises(SystemExit):
        main(["--blend-steps", "8", "--out", str(out)])  # a full step of 0,2,4,8


def test_rule_placements_are_stored_by_majority_and_replace_another_methods_table(tmp_path):
    from types import SimpleNamespace

    from training.fmnist.adaptive import RULE, write_placements

    base, migm, source = saved_pair(
        tmp_path, info={"placements": {"table": {"8": {"3": [0, 5, 6]}}, "method": "dynamic programme"}})
    out = tmp_path / "sc_rule.safetensors"

    def rows(*placements):
        return [{"regime": "cond", "tau": 0.3, "fd_adaptive": 1.0, "fd_paper": 2.0, "images": 10,
                 "placements": [list(p) for p in placements]}]

    args = SimpleNamespace(steps=8, budget=3, write_placements=str(out), shortcut=str(source), migm=str(base),
                           for_regime=None)
    made_at = sampled_with(migm.sampling_defaults)
    write_placements(args, rows((0, 2, 4), (0, 2, 4), (0, 2, 5)), made_at, ["--steps", "8"])
    write_placements(SimpleNamespace(**{**vars(args), "budget": 2}), rows((0, 3)), made_at, ["--steps", "8"])
    placements = load_shortcut(out, migm).info["placements"]
    assert placements["method"] == RULE
    assert placements["table"] == {"8": {"3": [0, 2, 4], "2": [0, 3]}}  # the DP's table is gone, the rule's kept
    assert placements["runs"]["8/3"]["chosen_in"] == "2 of 3 chunks"
    assert placements["sampled_with"] == made_at
    assert placements["runs"]["8/3"]["command"] == "python -m training.fmnist.adaptive --steps 8"
    assert placements["runs"]["8/2"]["command"] == placements["command"]  # the latest write
    assert calibrated_indices(load_shortcut(out, migm), 8, 3) == [0, 2, 4]
    assert torch.equal(next(load_shortcut(out, migm).parameters()), next(load_shortcut(source, migm).parameters()))


def test_a_regimes_own_placement_overrides_the_shared_one_for_that_regime_only(tmp_path):
    """A file may hold a placement for class-conditional sampling that unconditional sampling
    does without (and the other way round): each run takes its regime's, a batch that mixes
    the two takes the shared table's, and the report says which and why."""
    assert regime_of([True, True]) == "uncond" and regime_of([False]) == "cond" and regime_of([True, False]) is None
    table = {"8": {"3": [0, 5, 6], "4": [0, 1, 2, 3]}}
    _, migm, sc_path = saved_pair(tmp_path, info={"placements": {"table": table, "by_regime": {
        "cond": {"8": {"2": [0, 2], "4": [0, 2, 4, 6]}}, "uncond": {"8": {"4": [0, 1, 3, 5]}}}}})
    shortcut = load_shortcut(sc_path, migm)
    assert calibrated_indices(shortcut, 8, 2, "cond") == [0, 2] and calibrated_indices(shortcut, 8, 2) is None
    assert calibrated_indices(shortcut, 8, 2, "uncond") is None
    assert calibrated_indices(shortcut, 8, 3, "uncond") == [0, 5, 6]  # the shared entry where the regime has none

    def run(classes, budget, **kw):
        return generate(migm, classes=classes, steps=8, full_steps=budget, shortcut=shortcut, decode=False, **kw).stats

    cond, uncond, mixed = run([0, 1], 4), run(["none", "none"], 4), run([0, "none"], 4)
    assert cond.full_step_indices == [0, 2, 4, 6] and "0,2,4,6 (conditional sampling)" in cond.report()
    assert uncond.full_step_indices == [0, 1, 3, 5] and "(unconditional sampling)" in uncond.report()
    assert mixed.full_step_indices == [0, 1, 2, 3] and mixed.report().endswith("; calibrated placement 0,1,2,3")
    shared = run(["none"], 3)
    assert shared.full_step_indices == [0, 5, 6] and "sampling)" not in shared.report()

    only_cond = run([2, 1], 2, placement="calibrated")
    assert only_cond.full_step_indices == [0, 2]
    for classes, why in ((["none"], "this is unconditional sampling"), ([2, "none"], "this batch mixes")):
        fallback = run(classes, 2)
        assert fallback.full_step_indices == full_step_indices(8, 2)
        assert "is for conditional sampling only" in fallback.report() and why in fallback.report()


def test_rule_placements_can_be_stored_for_one_regime(tmp_path):
    from types import SimpleNamespace

    from training.fmnist.adaptive import RULE, main as adaptive_main, write_placements

    base, migm, source = saved_pair(tmp_path)
    out = tmp_path / "sc_rule.safetensors"
    rows = [{"regime": regime, "steps": 8, "budget": 3, "tau": 0.3, "fd_adaptive": 1.0, "fd_paper": 2.0,
             "images": 10, "placements": [placement]} for regime, placement in (("cond", [0, 2, 5]),
                                                                                 ("uncond", [0, 4, 6]))]
    args = SimpleNamespace(steps=8, budget=3, write_placements=str(out), shortcut=str(source), migm=str(base),
                           for_regime=None)
    made_at = sampled_with(migm.sampling_defaults)
    write_placements(args, rows[1:], made_at, ["--steps", "8"])  # shared: what the unconditional run chose
    write_placements(SimpleNamespace(**{**vars(args), "for_regime": "cond"}), rows, made_at, ["--for-regime", "cond"])
    placements = load_shortcut(out, migm).info["placements"]
    assert placements["table"] == {"8": {"3": [0, 4, 6]}}
    assert placements["by_regime"] == {"cond": {"8": {"3": [0, 2, 5]}}}  # from the cond rows' votes only
    assert set(placements["runs"]) == {"8/3"} and placements["by_regime_source"]["cond"]["method"] == RULE
    assert set(placements["by_regime_source"]["cond"]["runs"]["8/3"]) == {"chosen_in", "command", "cond"}
    write_placements(SimpleNamespace(**{**vars(args), "budget": 2}), [{**rows[1], "budget": 2}], made_at,
                     ["--steps", "8"])
    placements = load_shortcut(out, migm).info["placements"]  # a later shared write keeps the regime's own
    assert placements["table"] == {"8": {"3": [0, 4, 6], "2": [0, 4, 6]}}
    assert placements["by_regime"] == {"cond": {"8": {"3": [0, 2, 5]}}}
    shortcut = load_shortcut(out, migm)
    assert calibrated_indices(shortcut, 8, 3, "cond") == [0, 2, 5]
    assert calibrated_indices(shortcut, 8, 3, "uncond") == calibrated_indices(shortcut, 8, 3) == [0, 4, 6]

    saved = tmp_path / "rows.json"
    saved.write_text(__import__("json").dumps(rows[1:]))
    with pytest.raises(SystemExit):  # no cond rows in that file: refused by name, nothing written
        adaptive_main(["--steps", "8", "--budget", "3", "--rows", str(saved), "--for-regime", "cond",
                       "--write-placements", str(out)])
    with pytest.raises(SystemExit):
        adaptive_main(["--steps", "8", "--budget", "3", "--for-regime", "cond"])  # where to write it?
    assert load_shortcut(out, migm).info["placements"] == placements

    fresh = tmp_path / "sc_from_rows.safetensors"  # saved rows: the settings come from the base file
    adaptive_main(["--steps", "8", "--budget", "3", "--rows", str(saved), "--migm", str(base),
                   "--shortcut", str(source), "--write-placements", str(fresh)])
    stored = load_shortcut(fresh, migm).info["placements"]
    assert stored["table"] == {"8": {"3": [0, 4, 6]}}
    assert stored["sampled_with"] == sampled_with(migm.sampling_defaults)


def test_per_image_rows_are_tabulated_with_verdicts_and_never_stored_as_a_placement(tmp_path):
    import json

    from training.fmnist.adaptive import main as adaptive_main

    base, migm, source = saved_pair(tmp_path)
    row = {"regime": "uncond", "steps": 16, "budget": 4, "images": 5000, "seed": 0, "tau": 0.41, "rule": "per image",
           "mean_full": 3.94, "fd_adaptive": 135.4, "fd_adaptive_blocks": [135.3, 136.7],
           "fd_paper": 141.8, "fd_paper_blocks": [142.1, 143.0], "fd_file": 137.1, "fd_file_blocks": [134.4, 141.6]}
    saved = [tmp_path / "a.json", tmp_path / "b.json"]
    saved[0].write_text(json.dumps([row]))
    saved[1].write_text(json.dumps([{**row, "regime": "cond", "fd_adaptive": 46.6, "fd_adaptive_blocks": [48.3, 46.2],
                                     "fd_paper": 46.0, "fd_paper_blocks": [46.1, 46.3], "fd_file": 49.0,
                                     "fd_file_blocks": [48.9, 49.1]}]))
    table = tmp_path / "table.md"
    adaptive_main(["--rows", *map(str, saved), "--markdown", str(table), "--shortcut", str(source),
                   "--migm", str(base)])
    lines = table.read_text().splitlines()
    assert "decided per image" in lines[0]
    # noise = the larger block gap of the pair: 1.4 against the paper's (better), 7.2 against the file's (within)
    assert "| uncond | 16/4 | 5000, 0.. | 0.41 | 3.94 | 135.4 (135.3 / 136.7) |" in lines[5]
    assert "| 1.4: better |" in lines[5]
    assert lines[5].endswith("| 137.1 (134.4 / 141.6) | 7.2: within the block noise |")
    assert lines[4].startswith("| cond |") and "| 2.1: within the block noise |" in lines[4]
    assert lines[4].endswith("| 49.0 (48.9 / 49.1) | 2.1: better |")
    batch_rows = tmp_path / "batch.json"  # the batch rule: one placement per chunk, their mean spend
    batch_rows.write_text(json.dumps([{key: row[key] for key in row if not key.startswith(("fd_file", "mean"))}
                                      | {"rule": "batch", "placements": [[0, 2, 4, 8], [0, 2, 5]]}]))
    adaptive_main(["--rows", str(batch_rows), "--markdown", str(table), "--shortcut", str(source), "--migm", str(base)])
    lines = table.read_text().splitlines()
    assert "decided per batch" in lines[0] and lines[3].count("|") == 9
    assert lines[4].startswith("| uncond | 16/4 | 5000, 0.. | 0.41 | 3.50 |") and lines[4].endswith("| 1.4: better |")
    out = tmp_path / "sc_per_image.safetensors"
    for refused in (["--rows", str(saved[0]), "--write-placements", str(out)],
                    ["--per-image", "--write-placements", str(out)],
                    ["--rows", str(saved[0])]):  # saved rows and nothing to do with them
        with pytest.raises(SystemExit):
            adaptive_main(["--steps", "16", "--budget", "4", "--shortcut", str(source), "--migm", str(base), *refused])
    assert not out.exists()


def test_an_on_policy_recording_follows_its_regimes_placement(tmp_path):
    from training.record import policy_settings

    _, migm, sc_path = saved_pair(tmp_path, info={"placements": {"by_regime": {"cond": {"8": {"3": [0, 2, 5]}}}}})
    policy = load_shortcut(sc_path, migm)
    assert policy_settings(migm, policy, 8, 3, "auto", "cond")["full_step_indices"] == [0, 2, 5]
    unconditional = policy_settings(migm, policy, 8, 3, "auto", "uncond")
    assert unconditional["full_step_indices"] == full_step_indices(8, 3) and unconditional["placement"] == "paper"
    with pytest.raises(ValueError, match="no calibrated placement"):
        policy_settings(migm, policy, 8, 3, "calibrated", "uncond")


def test_placement_search_moves_one_full_step_at_a_time_down_to_a_synthetic_optimum():
    from training.fmnist.placement_search import neighbours, search

    assert neighbours([0, 2, 4], 8, (1,)) == [[0, 1, 4], [0, 3, 4], [0, 2, 3], [0, 2, 5]]
    assert neighbours([0, 2, 4], 8, (2,)) == [[0, 2, 6]]  # a move never reaches or passes a neighbour
    assert all(p[0] == 0 and p == sorted(set(p)) and p[-1] <= 7 for p in neighbours([0, 5, 7], 8, (1, 2)))
    target = [0, 3, 7, 12]
    calls = []

    def score(p):
        calls.append(tuple(p))
        return float(sum(abs(a - b) for a, b in zip(p, target)))

    best, seen = search(score, [0, 4, 8, 12], 16, (1, 2), rounds=10)
    assert best == target and seen[tuple(best)] == 0.0
    assert len(calls) == len(set(calls))  # no placement is sampled twice
    stuck, _ = search(score, [0, 4, 8, 12], 16, (1, 2), rounds=1)
    assert stuck != target and score(stuck) < score([0, 4, 8, 12])  # one round: one move


def test_searched_placements_join_the_regimes_table_and_keep_the_other_entries(tmp_path):
    import json

    from training.fmnist.placement_search import METHOD, main as search_main

    made_at = sampled_with(tiny_migm().sampling_defaults)
    rule = {"method": "the rule", "runs": {"8/2": {"command": "rule"}}, "sampled_with": made_at}
    base, migm, source = saved_pair(tmp_path, info={"placements": {
        "table": {"8": {"4": [0, 2, 4, 6]}}, "by_regime": {"uncond": {"8": {"2": [0, 3]}}},
        "by_regime_source": {"uncond": rule}}})
    rows = [{"regime": "uncond", "steps": 8, "budget": 4, "images": 10, "seed": 300, "start": [0, 2, 4, 6],
             "paper": [0, 2, 4, 6], "best": [0, 1, 3, 5], "to_base": {"0,1,3,5": 1.5, "0,2,4,6": 2.5},
             "replicate": {"seed": 400, "best": 1.6, "start": 2.4}},
            {"regime": "uncond", "steps": 8, "budget": 2, "images": 10, "seed": 300, "start": [0, 3],
             "paper": [0, 4], "best": [0, 3], "to_base": {"0,3": 1.0, "0,4": 2.0}},
            {"regime": "uncond", "steps": 8, "budget": 3, "images": 10, "seed": 300, "start": [0, 3, 5],
             "paper": [0, 3, 5], "best": [0, 2, 5], "to_base": {"0,2,5": 1.0, "0,3,5": 1.1},
             "replicate": {"seed": 400, "best": 1.3, "start": 1.2}}]  # a move the second seeds do not confirm
    saved = tmp_path / "search.json"
    saved.write_text(json.dumps(rows))
    out = tmp_path / "searched.safetensors"
    search_main(["--regime", "uncond", "--rows", str(saved), "--migm", str(base), "--shortcut", str(source),
                 "--out", str(tmp_path / "replicated.json"), "--write-placements", str(out)])
    shortcut = load_shortcut(out, migm)
    assert calibrated_indices(shortcut, 8, 4, "uncond") == [0, 1, 3, 5]  # moved: the regime's own entry now
    assert calibrated_indices(shortcut, 8, 4, "cond") == [0, 2, 4, 6]  # the shared table is untouched
    assert calibrated_indices(shortcut, 8, 2, "uncond") == [0, 3]
    assert calibrated_indices(shortcut, 8, 3, "uncond") is None  # not confirmed on the replicate seeds: not stored
    source_info = shortcut.info["placements"]["by_regime_source"]["uncond"]
    assert source_info["method"] == "the rule" and source_info["runs"]["8/2"] == {"command": "rule"}
    record = source_info["runs"]["8/4"]
    assert record["method"] == METHOD and record["moved_from"] == [0, 2, 4, 6]
    assert (record["to_base"], record["to_base_before"], record["to_base_paper"]) == (1.5, 2.5, 2.5)
    assert torch.equal(next(shortcut.parameters()), next(load_shortcut(source, migm).parameters()))
    assert record["replicate"] == {"seed": 400, "best": 1.6, "start": 2.4}
    for refused in (["--regime", "cond", "--rows", str(saved), "--write-placements", str(out)],
                    ["--regime", "cond"]):
        with pytest.raises(SystemExit):  # rows of another regime; nothing to search
            search_main(refused)
