"""Lumina-DiMOO sampling through the shared sampler, plain and with the shortcut (tiny, CPU)."""
from __future__ import annotations

import math

import pytest
import torch

from shortcut_core.checkpoints import CheckpointError
from shortcut_core.dimoo.config import SHORTCUT_PRESETS, DiMOOShortcutConfig
from shortcut_core.dimoo.fake import write_fake_dimoo_folder
from shortcut_core.dimoo.family import DiMOOMIGM, keep_masked
from shortcut_core.dimoo.shortcut import DiMOOShortcut
from shortcut_core.migm import load_migm, load_shortcut, save_shortcut
from shortcut_core.sampler import FeatureCache, sample

SIZE = dict(height=48, width=32)  # 3 x 2 image tokens
STEPS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_fake_dimoo_folder(tmp_path_factory.mktemp("dimoo"), seed=0)


@pytest.fixture(scope="module")
def migm(folder):
    return load_migm(folder)


@pytest.fixture(scope="module")
def shortcut(migm):
    torch.manual_seed(3)
    return migm.build_shortcut(SHORTCUT_PRESETS["tiny"]).eval()


def test_keep_schedule():
    assert [keep_masked(s, 64, 4096) for s in (0, 1, 31, 62, 63)] == \
           [math.floor(4096 * math.cos(math.pi / 2 * (s + 1) / 64)) for s in (0, 1, 31, 62)] + [0]
    assert keep_masked(6, 8, 6) == 1  # at least one stays masked before the last step
    counts = [keep_masked(s, 64, 4096) for s in range(64)]
    assert counts == sorted(counts, reverse=True) and counts[0] == 4094
    assert keep_masked(0, 1, 10) == 0


def test_loads_as_a_dimoo_migm(migm, folder):
    assert isinstance(migm, DiMOOMIGM) and migm.family == "dimoo"
    assert migm.name == folder.name and len(migm.fingerprint) == 16
    assert migm.dtype == torch.float32 and migm.device.type == "cpu"


def test_plain_run(migm):
    r = sample(migm, "a red cat", steps=STEPS, seed=1, **SIZE)
    assert r.tokens.shape == (1, 3, 2)
    assert ((r.tokens >= 0) & (r.tokens < 8192)).all()
    assert r.images.shape == (1, 48, 32, 3) and r.images.dtype == torch.float32
    assert 0 <= float(r.images.min()) and float(r.images.max()) <= 1
    assert (r.stats.base_passes, r.stats.plain_base_passes, r.stats.shortcut_steps) == (2 * STEPS, 2 * STEPS, 0)
    again = sample(migm, "a red cat", steps=STEPS, seed=1, **SIZE)
    assert torch.equal(again.tokens, r.tokens)


def test_every_image_token_is_revealed_once_in_schedule_order(migm):
    seen = []
    sample(migm, "a red cat", steps=STEPS, seed=2, decode=False, callback=lambda info: seen.append(info), **SIZE)
    state = seen[-1].state
    revealed = state.revealed_at
    image = state.cond_image_pos[0]
    assert (revealed[0, image] >= 0).all()
    others = torch.ones(revealed.shape[1], dtype=torch.bool)
    others[image] = False
    assert (revealed[0, others] == -1).all()  # prompt, BOA/BOI, newlines, EOI/EOA
    L = image.numel()
    for s in range(STEPS):
        still = L - int((revealed[0, image] <= s).sum())
        assert still == keep_masked(s, STEPS, L)
    un = state.revealed_at_uncond
    assert torch.equal(un[0, state.uncond_image_pos[0]], revealed[0, image])


def test_shortcut_inputs_follow_the_reference_layout(migm):
    state = migm.start("blue dog on green grass", steps=STEPS, generator=torch.Generator().manual_seed(0), **SIZE)
    feats = migm.base_features(state)
    migm.advance(state, feats, 0, torch.Generator().manual_seed(0))
    cond, uncond = migm.shortcut_inputs(state)
    pl = int(state.prompt_lens[0])
    idx = state.new_image_idx[0]
    assert idx.numel() == 6 - keep_masked(0, STEPS, 6) > 0
    ids = state.cond_ids()[0]
    assert cond["new_positions"][0].tolist() == list(range(pl)) + state.cond_image_pos[0, idx].tolist()
    assert cond["new_ids"][0].tolist() == ids[:pl].tolist() + state.image[0, idx].tolist()
    assert not any(ids[p] in (126354, 126349, 126084) for p in cond["new_positions"][0].tolist())
    shift = state.uncond_image_pos[0, 0] - state.cond_image_pos[0, 0]
    assert shift != 0  # the prompts differ in length: each branch has its own positions
    assert uncond["new_positions"][0].tolist() == (state.cond_image_pos[0, idx] + shift).tolist()
    assert uncond["new_ids"][0].tolist() == state.image[0, idx].tolist()
    assert torch.allclose(cond["mask_ratio"], torch.tensor([keep_masked(0, STEPS, 6) / 6]))


def test_shortcut_run(migm, shortcut):
    r = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=shortcut, seed=1, **SIZE)
    assert r.stats.full_step_indices == [0, 3, 5]
    assert (r.stats.base_passes + r.stats.memo_passes, r.stats.shortcut_steps) == (6, 5)
    assert ((r.tokens >= 0) & (r.tokens < 8192)).all()
    assert torch.isfinite(r.images).all()


def test_feature_cache_and_on_policy_labels(migm, shortcut):
    """The training-free control runs on DiMOO's two branches; base_every_step labels the skipped
    steps with both branches' base features without changing the tokens."""
    seen = []
    cached = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=FeatureCache(), seed=2, decode=False,
                    callback=lambda info: seen.append((info.full, info.feats)), **SIZE)
    assert "full 3/" in cached.stats.report() and ", cache 5," in cached.stats.report()
    last = None
    for full, feats in seen:
        last = feats if full else last
        assert feats is last  # a skipped step hands on the last full step's features untouched
    ref = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=shortcut, seed=2, decode=False, **SIZE)
    labels = []
    on = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=shortcut, seed=2, decode=False,
                base_every_step=True, callback=lambda info: labels.append(info.base_feats), **SIZE)
    assert torch.equal(ref.tokens, on.tokens) and len(labels) == STEPS
    assert all(isinstance(b, tuple) and len(b) == 2 for b in labels)  # cond and uncond branches, every step


def test_all_full_steps_with_a_shortcut_is_exactly_plain(migm, shortcut):
    plain = sample(migm, "a red cat", steps=STEPS, seed=4, decode=False, **SIZE)
    full = sample(migm, "a red cat", steps=STEPS, full_steps=STEPS, shortcut=shortcut, seed=4, decode=False, **SIZE)
    assert torch.equal(plain.tokens, full.tokens)
    assert full.stats.shortcut_steps == 0


@pytest.mark.parametrize("full_steps", [None, 3])
def test_batch_of_two_prompts_matches_single_runs(migm, shortcut, full_steps):
    """Rows of different prompt lengths (padded cond sequences) give their single-row tokens.

    Temperature 0 makes sampling deterministic, so the rows can be compared one to one.
    """
    prompts = ["a red cat", "blue dog on green grass"]
    kw = dict(steps=STEPS, full_steps=full_steps, shortcut=shortcut if full_steps else None, temperature=0.0,
              decode=False, **SIZE)
    both = sample(migm, prompts, **kw)
    assert both.tokens.shape == (2, 3, 2) and both.stats.batch == 2
    for i, p in enumerate(prompts):
        assert torch.equal(both.tokens[i], sample(migm, p, **kw).tokens[0])


def test_batch_option_repeats_a_prompt_and_cfg_zero_runs_one_branch(migm):
    r = sample(migm, "a red cat", steps=4, batch=2, cfg=0.0, seed=0, decode=False, **SIZE)
    assert r.tokens.shape == (2, 3, 2)
    assert r.stats.base_passes + r.stats.memo_passes == 4  # one forward per full step without guidance


def test_bad_sizes_and_inputs_are_refused(migm):
    with pytest.raises(ValueError, match="multiple of 16"):
        sample(migm, "a red cat", steps=4, height=40, width=32)
    with pytest.raises(ValueError, match="batch=3"):
        sample(migm, ["a", "b"], steps=4, batch=3, **SIZE)


def test_load_shortcut_file_and_refuse_a_misfit(migm, shortcut, tmp_path):
    torch.save(shortcut.state_dict(), tmp_path / "dimoo-shortcut.pth")
    save_shortcut(shortcut, tmp_path / "s.safetensors", base_fingerprint=migm.fingerprint)
    for name in ("dimoo-shortcut.pth", "s.safetensors"):
        loaded = load_shortcut(tmp_path / name, migm)
        assert isinstance(loaded, DiMOOShortcut) and loaded.config == shortcut.config
        a = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=loaded, seed=1, decode=False, **SIZE)
        b = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=shortcut, seed=1, decode=False, **SIZE)
        assert torch.equal(a.tokens, b.tokens)
    wide = DiMOOShortcut(DiMOOShortcutConfig(dim=64, width=16, heads=4, mlp_hidden=64, time_hidden=64))
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="width 64.*width 32"):
        load_shortcut(tmp_path / "wide.pth", migm)
    with pytest.raises(TypeError, match="DiMOO shortcut"):
        migm.check_shortcut(torch.nn.Linear(2, 2))


def test_gpu_bench_refuses_the_cpu_but_runs_a_tiny_wiring_check(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_dimoo_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_dimoo_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU refusal does not apply")
    with pytest.raises(SystemExit):
        bench.main([])
    with pytest.raises(SystemExit):
        bench.main(["--allow-cpu", "--size", "64"])  # full size on a CPU: refused too
    assert bench.main(["--tiny", "--allow-cpu", "--size", "32", "--steps", "4", "--full-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "plain" in out and "shortcut B=2" in out


def test_a_maskgit_shortcut_file_is_refused(migm, tmp_path):
    from shortcut_core import MaskGITShortcut, ShortcutConfig

    maskgit = MaskGITShortcut(ShortcutConfig(dim=32, width=16, heads=4))
    save_shortcut(maskgit, tmp_path / "maskgit.safetensors")
    with pytest.raises(CheckpointError, match="'maskgit' shortcut"):
        load_shortcut(tmp_path / "maskgit.safetensors", migm)
    torch.save(maskgit.state_dict(), tmp_path / "maskgit.pth")
    with pytest.raises(CheckpointError, match="not a DiMOO shortcut"):
        load_shortcut(tmp_path / "maskgit.pth", migm)


def test_shortcut_follows_its_migm_when_the_weights_move(folder):
    """As for MaskGIT: the token table the shortcut reads is the MIGM's current one after a move."""
    migm = load_migm(folder)
    torch.manual_seed(3)
    shortcut = migm.build_shortcut(SHORTCUT_PRESETS["tiny"]).eval()
    before = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=shortcut, seed=1, **SIZE)
    old = shortcut.wte
    migm.model._apply(lambda t: t.clone())
    old.zero_()
    after = sample(migm, "a red cat", steps=STEPS, full_steps=3, shortcut=shortcut, seed=1, **SIZE)
    assert shortcut.wte.data_ptr() == migm.model.wte.weight.data_ptr()
    assert torch.equal(before.tokens, after.tokens)


def test_preview_during_sampling(migm):
    seen = []
    result = sample(migm, "a red cat", steps=STEPS, seed=1,
                    callback=lambda info: seen.append(migm.preview(info.state, info.feats)), **SIZE)
    assert len(seen) == STEPS and tuple(seen[0].shape) == tuple(result.images[0].shape)
    assert torch.equal(seen[-1], result.images[0])


def test_step0_from_memory_gives_the_same_tokens_for_prompts_of_any_length(folder):
    """Each prompt's step 0 is computed alone and padded back: a padded batch, a cold or warm memo,
    or none at all give the same tokens; the unconditional prefix is shared by every prompt."""
    prompts = ["a red cat", "two small dogs playing on a green sofa"]
    kw = dict(steps=4, seed=2, decode=False, cfg=4.0, **SIZE)
    warm_migm = load_migm(folder)
    cold = sample(warm_migm, prompts, **kw)
    warm = sample(warm_migm, prompts, **kw)
    never_migm = load_migm(folder)
    never_migm.first_step.max_bytes = 0
    never = sample(never_migm, prompts, **kw)
    assert torch.equal(cold.tokens, warm.tokens) and torch.equal(cold.tokens, never.tokens)
    assert (cold.stats.base_passes, cold.stats.memo_passes) == (8, 0)
    assert (warm.stats.base_passes, warm.stats.memo_passes) == (6, 2)
    assert warm_migm.first_step.misses == 3  # two prompts and the shared unconditional prefix


def test_step0_rows_from_memory_match_the_batched_padded_pass(migm):
    """The memo's keys are the sequences the batched pass runs: at every real position the features agree."""
    state = migm.start(["a red cat", "two small dogs playing on a green sofa"], steps=4, cfg=4.0, **SIZE)
    with torch.inference_mode():
        cond, uncond = migm.base_features(state)
        batched_cond = migm.model.features(state.cond_ids(), attention_mask=state.cond_valid)
        batched_uncond = migm.model.features(state.uncond_ids())
    valid = state.cond_valid
    assert valid is not None and not bool(valid.all())  # the two prompts pad differently
    torch.testing.assert_close(cond[valid], batched_cond[valid], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(uncond, batched_uncond, rtol=1e-4, atol=1e-4)
