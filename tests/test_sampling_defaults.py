"""A model file's recommended sampling settings: shown, changed with a reason, used by generate()."""
import json

import pytest

from shortcut_core import generate, load_migm, load_shortcut, read_safetensors_metadata, save_migm, save_shortcut
from shortcut_core.maskgit_family import checked_sampling_options
from training.sampling_defaults import main
from tests.tiny import tiny_migm, tiny_shortcut


@pytest.fixture()
def files(tmp_path):
    migm = tiny_migm()
    path = tmp_path / "base.safetensors"
    save_migm(migm, path, info={"sampling_defaults": {"cfg": 2.0, "r_temp": 3.0}})
    sc_path = tmp_path / "sc.safetensors"
    save_shortcut(tiny_shortcut(migm), sc_path, base_fingerprint=migm.fingerprint)
    return path, sc_path


def test_set_changes_what_generate_does_and_keeps_the_weights(files, capsys):
    path, sc_path = files
    before = load_migm(path)
    old = generate(before, [0, 1], steps=4, seed=3, decode=False).tokens
    assert main([str(path), "--set", "r_temp=9", "schedule=cosine", "--why", "a test"]) == 0
    after = load_migm(path)
    assert after.fingerprint == before.fingerprint
    load_shortcut(sc_path, after)  # still the base model the shortcut was trained for
    assert after.sampling_defaults["r_temp"] == 9.0 and after.sampling_defaults["schedule"] == "cosine"
    assert after.sampling_defaults["cfg"] == 2.0  # untouched settings stay
    new = generate(after, [0, 1], steps=4, seed=3, decode=False).tokens
    explicit = generate(before, [0, 1], steps=4, seed=3, decode=False, r_temp=9.0, schedule="cosine").tokens
    assert (new == explicit).all() and not (new == old).all()
    history = read_safetensors_metadata(path)["info"]["sampling_defaults_history"]
    assert history == [{"from": {"cfg": 2.0, "r_temp": 3.0}, "to": {"cfg": 2.0, "r_temp": 9.0, "schedule": "cosine"},
                        "why": "a test", "command": f"python -m training.sampling_defaults {path} --set r_temp=9 "
                                                    f"schedule=cosine --why a test"}]
    capsys.readouterr()
    assert main([str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["file"]["r_temp"] == 9.0 and shown["in effect"]["randomize"] == "linear"


def test_out_writes_a_copy(files, tmp_path):
    path, _ = files
    out = tmp_path / "copy.safetensors"
    assert main([str(path), "--set", "cfg=1.5", "--why", "x", "--out", str(out)]) == 0
    assert load_migm(out).sampling_defaults["cfg"] == 1.5 and load_migm(path).sampling_defaults["cfg"] == 2.0


@pytest.mark.parametrize("args, message", [
    (["--set", "r_temp=4.5"], "--set needs --why"),
    (["--set", "r_temp=-1", "--why", "x"], "temperatures must be >= 0"),
    (["--set", "r_temp=hot", "--why", "x"], "r_temp must be a number"),
    (["--set", "guidance=2", "--why", "x"], "unknown MaskGIT sampling option(s) guidance"),
    (["--set", "schedule=zigzag", "--why", "x"], "unknown reveal schedule 'zigzag'"),
    (["--set", "r_temp", "--why", "x"], "--set takes KEY=VALUE"),
])
def test_bad_settings_are_refused_and_the_file_is_kept(files, capsys, args, message):
    path, _ = files
    before = path.read_bytes()
    assert main([str(path), *args]) == 2
    assert message in capsys.readouterr().err
    assert path.read_bytes() == before


def test_a_shortcut_file_is_not_a_base_model(files, capsys):
    _, sc_path = files
    assert main([str(sc_path), "--set", "cfg=1", "--why", "x"]) == 2
    assert "is a shortcut file, not a migm one" in capsys.readouterr().err


def test_checked_options_convert_and_refuse():
    assert checked_sampling_options({"cfg": 2, "randomize": "none"}) == {"cfg": 2.0, "randomize": "none"}
    with pytest.raises(ValueError, match="randomize must be"):
        checked_sampling_options({"randomize": "sometimes"})
    with pytest.raises(ValueError, match="cfg must be a finite number"):
        checked_sampling_options({"cfg": float("nan")})
