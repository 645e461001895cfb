"""Lumina-DiMOO models, loading and sequence layout, on tiny random weights (CPU)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from shortcut_core.checkpoints import CheckpointError, save_safetensors
from shortcut_core.dimoo.config import LLADA_PRESETS, SHORTCUT_PRESETS, DiMOOShortcutConfig, LLaDAConfig
from shortcut_core.dimoo.fake import FAKE_WORDS, fake_token_ids, hf_config_dict, random_llada, write_fake_dimoo_folder
from shortcut_core.dimoo.llada import LLaDA, apply_rope, rope_angles
from shortcut_core.dimoo.loader import load_dimoo_parts, load_dimoo_shortcut, load_llada, read_llada_config
from shortcut_core.dimoo.prompt import SYSTEM_PROMPT, build_sequence, image_block, token_grid
from shortcut_core.dimoo.shortcut import DiMOOShortcut
from shortcut_core.dimoo.vq import VQConfig, VQDecoder

TINY = LLADA_PRESETS["tiny"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_fake_dimoo_folder(tmp_path_factory.mktemp("dimoo"), TINY, seed=0, shards=2)


@pytest.fixture(scope="module")
def parts(folder):
    return load_dimoo_parts(folder)


def tiny_shortcut(seed=1) -> DiMOOShortcut:
    torch.manual_seed(seed)
    return DiMOOShortcut(SHORTCUT_PRESETS["tiny"]).eval()


# -- configs ---------------------------------------------------------------------------

def test_config_round_trips_through_json():
    for c in (LLADA_PRESETS["full"], TINY):
        assert LLaDAConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    s = SHORTCUT_PRESETS["full"]
    assert DiMOOShortcutConfig.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="unknown"):
        LLaDAConfig.from_dict({**TINY.to_dict(), "bogus": 1})


def test_published_shapes_and_special_ids():
    c = LLADA_PRESETS["full"]
    assert (c.d_model, c.n_layers, c.n_heads, c.mlp_hidden, c.vocab_size) == (4096, 32, 32, 12288, 134548)
    assert (c.mask_id, c.newline_id, c.boa_id, c.eoa_id, c.boi_id, c.eoi_id) == (126336, 126084, 126354, 126355,
                                                                                 126349, 126350)
    assert (c.uncondition_id, c.system_id, c.system_end_id, c.user_id, c.user_end_id) == (126351, 126332, 126333,
                                                                                          126334, 126335)
    assert (c.image_offset, c.codebook_size, c.rope_theta) == (126356, 8192, 5e5)
    s = SHORTCUT_PRESETS["full"]
    assert (s.dim, s.width, s.heads, s.mlp_hidden, s.time_hidden, s.n_block) == (4096, 2048, 32, 12288, 724, 1)
    assert s.time_hidden == round(math.sqrt(2048 * 256))
    # The tiny preset keeps the real vocabulary, ids and offset.
    assert {k: v for k, v in TINY.to_dict().items() if k.endswith("_id") or k in ("vocab_size", "image_offset")} == \
           {k: v for k, v in c.to_dict().items() if k.endswith("_id") or k in ("vocab_size", "image_offset")}


def test_from_hf_config_reads_llada_fields():
    hf = hf_config_dict(LLADA_PRESETS["full"])
    assert LLaDAConfig.from_hf_config(hf) == LLADA_PRESETS["full"]
    assert LLaDAConfig.from_hf_config({**hf, "embedding_size": 126464}, vocab_size=134548).vocab_size == 134548
    for bad in ({"weight_tying": True}, {"activation_type": "gelu"}, {"n_kv_heads": 8}, {"include_bias": True}):
        with pytest.raises(ValueError):
            LLaDAConfig.from_hf_config({**hf, **bad})
    with pytest.raises(ValueError, match="d_model"):
        LLaDAConfig.from_hf_config({"n_heads": 4})


# -- full-size architecture on the meta device -----------------------------------------

def test_full_size_base_names_and_shapes_on_meta():
    with torch.device("meta"):
        model = LLaDA(LLADA_PRESETS["full"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 1 + 32 * 9 + 2
    assert shapes["model.transformer.wte.weight"] == (134548, 4096)
    assert shapes["model.transformer.ff_out.weight"] == (134548, 4096)
    assert shapes["model.transformer.ln_f.weight"] == (4096,)
    block = {k.split(".", 4)[4]: v for k, v in shapes.items() if k.startswith("model.transformer.blocks.31.")}
    assert block == {
        "q_proj.weight": (4096, 4096), "k_proj.weight": (4096, 4096), "v_proj.weight": (4096, 4096),
        "attn_out.weight": (4096, 4096), "ff_proj.weight": (12288, 4096), "up_proj.weight": (12288, 4096),
        "ff_out.weight": (4096, 12288), "attn_norm.weight": (4096,), "ff_norm.weight": (4096,),
    }


def test_full_size_shortcut_names_shapes_and_count_on_meta():
    with torch.device("meta"):
        shortcut = DiMOOShortcut(SHORTCUT_PRESETS["full"])
    shapes = {k: tuple(v.shape) for k, v in shortcut.state_dict().items()}
    assert sum(p.numel() for p in shortcut.parameters()) == 219_797_204
    expected = {
        "proj_in.weight": (2048, 4096), "proj_in.bias": (2048,), "new_token_proj_in.weight": (2048, 4096),
        "new_token_proj_in.bias": (2048,), "proj_out.weight": (4096, 2048), "proj_out.bias": (4096,),
        "ln_f.weight": (2048,), "time_embedder.mlp.0.weight": (724, 256), "time_embedder.mlp.0.bias": (724,),
        "time_embedder.mlp.2.weight": (2048, 724), "time_embedder.mlp.2.bias": (2048,),
        "adaLN_modulation.weight": (4096, 2048), "adaLN_modulation.bias": (4096,),
    }
    for branch in ("cross_attn", "self_attn"):
        p = f"blocks.0.{branch}."
        expected.update({p + "attn_norm.weight": (2048,), p + "ff_norm.weight": (2048,),
                         p + "q_proj.weight": (2048, 2048), p + "k_proj.weight": (2048, 2048),
                         p + "v_proj.weight": (2048, 2048), p + "attn_out.weight": (2048, 2048),
                         p + "ff_proj.weight": (12288, 2048), p + "up_proj.weight": (12288, 2048),
                         p + "ff_out.weight": (2048, 12288)})
    assert shapes == expected


# -- RoPE and attention ------------------------------------------------------------------

def test_rope_is_a_rotation_that_depends_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)

    def score(pq, pk):
        rq = apply_rope(q, rope_angles(torch.tensor([[pq]]), 8, 5e5))
        rk = apply_rope(k, rope_angles(torch.tensor([[pk]]), 8, 5e5))
        return (rq * rk).sum(-1)

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-4)
    rotated = apply_rope(q, rope_angles(torch.tensor([[7]]), 8, 5e5))
    assert torch.allclose(rotated.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # Half rotation: dimension i pairs with i + d/2 (not with its neighbour).
    x = torch.zeros(1, 1, 1, 8)
    x[..., 0] = 1
    out = apply_rope(x, rope_angles(torch.tensor([[1]]), 8, 5e5))
    assert out[..., 4].abs() > 0.5 and out[..., 1].abs() < 1e-6


def test_base_features_ignore_right_padding():
    model = random_llada(TINY, seed=3)
    ids = torch.randint(0, 1000, (1, 9))
    alone = model.features(ids)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    other = torch.randint(0, 1000, (1, 13))
    both = model.features(torch.cat([padded, other]), attention_mask=torch.cat(
        [torch.arange(13)[None] < 9, torch.ones(1, 13, dtype=torch.bool)]))
    assert torch.allclose(both[0, :9], alone[0], atol=1e-5)
    assert torch.allclose(both[1], model.features(other)[0], atol=1e-5)


def test_image_logits_use_only_the_image_rows_of_the_head():
    model = random_llada(TINY, seed=4)
    feat = torch.randn(2, 5, TINY.d_model)
    pos = torch.tensor([[1, 3], [4, 0]])
    logits = model.image_logits(feat, pos)
    assert logits.shape == (2, 2, 8192)
    full = model.transformer.ff_out(feat)[..., TINY.image_offset:TINY.image_offset + 8192]
    assert torch.allclose(logits[1, 0], full[1, 4], atol=1e-5)


# -- shortcut ----------------------------------------------------------------------------

def test_shortcut_batch_of_two_matches_two_single_calls():
    """Per-row RoPE key positions, padded new tokens and a padded sequence."""
    shortcut = tiny_shortcut()
    table = torch.randn(TINY.vocab_size, TINY.d_model)
    shortcut.bind(table)
    torch.manual_seed(5)
    f0, f1 = torch.randn(1, 12, 32), torch.randn(1, 10, 32)
    ids0, pos0 = torch.tensor([[5, 126340, 126999]]), torch.tensor([[0, 7, 11]])
    ids1, pos1 = torch.tensor([[126400, 126401]]), torch.tensor([[3, 9]])
    r0, r1 = torch.tensor([0.25]), torch.tensor([0.75])
    one0 = shortcut(f0, ids0, pos0, None, r0)
    one1 = shortcut(f1, ids1, pos1, None, r1)
    feats = torch.cat([f0, torch.cat([f1, torch.zeros(1, 2, 32)], 1)])
    ids = torch.cat([ids0, torch.cat([ids1, torch.zeros(1, 1, dtype=torch.long)], 1)])
    pos = torch.cat([pos0, torch.cat([pos1, torch.zeros(1, 1, dtype=torch.long)], 1)])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    seq_valid = torch.arange(12)[None] < torch.tensor([[12], [10]])
    both = shortcut(feats, ids, pos, valid, torch.cat([r0, r1]), seq_valid=seq_valid)
    assert torch.allclose(both[0], one0[0], atol=1e-5)
    assert torch.allclose(both[1, :10], one1[0], atol=1e-5)
    # The key positions matter: the same tokens at 0..n-1 give another result.
    shifted = shortcut(f0, ids0, torch.arange(3)[None], None, r0)
    assert not torch.allclose(shifted, one0, atol=1e-4)


def test_shortcut_is_a_residual_on_prev_feat_and_uses_mask_ratio():
    shortcut = tiny_shortcut()
    shortcut.bind(torch.nn.Embedding(TINY.vocab_size, 32))
    f = torch.randn(1, 6, 32)
    ids, pos = torch.tensor([[1, 2]]), torch.tensor([[0, 4]])
    with torch.no_grad():
        shortcut.proj_out.weight.zero_()
        shortcut.proj_out.bias.zero_()
    assert torch.equal(shortcut(f, ids, pos, None, torch.tensor([0.5])), f)
    shortcut = tiny_shortcut()
    shortcut.bind(torch.randn(TINY.vocab_size, 32))
    a = shortcut(f, ids, pos, None, torch.tensor([0.1]))
    b = shortcut(f, ids, pos, None, torch.tensor([0.9]))
    assert not torch.allclose(a, b)
    # A row without any new token attends to nothing (no NaN).
    empty = shortcut(f, ids[:, :0], pos[:, :0], None, torch.tensor([0.5]))
    assert torch.isfinite(empty).all()


def test_shortcut_needs_the_base_embeddings_and_they_are_not_saved():
    shortcut = tiny_shortcut()
    with pytest.raises(RuntimeError, match="bind"):
        shortcut(torch.randn(1, 4, 32), torch.tensor([[1]]), torch.tensor([[0]]), None, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="width 32"):
        shortcut.bind(torch.randn(10, 64))
    shortcut.bind(torch.randn(TINY.vocab_size, 32))
    assert not any("wte" in k for k in shortcut.state_dict())
    assert shortcut.to(torch.float64).wte.dtype == torch.float32  # shared with the base, never cast


# -- prompt layout -------------------------------------------------------------------------

def test_token_grid_needs_multiples_of_16():
    assert token_grid(1024, 1024) == (64, 64)
    assert token_grid(512, 768) == (32, 48)
    for h, w in ((1000, 1024), (1024, 8), (0, 16)):
        with pytest.raises(ValueError, match="multiple of 16"):
            token_grid(h, w)


def test_sequence_layout_exact_ids(parts):
    c = parts.config
    tok = parts.tokenizer
    system = fake_token_ids(SYSTEM_PROMPT)
    assert len(system) == 9  # as the real tokenizer: 14 unconditional prefix tokens in all
    cond = tok.conditional("a red cat")
    uncond = tok.unconditional()
    assert cond == [126332, *system, 126333, 126334, *fake_token_ids("a red cat"), 126335]
    assert uncond == [126332, *system, 126333, 126334, 126351, 126335]
    rows, cols = token_grid(32, 48)
    seq = build_sequence(cond, rows, cols, c)
    M, NL = c.mask_id, c.newline_id
    assert seq.ids.tolist() == cond + [126354, 126349, M, M, M, NL, M, M, M, NL, 126350, 126355]
    assert seq.prompt_len == len(cond)
    assert seq.image_positions.tolist() == [len(cond) + 2 + i for i in (0, 1, 2, 4, 5, 6)]
    assert (seq.ids[seq.image_positions] == M).all()
    useq = build_sequence(uncond, rows, cols, c)
    assert useq.ids.tolist()[len(uncond):] == image_block(rows, cols, c)
    assert useq.length == len(uncond) + 2 + rows * (cols + 1) + 2


def test_tokenizer_with_other_special_ids_is_refused(tmp_path):
    from shortcut_core.dimoo.fake import write_tokenizer
    from shortcut_core.dimoo.prompt import PromptTokenizer

    import dataclasses

    write_tokenizer(tmp_path / "tokenizer.json", dataclasses.replace(TINY, system_id=126000))
    with pytest.raises(ValueError, match="does not belong"):
        PromptTokenizer.from_folder(tmp_path, TINY)


# -- loading ----------------------------------------------------------------------------------

def test_folder_loads_with_published_names(folder, parts):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    assert parts.config == TINY
    stored = {}
    for name in set(index["weight_map"].values()):
        stored.update(load_file(str(folder / name)))
    got = parts.model.state_dict()
    assert set(got) == set(stored)
    assert all(torch.equal(got[k], stored[k]) for k in stored)
    assert parts.reports[0].loaded == len(stored) and not parts.reports[0].unexpected
    assert parts.reports[1].ignored == 2  # the VQ encoder keys
    assert not any(p.is_meta for p in parts.model.parameters())


def test_vq_decodes_ids_to_images(parts):
    ids = torch.randint(0, 8192, (2, 2, 3))
    images = parts.vq.decode(ids)
    assert images.shape == (2, 3, 32, 48)
    assert torch.isfinite(images).all()
    with pytest.raises(ValueError, match="0..8191"):
        parts.vq.decode(ids + 126356)


def test_vq_config_from_diffusers_fields():
    d = {"_class_name": "VQModel", "block_out_channels": [128, 256, 256, 512, 768], "layers_per_block": 2,
         "latent_channels": 64, "num_vq_embeddings": 8192, "norm_num_groups": 32, "vq_embed_dim": None,
         "mid_block_add_attention": False, "up_block_types": ["UpDecoderBlock2D"] * 5, "norm_type": "group"}
    c = VQConfig.from_diffusers_config(d)
    assert (c.scale, c.embed_dim, c.num_vq_embeddings) == (16, 64, 8192)
    with torch.device("meta"):
        vq = VQDecoder(c)
    keys = set(vq.state_dict())
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in keys
    assert "decoder.up_blocks.4.resnets.2.conv2.weight" in keys
    assert "decoder.up_blocks.4.upsamplers.0.conv.weight" not in keys
    assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in keys  # 768 -> 512
    assert "quantize.embedding.weight" in keys and "post_quant_conv.weight" in keys
    with pytest.raises(ValueError, match="spatial"):
        VQConfig.from_diffusers_config({**d, "norm_type": "spatial"})


def test_loader_reports_missing_unexpected_and_wrong_shapes(folder, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    shard = bad / sorted(set(index["weight_map"].values()))[1]
    tensors = load_file(str(shard))
    victim = sorted(tensors)[0]
    tensors.pop(victim)
    tensors["model.transformer.extra.weight"] = torch.zeros(3)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=victim.replace(".", r"\.")):
        load_llada(bad)
    tensors[victim] = torch.zeros(7, 7)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=r"shape \(7, 7\)"):
        load_llada(bad)
    tensors[victim] = load_file(str(folder / shard.name))[victim]
    save_file(tensors, str(shard))
    model, report = load_llada(bad)
    assert report.unexpected == ["model.transformer.extra.weight"]
    with pytest.raises(CheckpointError, match="no .safetensors"):
        load_llada(tmp_path)


def test_config_vocab_comes_from_the_stored_embedding(folder, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    hf = json.loads((other / "config.json").read_text())
    hf["vocab_size"] = hf["embedding_size"] = 126464  # LLaDA's text-only size
    (other / "config.json").write_text(json.dumps(hf))
    assert read_llada_config(other).vocab_size == 134548


def test_shortcut_loads_from_pth_and_safetensors_and_refuses_a_misfit(parts, tmp_path):
    shortcut = tiny_shortcut(seed=7)
    sd = shortcut.state_dict()
    torch.save(sd, tmp_path / "dimoo-shortcut.pth")
    save_safetensors(tmp_path / "s.safetensors", sd, "shortcut", shortcut.config.to_dict(), family="dimoo")
    save_file(sd, str(tmp_path / "bare.safetensors"))
    for name in ("dimoo-shortcut.pth", "s.safetensors", "bare.safetensors"):
        loaded = load_dimoo_shortcut(tmp_path / name, parts.model)
        assert loaded.config == shortcut.config
        assert loaded.wte is parts.model.wte.weight or torch.equal(loaded.wte, parts.model.wte.weight)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    wide = DiMOOShortcut(DiMOOShortcutConfig(dim=64, width=16, heads=4, mlp_hidden=64, time_hidden=64))
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="width 64.*16x64.*width 32.*134548x32"):
        load_dimoo_shortcut(tmp_path / "wide.pth", parts.model)
    sd_bad = dict(sd)
    sd_bad.pop("ln_f.weight")
    torch.save(sd_bad, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="ln_f.weight"):
        load_dimoo_shortcut(tmp_path / "broken.pth", parts.model)
    with pytest.raises(CheckpointError, match="not a DiMOO shortcut"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "junk.safetensors"))
        load_dimoo_shortcut(tmp_path / "junk.safetensors", parts.model)


def test_words_of_the_fake_tokenizer_are_known():
    assert all(i > 0 for i in fake_token_ids(" ".join(FAKE_WORDS)))
