"""Step 0 from memory: exact, independent of the batch and of history, forgotten when weights change."""
import torch

from shortcut_core import generate
from shortcut_core.first_step import FirstStepMemo
from tests.tiny import tiny_migm, tiny_shortcut

CLASSES = [0, 2, 2, "none", 1]


def step0_features(migm, classes, **kwargs):
    seen = []
    generate(migm, classes, steps=4, seed=3, decode=False, callback=lambda info: seen.append(info.feats.clone())
             if info.step == 0 else None, **kwargs)
    return seen[0]


def direct_step0(migm, class_index):
    c = migm.config
    with torch.inference_mode():
        return migm.model.features(torch.full((1, c.num_image_tokens), c.mask_id), torch.tensor([class_index]))[0]


def test_same_tokens_with_the_memo_cold_warm_or_holding_nothing():
    migm = tiny_migm(vqgan=False)
    sc = tiny_shortcut(migm)
    kwargs = dict(steps=8, full_steps=3, shortcut=sc, seed=5, decode=False, cfg=1.5)
    cold = generate(migm, CLASSES, **kwargs)
    warm = generate(migm, CLASSES, **kwargs)
    empty = tiny_migm(vqgan=False)
    empty.first_step.max_bytes = 0
    never = generate(empty, CLASSES, **{**kwargs, "shortcut": tiny_shortcut(empty)})
    assert torch.equal(cold.tokens, warm.tokens) and torch.equal(cold.tokens, never.tokens)
    assert (cold.stats.base_passes, cold.stats.memo_passes) == (3, 0)
    assert (warm.stats.base_passes, warm.stats.memo_passes) == (2, 1)
    assert (never.stats.base_passes, never.stats.memo_passes) == (3, 0) and not empty.first_step.entries
    assert "base passes 2 + 1 from memory (plain: 8)" in warm.stats.report()
    assert "base passes 3 (plain: 8)" in cold.stats.report()
    assert migm.first_step.misses == 4 and migm.first_step.hits == 4  # classes 0, 2, 1 and the null class


def test_each_row_is_its_condition_alone_whatever_the_batch():
    migm = tiny_migm(vqgan=False)
    feats = step0_features(migm, CLASSES, cfg=1.5)
    null = migm.config.null_class
    expected = [0, 2, 2, null, 1] + [null] * len(CLASSES)  # the guidance half: the null class
    for row, class_index in enumerate(expected):
        assert torch.equal(feats[row], direct_step0(migm, class_index)), row
    fresh = tiny_migm(vqgan=False)
    alone = step0_features(fresh, [2], cfg=1.5)
    assert torch.equal(alone[0], feats[1])


def test_memo_forgets_when_a_weight_changes_in_place_or_is_cast():
    migm = tiny_migm(vqgan=False)
    before = step0_features(migm, [1], cfg=0.0)
    with torch.no_grad():
        migm.model.first_layer[2].weight.add_(0.05)
    after = step0_features(migm, [1], cfg=0.0)
    assert not torch.allclose(before, after)
    assert torch.equal(after[0], direct_step0(migm, 1))
    migm.to(dtype=torch.float64)
    cast = step0_features(migm, [1], cfg=0.0)
    assert cast.dtype == torch.float64 and torch.equal(cast[0], direct_step0(migm, 1))


def test_memo_holds_at_most_its_budget_least_recently_used_out():
    calls = []

    def compute(key):
        calls.append(key)
        return torch.full((1, 4, 8), float(key))  # 128 bytes

    memo = FirstStepMemo(compute, max_mib=300 / 2**20)  # room for two
    stamp = ("weights",)
    for keys in ([0], [1], [0], [2], [1]):
        rows, _ = memo.rows(keys, stamp, "cpu")
        assert float(rows[0][0, 0, 0]) == keys[0]
    assert calls == [0, 1, 2, 1]  # 1 was the least recently used when 2 came
    assert list(memo.entries) == [2, 1] and memo.bytes <= memo.max_bytes
    rows, hit = memo.rows([2, 1, 2], stamp, "cpu")
    assert hit and [float(r[0, 0, 0]) for r in rows] == [2.0, 1.0, 2.0]
    _, hit = memo.rows([2], ("other weights",), "cpu")
    assert not hit and calls[-1] == 2


def test_weights_made_in_inference_mode_are_stamped_too():
    with torch.inference_mode():
        migm = tiny_migm(vqgan=False)  # as ComfyUI loads models: inference tensors, no version counter
    before = step0_features(migm, [1], cfg=0.0)
    assert torch.equal(step0_features(migm, [1], cfg=0.0), before) and migm.first_step.hits == 1
    with torch.inference_mode():
        migm.to(dtype=torch.float64)
    cast = step0_features(migm, [1], cfg=0.0)
    assert cast.dtype == torch.float64 and torch.equal(cast[0], direct_step0(migm, 1))


def test_memo_rows_match_the_batched_pass_the_reference_runs():
    migm = tiny_migm(vqgan=False)
    state = migm.start([0, 2, "none"], steps=4, generator=torch.Generator().manual_seed(0), cfg=1.5)
    with torch.inference_mode():
        torch.testing.assert_close(migm.base_features(state), migm.batched_features(state), rtol=1e-5, atol=1e-5)
