"""Fast CPU tests for shortcut_core.vqgan (taming-transformers VQGAN)."""

import dataclasses
import json
import re

import pytest
import torch
import yaml

from shortcut_core.vqgan import (
    VQGAN,
    VQGAN_PRESETS,
    VQGANConfig,
    VectorQuantizer,
    infer_vqgan_config,
    parse_taming_yaml,
)

TINY = VQGANConfig(
    embed_dim=8, n_embed=16, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32,
    ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
)

# The layout of the released taming `model.yaml` next to MaskGIT's `last.ckpt`.
RELEASED_MODEL_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 1024
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 16
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 250001
        disc_weight: 0.8
        codebook_weight: 1.0
"""


def tiny_model(seed: int = 0) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(TINY)


def smooth_images(batch: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    """Low-frequency images in [-1, 1]: easy targets for a few training steps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                           align_corners=False)


# --------------------------------------------------------------------------- published layout


def test_imagenet_preset_has_taming_keys_and_shapes():
    cfg = VQGAN_PRESETS["imagenet-f16-1024"]
    assert cfg.downsample_factor == 16
    with torch.device("meta"):
        model = VQGAN(cfg)
    sd = model.state_dict()
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.norm1.weight": (128,),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.4.block.1.conv2.weight": (512, 512, 3, 3),
        "encoder.down.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.block_2.norm2.bias": (512,),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.embedding.weight": (1024, 256),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.mid.block_1.conv1.weight": (512, 512, 3, 3),
        "decoder.up.4.block.2.conv1.weight": (512, 512, 3, 3),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    for absent in ("encoder.down.4.downsample.conv.weight", "decoder.up.0.upsample.conv.weight",
                   "encoder.down.3.attn.0.q.weight", "decoder.up.3.attn.0.q.weight",
                   "encoder.down.0.block.0.nin_shortcut.weight"):
        assert absent not in sd
    assert not any(k.startswith("loss.") for k in sd)
    assert not any("temb" in k for k in sd)
    # encoder 144 + decoder 194 + quant_conv 2 + post_quant_conv 2 + codebook 1
    assert len(sd) == 343
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 72_141_699
    assert infer_vqgan_config(sd) == cfg


# --------------------------------------------------------------------------- tiny model


def test_tiny_round_trip_shapes_and_value_range():
    model = tiny_model().eval()
    images = smooth_images(2)
    with torch.no_grad():
        ids = model.encode(images)
        assert ids.shape == (2, 8, 8) and ids.dtype == torch.long
        assert 0 <= int(ids.min()) and int(ids.max()) < TINY.n_embed
        z = model.encode_continuous(images)
        assert z.shape == (2, TINY.embed_dim, 8, 8)
        z_q, ids_again, losses = model.quantize_latents(z)
        assert torch.equal(ids, ids_again)
        assert set(losses) == {"codebook", "commitment", "total"}
        out = model.decode(ids)
        assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
        assert torch.allclose(out, model.decode_latents(z_q))
        recon, vq_loss, fwd_ids = model(images)
        assert recon.shape == images.shape and vq_loss.dim() == 0 and torch.equal(fwd_ids, ids)


def test_config_inference_and_dict_round_trip():
    model = tiny_model()
    sd = model.state_dict()
    assert infer_vqgan_config(sd, resolution=16) == TINY
    # Without a resolution the lowest level is assumed 16 wide: other numbers, same layers.
    guessed = infer_vqgan_config(sd)
    assert (guessed.resolution, guessed.attn_resolutions) == (32, (16,))
    VQGAN(guessed).load_state_dict(sd, strict=True)
    # `loss.*` keys of a Lightning checkpoint are ignored.
    assert infer_vqgan_config({**sd, "loss.logvar": torch.zeros(())}, resolution=16) == TINY

    d = TINY.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert isinstance(d["ch_mult"], list)
    assert VQGANConfig.from_dict(json.loads(json.dumps(d))) == TINY
    with pytest.raises(ValueError, match="unknown"):
        VQGANConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="missing"):
        VQGANConfig.from_dict({k: v for k, v in d.items() if k != "ch_mult"})


def test_invalid_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="GroupNorm"):
        dataclasses.replace(TINY, ch=48)
    with pytest.raises(ValueError, match="positive integer"):
        dataclasses.replace(TINY, ch=0)
    with pytest.raises(ValueError, match="double_z"):
        VQGAN(dataclasses.replace(TINY, double_z=True))
    model = tiny_model()
    with pytest.raises(ValueError, match="multiple"):
        model.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        model.decode(torch.full((1, 8, 8), TINY.n_embed))  # e.g. a leftover [MASK] id
    with pytest.raises(ValueError, match="not a taming"):
        infer_vqgan_config({"foo": torch.zeros(1)})


def test_small_groupnorm_widths_build():
    cfg = dataclasses.replace(TINY, ch=8, ch_mult=(1, 2), n_embed=4, embed_dim=4, z_channels=4)
    model = VQGAN(cfg)
    assert model.encoder.conv_in.out_channels == 8
    assert model.encoder.down[0].block[0].norm1.num_groups == 8
    assert model.decode(torch.zeros(1, 2, 2, dtype=torch.long)).shape == (1, 3, 4, 4)


# --------------------------------------------------------------------------- quantiser


def test_quantizer_picks_nearest_code():
    quantizer = VectorQuantizer(n_embed=5, embed_dim=2)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor(
            [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [3.0, 3.0]]))
    # (B=1, C=2, h=1, w=4): points next to codes 4, 1, 3 and 2
    z = torch.tensor([[2.4, 2.6], [0.7, 0.1], [-0.9, -0.6], [0.1, 0.8]]).t().reshape(1, 2, 1, 4)
    z_q, ids, losses = quantizer(z)
    assert ids.tolist() == [[[4, 1, 3, 2]]]
    assert torch.equal(z_q, quantizer.embedding.weight[ids].permute(0, 3, 1, 2))
    assert torch.allclose(losses["total"], losses["codebook"] * 1.25)  # equal terms, beta 0.25


def test_quantizer_matches_brute_force_in_chunks():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(n_embed=64, embed_dim=6)
    torch.nn.init.normal_(quantizer.embedding.weight)
    z = torch.randn(3, 6, 5, 7)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    expected = torch.cdist(flat, quantizer.embedding.weight).argmin(dim=1).reshape(3, 5, 7)
    assert torch.equal(quantizer.nearest_ids(z), expected)
    quantizer.max_distance_elements = 64 * 4  # four rows per distance block
    assert torch.equal(quantizer.nearest_ids(z), expected)


def test_straight_through_gradient_reaches_latents():
    quantizer = VectorQuantizer(n_embed=4, embed_dim=3)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    z_q, _, _ = quantizer(z)
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


# --------------------------------------------------------------------------- model.yaml


def test_parse_released_model_yaml():
    assert parse_taming_yaml(RELEASED_MODEL_YAML) == VQGAN_PRESETS["imagenet-f16-1024"]


def test_parse_model_yaml_flow_lists_comments_and_defaults():
    text = (
        "# a hand-edited config\n"
        "model:\n"
        "  params:\n"
        "    embed_dim: 256  # codebook width\n"
        "    n_embed: 1024\n"
        "    ddconfig: {z_channels: 256, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,\n"
        "               ch_mult: [1, 1, 2, 2, 4], num_res_blocks: 2, attn_resolutions: [16]}\n"
    )
    assert parse_taming_yaml(text) == VQGAN_PRESETS["imagenet-f16-1024"]  # dropout 0, double_z false


@pytest.mark.parametrize("text, message", [
    ("model:\n  params:\n    embed_dim: 4\n", r"models/vq/model\.yaml has no model\.params\.ddconfig mapping"),
    ("model: [unclosed\n", r"models/vq/model\.yaml is not valid YAML at line 2, column 1: expected ',' or '\]'"),
    ("", r"has no model\.params\.ddconfig"),
    (RELEASED_MODEL_YAML.replace("    n_embed: 1024\n", ""), r"lacks model\.params\.n_embed"),
    (RELEASED_MODEL_YAML.replace("      ch: 128\n", ""), r"lacks model\.params\.ddconfig\.ch\b"),
    (RELEASED_MODEL_YAML.replace("      num_res_blocks: 2\n", "      num_res_blocks: two\n"),
     r"models/vq/model\.yaml: VQGANConfig\.num_res_blocks must be a positive integer, got 'two'"),
])
def test_parse_model_yaml_refuses_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_taming_yaml(text, "models/vq/model.yaml")


def test_load_vqgan_reads_model_yaml_beside_last_ckpt(tmp_path):
    from shortcut_core.migm import load_vqgan

    model = tiny_model(seed=4)
    folder = tmp_path / "vq"
    folder.mkdir()
    torch.save({"state_dict": model.state_dict()}, folder / "last.ckpt")
    dd = {k: v for k, v in TINY.to_dict().items() if k not in ("embed_dim", "n_embed")}
    dd = {k: list(v) if isinstance(v, tuple) else v for k, v in dd.items()}
    (folder / "model.yaml").write_text(yaml.safe_dump(
        {"model": {"params": {"embed_dim": TINY.embed_dim, "n_embed": TINY.n_embed, "ddconfig": dd}}}))
    assert load_vqgan(folder / "last.ckpt").config == TINY
    (folder / "model.yaml").write_text("model:\n  params: {embed_dim: 8\n")
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'model.yaml'} is not valid YAML at line 3")):
        load_vqgan(folder / "last.ckpt")


# --------------------------------------------------------------------------- training


def test_training_reduces_reconstruction_loss():
    model = tiny_model(seed=3).train()
    images = smooth_images(2, seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        recon, vq_loss, _ = model(images)
        rec_loss = torch.nn.functional.mse_loss(recon, images)
        optimizer.zero_grad()
        (rec_loss + vq_loss).backward()
        optimizer.step()
        losses.append(rec_loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.5 * losses[0], losses
