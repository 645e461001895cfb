"""Safe loading, the native safetensors format and the converter."""
import os
import sys
import types

import pytest
import torch

from shortcut_core import (
    CheckpointError, MaskGITShortcut, ShortcutConfig, load_migm, load_pickle_checkpoint, load_shortcut, load_vqgan,
    read_safetensors_metadata, save_migm, save_shortcut,
)
from shortcut_core.convert import main as convert_main
from shortcut_core.maskgit import MASKGIT_PRESETS, MaskGIT
from shortcut_core.migm import infer_maskgit_config
from tests.tiny import TINY_MASKGIT, TINY_VQGAN, tiny_migm, tiny_shortcut

TAMING_YAML = """model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {embed_dim}
    n_embed: {n_embed}
    ddconfig:
      double_z: false
      z_channels: {z_channels}
      resolution: {resolution}
      in_channels: 3
      out_ch: 3
      ch: {ch}
      ch_mult:
      - 1
      - 1
      - 2
      num_res_blocks: 1
      attn_resolutions:
      - 4
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_start: 0
"""


class Evil:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _same_outputs(a, b):
    tokens = torch.randint(0, 16, (2, 16))
    classes = torch.tensor([0, 3])
    torch.testing.assert_close(a.model.features(tokens, classes), b.model.features(tokens, classes))


def test_safetensors_round_trip(tmp_path):
    migm = tiny_migm()
    path = tmp_path / "tiny.safetensors"
    save_migm(migm, path, info={"note": "unit test"})
    meta = read_safetensors_metadata(path)
    assert meta["kind"] == "migm" and meta["config"] == TINY_MASKGIT.to_dict()
    assert meta["vqgan_config"] == TINY_VQGAN.to_dict() and meta["info"]["note"] == "unit test"
    back = load_migm(path)
    assert back.fingerprint == migm.fingerprint and back.class_names == ["a", "b", "c"]
    _same_outputs(migm, back)
    ids = torch.randint(0, 16, (1, 4, 4))
    torch.testing.assert_close(back.vqgan.decode(ids), migm.vqgan.decode(ids))

    sc = tiny_shortcut(migm)
    sc_path = tmp_path / "sc.safetensors"
    save_shortcut(sc, sc_path, base_fingerprint=migm.fingerprint, info={"steps": 3})
    sc2 = load_shortcut(sc_path, back)
    for k, v in sc.state_dict().items():
        torch.testing.assert_close(sc2.state_dict()[k], v)
    assert sc2.info == {"steps": 3}


def test_published_maskgit_pickle_converts(tmp_path, capsys):
    migm = tiny_migm(vqgan=False)
    sd = {"module." + k: v for k, v in migm.model.state_dict().items()}
    src = tmp_path / "MaskGIT_tiny.pth"
    torch.save({"model_state_dict": sd, "iter": 7, "global_epoch": 1, "optimizer_state_dict": {"state": {}}}, src)
    loaded = load_migm(src, config=TINY_MASKGIT)
    _same_outputs(migm, loaded)
    assert loaded.fingerprint == migm.fingerprint  # fingerprints survive the format change
    out = tmp_path / "converted.safetensors"
    import json
    assert convert_main([str(src), "-o", str(out), "--config", json.dumps(TINY_MASKGIT.to_dict())]) == 0
    _same_outputs(migm, load_migm(out))
    # off a terminal, each stage is one line of the progress report (the bar on a terminal)
    stages = capsys.readouterr().err.strip().splitlines()
    assert len(stages) == 3, stages
    assert "1/3" in stages[0] and "read MaskGIT_tiny.pth" in stages[0] and "maskgit" in stages[0]
    assert "2/3" in stages[1] and "built the MaskGIT" in stages[1]
    assert "3/3" in stages[2] and "wrote converted.safetensors" in stages[2] and "MB" in stages[2]


def test_bare_pickle_matching_no_preset_is_explained(tmp_path):
    src = tmp_path / "odd.pth"
    torch.save({"model_state_dict": tiny_migm(vqgan=False).model.state_dict()}, src)
    with pytest.raises(CheckpointError, match="matches no published preset"):
        load_migm(src)


def test_infer_published_preset_from_shapes():
    with torch.device("meta"):
        sd = MaskGIT(MASKGIT_PRESETS["maskgit-imagenet512"]).state_dict()
    assert infer_maskgit_config(sd, "x") == MASKGIT_PRESETS["maskgit-imagenet512"]


@pytest.fixture
def fake_lightning(monkeypatch):
    """A Lightning callback class importable only while the checkpoint is written."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    mods = {n: types.ModuleType(n) for n in names}
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    mods[names[-1]].ModelCheckpoint = cls
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return cls, names


@pytest.mark.parametrize("zip_format", [True, False])  # legacy (pre-1.6) files hold the same objects
def test_lightning_vqgan_ckpt_loads_without_lightning(tmp_path, fake_lightning, zip_format):
    cls, names = fake_lightning
    migm = tiny_migm()
    callback = cls()
    callback.best_model_score = torch.tensor(0.5)
    sd = dict(migm.vqgan.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(2, 2)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "callbacks": {"ModelCheckpoint": callback}, "epoch": 3}, ckpt,
               _use_new_zipfile_serialization=zip_format)
    for n in names:  # Lightning is "not installed" when we read it back
        del sys.modules[n]
    raw = load_pickle_checkpoint(ckpt)
    assert type(raw["callbacks"]["ModelCheckpoint"]).__name__ == "ModelCheckpoint"
    c = TINY_VQGAN
    (tmp_path / "model.yaml").write_text(TAMING_YAML.format(embed_dim=c.embed_dim, n_embed=c.n_embed,
                                                           z_channels=c.z_channels, resolution=c.resolution, ch=c.ch))
    vq = load_vqgan(ckpt)
    assert vq.config == TINY_VQGAN
    ids = torch.randint(0, 16, (1, 4, 4))
    torch.testing.assert_close(vq.decode(ids), migm.vqgan.decode(ids))
    out = tmp_path / "vq.safetensors"
    assert convert_main([str(ckpt), "-o", str(out)]) == 0
    assert read_safetensors_metadata(out)["kind"] == "vqgan"


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused(tmp_path, zip_format):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "payload": Evil(target)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="could run code|was refused") as refused:
        load_pickle_checkpoint(path)
    message = str(refused.value)
    # One line, no colour codes, and never torch's advice to switch the safety off.
    assert "\n" not in message and "\x1b" not in message
    assert "weights_only=False" not in message and "add_safe_globals" not in message
    with pytest.raises(CheckpointError):
        load_migm(path)
    assert not target.exists()


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty"),
    (b"hello, not a pickle\n", "is not a PyTorch checkpoint (torch.save files are zip archives; this holds text "
                                "starting 'hello, not a pickle"),
    (b"<!DOCTYPE html><html><body>404", "an HTML error page instead of the weights?"),
    (bytes(range(256)) * 4, "this holds bytes 00 01 02"),
    (b"\x80\x02" + bytes(range(40)), "was refused"),  # a pickle, but a broken one
])
def test_unreadable_checkpoints_get_one_clear_line(tmp_path, content, reason):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as refused:
        load_pickle_checkpoint(path)
    message = str(refused.value)
    assert reason in message and "\n" not in message and "weights_only=False" not in message, message
    if reason == "was refused":
        assert "shortcut_core.convert" in message


def test_published_shortcut_pickle_infers_blocks(tmp_path):
    migm = tiny_migm()
    config = ShortcutConfig(dim=32, width=32, n_block=2, heads=16)  # the published head count
    sc = migm.build_shortcut(config)
    path = tmp_path / "maskgit-shortcut.pth"
    torch.save(sc.state_dict(), path)
    back = load_shortcut(path, migm)
    assert back.config == config
    out = tmp_path / "sc.safetensors"
    assert convert_main([str(path), "-o", str(out)]) == 0
    assert read_safetensors_metadata(out)["config"]["n_block"] == 2


def test_shortcut_that_does_not_fit_is_refused(tmp_path):
    migm = tiny_migm()
    other = MaskGITShortcut(ShortcutConfig(dim=64, width=32, heads=4))
    path = tmp_path / "wide.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="width 64.*width 32"):
        load_shortcut(path, migm)


def test_fingerprint_mismatch(tmp_path):
    a, b = tiny_migm(seed=0), tiny_migm(seed=5)
    path = tmp_path / "sc.safetensors"
    save_shortcut(tiny_shortcut(a), path, base_fingerprint=a.fingerprint)
    with pytest.raises(CheckpointError, match="fingerprint .* allow_fingerprint_mismatch"):
        load_shortcut(path, b)
    loaded = load_shortcut(path, b, allow_fingerprint_mismatch=True)
    saved = tiny_shortcut(a).state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())


def test_wrong_files_are_named(tmp_path):
    migm = tiny_migm()
    sc_path = tmp_path / "sc.safetensors"
    save_shortcut(tiny_shortcut(migm), sc_path)
    with pytest.raises(CheckpointError, match="'shortcut' file .* not a MaskGIT base model"):
        load_migm(sc_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="junk.safetensors is not a readable"):
        load_migm(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_migm(tmp_path / "missing.pth")
    bad = tmp_path / "partial.safetensors"
    sd = dict(migm.model.state_dict())
    sd.pop("bias")
    from shortcut_core.checkpoints import save_safetensors
    save_safetensors(bad, sd, "migm", TINY_MASKGIT.to_dict(), family="maskgit")
    with pytest.raises(CheckpointError, match="missing 1 keys: bias"):
        load_migm(bad)


def test_fingerprint_ignores_load_dtype():
    from shortcut_core import fingerprint

    sd = {"w": torch.randn(64, 64).to(torch.bfloat16)}
    as_fp32 = {"w": sd["w"].float()}
    assert fingerprint(sd, {"a": 1}) == fingerprint(as_fp32, {"a": 1})
    assert fingerprint(sd, {"a": 1}) != fingerprint({"w": sd["w"] + 1}, {"a": 1})
    assert fingerprint(sd, {"a": 1}) != fingerprint(sd, {"a": 2})


def test_written_files_are_readable_by_others_and_keep_their_mode(tmp_path):
    """safetensors writes owner-only files; ours follow the umask, and a rewrite keeps the mode."""
    migm = tiny_migm()
    path = tmp_path / "tiny.safetensors"
    old = os.umask(0o022)
    try:
        save_migm(migm, path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    save_migm(migm, path)
    assert path.stat().st_mode & 0o777 == 0o640
