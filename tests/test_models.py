"""Published architectures on the meta device (no memory) and tiny-model maths."""
import torch

from shortcut_core import MASKGIT_PRESETS, SHORTCUT_PRESETS, MaskGIT, MaskGITShortcut
from shortcut_core.layers import FeedForward, PackedMultiheadAttention, timestep_embedding
from tests.tiny import tiny_migm, tiny_shortcut


def test_maskgit512_keys_and_shapes():
    with torch.device("meta"):
        sd = MaskGIT(MASKGIT_PRESETS["maskgit-imagenet512"]).state_dict()
    assert len(sd) == 305
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["tok_emb.weight"] == (2026, 768)
    assert shapes["pos_emb"] == (1, 1025, 768)
    assert shapes["bias"] == (1025, 2026)
    assert shapes["transformer.layers.23.0.fn.mha.in_proj_weight"] == (2304, 768)
    assert shapes["transformer.layers.0.0.fn.mha.out_proj.weight"] == (768, 768)
    assert shapes["transformer.layers.5.1.fn.net.0.weight"] == (3072, 768)
    assert shapes["transformer.layers.5.1.fn.net.3.weight"] == (768, 3072)
    for i in (0, 2, 4, 6):
        assert f"first_layer.{i}.weight" in shapes
    for i in (0, 2, 4):
        assert f"last_layer.{i}.weight" in shapes
    assert "last_layer.6.weight" not in shapes


def test_maskgit_shortcut_keys_and_params():
    with torch.device("meta"):
        sc = MaskGITShortcut(SHORTCUT_PRESETS["maskgit-imagenet512"])
    sd = sc.state_dict()
    assert "wte" not in sd and "wpe" not in sd  # frozen base embeddings are not persisted
    assert sum(v.numel() for v in sd.values()) == 5_081_914  # SPEC: 5.08 M at n_block 1
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["proj_in.weight"] == (384, 768) and shapes["proj_out.weight"] == (768, 384)
    assert shapes["blocks.0.cross_attn.fn.mha.in_proj_weight"] == (1152, 384)
    assert shapes["blocks.0.self_attn_ff.fn.net.3.weight"] == (384, 1536)
    assert shapes["time_embedder.mlp.0.weight"] == (314, 256)
    assert shapes["time_embedder.mlp.2.weight"] == (384, 314)
    assert shapes["adaLN_modulation.weight"] == (768, 384)
    assert {"last_layer.0.weight", "last_layer.1.weight", "last_layer.3.weight"} <= set(shapes)


def test_packed_attention_matches_torch_mha():
    torch.manual_seed(0)
    ours = PackedMultiheadAttention(16, 4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0])
    torch.testing.assert_close(ours(x, ctx), ref(x, ctx, ctx, need_weights=False)[0])


def test_timestep_embedding_layout():
    e = timestep_embedding(torch.tensor([0.0, 500.0]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # [cos, sin] halves


def test_logits_at_positions_match_full_head():
    migm = tiny_migm()
    tokens = torch.randint(0, 16, (2, 16))
    feat = migm.model.features(tokens, torch.tensor([0, 3]))  # class 3 = no class
    assert feat.shape == (2, 17, 32)
    full = migm.model.logits(feat)
    assert full.shape == (2, 16, 16)
    pos = torch.tensor([[1, 5, 9], [0, 2, 15]])
    torch.testing.assert_close(migm.model.logits(feat, pos), full.gather(1, pos[..., None].expand(-1, -1, 16)))


def test_shortcut_prediction_depends_on_the_new_tokens():
    migm = tiny_migm()
    sc = tiny_shortcut(migm)
    feat = torch.randn(2, 17, 32)
    ids = torch.tensor([[3, 4], [5, 6]])
    pos = torch.tensor([[2, 7], [0, 15]])
    ratio = torch.tensor([0.5, 0.25])
    a = sc(feat, ids, pos, ratio)
    assert a.shape == feat.shape
    # Other ids, other positions or another mask ratio give another prediction.
    assert not torch.allclose(a, sc(feat, ids + 1, pos, ratio))
    assert not torch.allclose(a, sc(feat, ids, pos + 1, ratio))
    assert not torch.allclose(a, sc(feat, ids, pos, ratio / 2))


def test_feedforward_gelu_in_place_only_where_autograd_needs_nothing():
    torch.manual_seed(0)
    ff = FeedForward(16, 64).eval()
    x = torch.randn(2, 5, 16)
    expected = ff.net(x)  # the plain nn.Sequential: what the published layout computes
    with torch.inference_mode():
        assert torch.equal(ff(x), expected.detach())
    with torch.no_grad():
        assert torch.equal(ff(x), expected.detach())
    # training: the same values and the same gradients as the Sequential, for the input and the weights
    for frozen in (False, True):
        ff.requires_grad_(not frozen)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ff(a).square().sum().backward()
        grads = [p.grad.clone() for p in ff.parameters()] if not frozen else []
        ff.zero_grad()
        ff.net(b).square().sum().backward()
        assert torch.equal(a.grad, b.grad)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, ff.parameters()))
        ff.zero_grad()
    # frozen weights and an input that needs no gradient: nothing to keep, the in-place path runs
    out = ff(x)
    assert not out.requires_grad and torch.equal(out, expected.detach())
