"""The one sampler: plain and accelerated sampling on a tiny random model."""
import pytest
import torch

from shortcut_core import FeatureCache, MaskGITConfig, generate
from shortcut_core.maskgit_family import CPU_BLOCK_BYTES, cpu_row_blocks
from shortcut_core.sampler import categorical
from tests.tiny import tiny_migm, tiny_shortcut


@pytest.fixture(scope="module")
def migm():
    return tiny_migm()


@pytest.fixture(scope="module")
def shortcut(migm):
    return tiny_shortcut(migm)


def test_b_equals_n_is_plain_sampling(migm, shortcut):
    plain = generate(migm, [0, 1, 2], steps=8, seed=11)
    same = generate(migm, [0, 1, 2], steps=8, full_steps=8, shortcut=shortcut, seed=11)
    with pytest.warns(UserWarning, match="without a shortcut: every step runs the base model"):
        off = generate(migm, [0, 1, 2], steps=8, full_steps=3, shortcut=None, seed=11)
    assert torch.equal(plain.tokens, same.tokens) and torch.equal(plain.tokens, off.tokens)
    assert same.stats.shortcut_steps == 0 and same.stats.base_passes + same.stats.memo_passes == 8


def test_shortcut_run_stats_and_images(migm, shortcut):
    res = generate(migm, ["a", 1, 2, 0], steps=8, full_steps=3, shortcut=shortcut, seed=2)
    s = res.stats
    assert s.full_step_indices == [0, 3, 5] and s.shortcut_steps == 5
    assert s.base_passes + s.memo_passes == 3 and s.plain_base_passes == 8
    memo = f" + {s.memo_passes} from memory" if s.memo_passes else ""
    assert f"full 3/8, shortcut 5, base passes {s.base_passes}{memo} (plain: 8)" in s.report()
    assert res.tokens.shape == (4, 4, 4) and int(res.tokens.max()) < 16  # no [MASK] left
    assert res.images.shape == (4, 16, 16, 3) and res.images.dtype == torch.float32
    assert 0.0 <= float(res.images.min()) and float(res.images.max()) <= 1.0
    plain = generate(migm, ["a", 1, 2, 0], steps=8, seed=2)
    assert not torch.equal(plain.tokens, res.tokens)  # the shortcut really replaced base passes


def test_seed_determinism(migm, shortcut):
    a = generate(migm, [0, 1], steps=6, full_steps=2, shortcut=shortcut, seed=5, decode=False)
    b = generate(migm, [0, 1], steps=6, full_steps=2, shortcut=shortcut, seed=5, decode=False)
    c = generate(migm, [0, 1], steps=6, full_steps=2, shortcut=shortcut, seed=6, decode=False)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.images is None


def test_callback_sees_every_reveal(migm, shortcut):
    seen = []

    def cb(info):
        st = info.state
        seen.append((info.step, info.full, tuple(info.feats.shape), int((st.revealed_at == info.step).sum())))

    generate(migm, [0, 1], steps=5, full_steps="0,2", shortcut=shortcut, seed=1, cfg=2.0, callback=cb)
    counts = [1, 2, 4, 5, 4]  # arccos for 16 tokens in 5 steps (test_schedules checks the formula), times batch 2
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4]
    assert [s[1] for s in seen] == [True, False, True, False, False]
    assert all(s[2] == (4, 17, 32) for s in seen)  # guidance: cond + uncond rows
    assert [s[3] for s in seen] == [2 * c for c in counts]
    seen.clear()
    generate(migm, [0, 1], steps=5, seed=1, cfg=0.0, callback=cb)
    assert all(s[2] == (2, 17, 32) for s in seen)  # no guidance: one branch


def test_interrupt_leaves_no_state(migm, shortcut):
    class Stop(Exception):
        pass

    def cb(info):
        if info.step == 2:
            raise Stop

    before = generate(migm, [0], steps=6, full_steps=2, shortcut=shortcut, seed=3, decode=False)
    with pytest.raises(Stop):
        generate(migm, [0], steps=6, full_steps=2, shortcut=shortcut, seed=4, callback=cb)
    after = generate(migm, [0], steps=6, full_steps=2, shortcut=shortcut, seed=3, decode=False)
    assert torch.equal(before.tokens, after.tokens)


def test_bad_inputs_name_the_problem(migm, shortcut):
    with pytest.raises(ValueError, match="full steps B=9 must be between 1 and the number of steps N=8"):
        generate(migm, [0], steps=8, full_steps=9, shortcut=shortcut)
    with pytest.raises(ValueError, match="class 7 is outside 0..2"):
        generate(migm, [7], steps=4)
    with pytest.raises(ValueError, match="unknown class name 'zebra'"):
        generate(migm, ["zebra"], steps=4)
    with pytest.raises(ValueError, match="at most 16"):
        generate(migm, [0], steps=17)
    with pytest.raises(ValueError, match="must start at 0"):
        generate(migm, [0], steps=8, full_steps="2,4", shortcut=shortcut)
    with pytest.raises(ValueError, match="pass classes"):
        generate(migm, steps=4)


def test_single_class_with_batch(migm):
    res = generate(migm, 1, steps=4, seed=0, batch=3, decode=False)
    assert res.tokens.shape[0] == 3


def test_categorical_draws_follow_the_probabilities():
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    draws = categorical(probs[:, None, :].expand(2, 40_000, 5).contiguous(), torch.Generator().manual_seed(0))
    freq = torch.stack([torch.bincount(row, minlength=5) for row in draws]).float() / 40_000
    assert torch.allclose(freq, probs, atol=0.01)  # 5 sigma of a 40k-draw frequency is < 0.013
    assert freq[0, 1] == 0 and freq[0, 4] == 0  # zero-probability codes are never drawn
    again = categorical(probs[:, None, :].expand(2, 40_000, 5).contiguous(), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_guiding_features_equals_guiding_logits(migm):
    """The MaskGIT step guides features before the head; that is exact because the head is affine."""
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, migm.config.seq_len, migm.config.hidden, generator=gen)
    positions = torch.tensor([[0, 5, 9], [1, 2, 15], [3, 4, 7]])
    head = migm.model.logits
    w = 1.7
    on_logits = (1 + w) * head(cond, positions) - w * head(uncond, positions)
    on_features = head((1 + w) * cond - w * uncond, positions)
    assert torch.allclose(on_logits, on_features, atol=1e-4)


def test_shortcut_follows_its_migm_when_the_weights_move():
    """ComfyUI's model management moves a loaded MIGM (``Module.to``: every weight gets new storage)
    after its shortcut was bound; the shortcut must read the base embeddings where they are now."""
    migm = tiny_migm()
    shortcut = tiny_shortcut(migm)
    before = generate(migm, classes=[0, 1], steps=6, full_steps=2, shortcut=shortcut, seed=3, decode=False)
    old = shortcut.wte
    migm.model._apply(lambda t: t.clone())  # what a move to another device does, here on the CPU
    old.zero_()  # the table the shortcut was bound to is gone (freed on the old device)
    after = generate(migm, classes=[0, 1], steps=6, full_steps=2, shortcut=shortcut, seed=3, decode=False)
    assert shortcut.wte.data_ptr() == migm.model.tok_emb.weight.data_ptr()
    assert torch.equal(before.tokens, after.tokens)


def test_preview_shows_the_tokens_so_far_and_the_step_prediction_elsewhere(migm, monkeypatch):
    decoded, checked = [], []
    real_decode = migm.decode_tokens
    monkeypatch.setattr(migm, "decode_tokens", lambda tokens: decoded.append(tokens.clone()) or real_decode(tokens))

    def look(info):
        image = migm.preview(info.state, info.feats, index=1)
        tokens = decoded[-1].reshape(-1)
        so_far = info.state.tokens[1]
        masked = so_far == migm.config.mask_id
        assert torch.equal(tokens[~masked], so_far[~masked])  # what is revealed shows as it is
        if masked.any():  # the rest: the head's most likely code under this step's features (image 1's rows)
            most_likely = migm.model.logits(info.feats[1:2])[0].argmax(-1)  # every image position, full head
            assert torch.equal(tokens[masked], most_likely[masked])
        checked.append((image, tokens))

    result = generate(migm, classes=[0, 1], steps=4, seed=5, callback=look)
    assert len(checked) == 4 and all(tuple(p.shape) == tuple(result.images[1].shape) for p, _ in checked)
    # Nothing masked after the last step: the preview decodes the image's own tokens. The pixels
    # match to rounding only: the preview decodes one image, the run both, and a CPU's convolution
    # may pick another algorithm for another batch size.
    image, tokens = checked[-1]
    assert torch.equal(tokens, result.tokens[1].reshape(-1))
    torch.testing.assert_close(image, result.images[1], rtol=0, atol=1e-5)


def test_base_every_step_labels_each_visited_state_without_changing_the_run(migm, shortcut):
    """On-policy labels: the tokens follow the shortcut exactly as without the option, and the
    base feature handed over at every step is the base model's on the state that step saw."""
    kw = dict(steps=8, full_steps=3, shortcut=shortcut, seed=5, decode=False)
    seen = []
    before = {"tokens": None}

    def grab(info):
        seen.append((info.full, info.feats, info.base_feats, before["tokens"]))
        before["tokens"] = info.state.tokens.clone()

    ref = generate(migm, [0, 1, 2], **kw)
    labelled = generate(migm, [0, 1, 2], base_every_step=True, callback=grab, **kw)
    assert torch.equal(ref.tokens, labelled.tokens)
    s = labelled.stats
    assert s.base_passes + s.memo_passes == 8 and s.shortcut_steps == 5  # plain sampling's passes, and the shortcut's steps
    classes = torch.tensor([0, 1, 2])
    null = torch.full_like(classes, migm.config.null_class)
    for step, (full, feats, base_feats, tokens) in enumerate(seen):
        if full:
            assert base_feats is feats
        if step == 0:
            continue
        truth = torch.cat([migm.model.features(tokens, classes), migm.model.features(tokens, null)])
        torch.testing.assert_close(base_feats, truth, rtol=1e-5, atol=1e-5)
        if not full:
            assert not torch.allclose(feats, truth, atol=1e-3)  # the shortcut's guess drove the reveal
    plain = generate(migm, [0, 1, 2], callback=lambda info: seen.append(info.base_feats), steps=2, seed=5,
                     decode=False)
    assert seen[-1] is None and plain.stats.shortcut_steps == 0  # not asked: nothing extra


def test_feature_cache_samples_skipped_steps_from_the_last_full_steps_feature(migm):
    """The training-free baseline: skipped steps see exactly the last full step's feature."""
    seen = []
    res = generate(migm, [0, 1, 2], steps=8, full_steps=[0, 3, 5], shortcut=FeatureCache(), seed=4,
                   callback=lambda info: seen.append((info.step, info.full, info.feats)))
    last_full = None
    for step, full, feats in seen:
        if full:
            last_full = feats
        else:
            assert feats is last_full
    s = res.stats
    assert s.shortcut_steps == 5 and s.base_passes + s.memo_passes == 3 and "full 3/8, cache 5," in s.report()
    assert "feature cache" in s.report()
    plain = generate(migm, [0, 1, 2], steps=8, seed=4)
    assert not torch.equal(plain.tokens, res.tokens)
    with pytest.raises(ValueError, match="a feature cache has none"):
        generate(migm, [0, 1, 2], steps=8, full_steps=3, shortcut=FeatureCache(), placement="calibrated")


def test_cpu_row_blocks_split_wide_batches_only_on_a_cpu():
    fmnist = MaskGITConfig(hidden=96, depth=16, heads=4, mlp_dim=384, grid=7, codebook_size=256, num_classes=10)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # 50 tokens x 384 hidden x 4 bytes = 76.8 kB a row: 218 rows fit the budget
    assert [cpu_row_blocks(r, fmnist, cpu, torch.float32, CPU_BLOCK_BYTES) for r in (1, 218, 219, 1000)] == [1, 1, 2, 5]
    assert cpu_row_blocks(1000, fmnist, cpu, torch.bfloat16, CPU_BLOCK_BYTES) == 3  # half the bytes a row
    assert cpu_row_blocks(1000, fmnist, cuda, torch.float32, CPU_BLOCK_BYTES) == 1
    assert cpu_row_blocks(1000, fmnist, cpu, torch.float32, None) == 1
    assert cpu_row_blocks(1000, fmnist, cpu, torch.float32, 1) == 16  # never below 64 rows a block


def test_row_blocks_sample_what_one_pass_samples(monkeypatch):
    migm, classes = tiny_migm(), [i % 3 for i in range(150)]  # guided: 300 rows a base pass
    shortcut = tiny_shortcut(migm)
    migm.cpu_block_bytes = None
    one = generate(migm, classes, steps=6, full_steps=3, shortcut=shortcut, seed=4, decode=False)
    rows, features = [], migm.model.features

    def spy(tokens, cls):
        rows.append(tokens.shape[0])
        return features(tokens, cls)

    monkeypatch.setattr(migm.model, "features", spy)
    migm.cpu_block_bytes = 1
    blocked = generate(migm, classes, steps=6, full_steps=3, shortcut=shortcut, seed=4, decode=False)
    assert rows and set(rows) == {60}  # 5 blocks of 60 rows at every full step not served from memory
    assert torch.equal(one.tokens, blocked.tokens)
