"""Bad input, table-driven: every case ends in a named error of the library's kinds, touching no other file.

One row per case: what a careless or hostile caller passes to ``generate``, the loaders and
both CLIs, the exception it must raise (``ValueError``/``TypeError``/``CheckpointError``, or
exit status 2 with one line on stderr for a CLI) and words the message must hold: the
input's name, so the user knows what to change.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shortcut_core import CheckpointError, generate, load_migm, load_shortcut, save_migm, save_shortcut
from shortcut_core.checkpoints import read_safetensors_metadata
from tests.tiny import tiny_migm, tiny_shortcut
from training.record import main as record_main
from training.train import main as train_main

CLEAN = (ValueError, TypeError, CheckpointError)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny base, its shortcut, a small recording, and damaged variants of each file kind."""
    root = tmp_path_factory.mktemp("bad")
    base = root / "m.safetensors"
    save_migm(tiny_migm(), base)
    migm = load_migm(base)
    sc = root / "sc.safetensors"
    save_shortcut(tiny_shortcut(migm), sc, base_fingerprint=migm.fingerprint)
    rec = root / "rec"
    assert record_main(["--migm", str(base), "--out", str(rec), "--count", "8", "--steps", "4", "--batch", "4",
                        "--no-progress"]) == 0

    (root / "empty.pth").write_bytes(b"")
    (root / "text.pth").write_text("not weights\n")
    (root / "page.ckpt").write_text("<!DOCTYPE html><html>404</html>")
    (root / "random.ckpt").write_bytes(bytes((i * 37 + 7) % 256 for i in range(256)))
    (root / "random.safetensors").write_bytes(bytes((i * 37 + 7) % 256 for i in range(256)))
    (root / "broken_pickle.pth").write_bytes(b"\x80\x02" + bytes(range(40)))
    with zipfile.ZipFile(root / "plain.pth", "w") as z:
        z.writestr("notes.txt", "a zip, not a checkpoint")
    full = root / "full.pth"
    torch.save({"w": torch.zeros(3)}, full)
    (root / "truncated.pth").write_bytes(full.read_bytes()[: full.stat().st_size // 2])

    meta = {"shortcut_core.format": "1", "shortcut_core.family": "maskgit", "shortcut_core.kind": "migm"}
    save_file({"a": torch.zeros(2)}, str(root / "no_config.safetensors"), metadata=meta)
    save_file({"a": torch.zeros(2)}, str(root / "bad_json.safetensors"),
              metadata={**meta, "shortcut_core.config": "{not json"})
    tensors = load_migm_tensors(base)
    config = read_safetensors_metadata(base)["config"]
    raw_meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in
                {f"shortcut_core.{k}": v for k, v in read_safetensors_metadata(base).items()}.items()}
    for name, field, value in (("negative", "hidden", -5), ("text_field", "hidden", "abc"), ("bool_field", "depth", True),
                               ("float_field", "grid", 4.5), ("unknown_field", "colour", 3)):
        save_file(tensors, str(root / f"{name}.safetensors"),
                  metadata={**raw_meta, "shortcut_core.config": json.dumps({**config, field: value})})
    return {"root": root, "base": base, "migm": migm, "sc": sc, "rec": rec}


def load_migm_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def snapshot(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# (case id, call(files) -> anything, exception type, words the message must hold)
def g(**kw):
    return lambda f: generate(f["migm"], **{"classes": [0], "steps": 4, **kw})


def gs(**kw):
    return lambda f: generate(f["migm"], **{"classes": [0], "steps": 4, "shortcut": load_shortcut(f["sc"], f["migm"]),
                                            **kw})


LIBRARY = [
    ("class float", g(classes=[1.5]), TypeError, "classes"),
    ("class bool", g(classes=[True]), TypeError, "classes"),
    ("no class", g(classes=[]), ValueError, "classes"),
    ("class negative", g(classes=[-1]), ValueError, "classes"),
    ("class too large", g(classes=[10 ** 9]), ValueError, "classes"),
    ("huge class range", g(classes="0-99999999"), ValueError, "class range"),
    ("unknown class name", g(classes=["a red shoe"]), ValueError, "class"),
    ("steps 0", g(steps=0), ValueError, "steps"),
    ("steps negative", g(steps=-3), ValueError, "steps"),
    ("steps float", g(steps=2.5), TypeError, "steps"),
    ("steps bool", g(steps=True), TypeError, "steps"),
    ("steps text", g(steps="8"), TypeError, "steps"),
    ("seed float", g(seed=1.5), TypeError, "seed"),
    ("seed text", g(seed="x"), TypeError, "seed"),
    ("full steps bool", gs(full_steps=True), TypeError, "full_steps"),
    ("full steps float", gs(full_steps=2.0), TypeError, "full_steps"),
    ("full steps 0", gs(full_steps=0), ValueError, "full steps"),
    ("B > N", gs(full_steps=9), ValueError, "full steps B=9"),
    ("full-step list float", gs(full_steps=[0, 2.5]), TypeError, "full-step list"),
    ("full-step list without 0", gs(full_steps=[1, 2]), ValueError, "must start at 0"),
    ("full-step list repeated", gs(full_steps=[0, 0, 2]), ValueError, "strictly increasing"),
    ("full-step list past N", gs(full_steps=[0, 7]), ValueError, "outside 0..3"),
    ("full-step list text", gs(full_steps="0,a"), ValueError, "comma-separated integers"),
    ("cfg NaN", g(cfg=float("nan")), ValueError, "cfg"),
    ("cfg inf", g(cfg=float("inf")), ValueError, "cfg"),
    ("cfg text", g(cfg="2"), ValueError, "cfg"),
    ("sm_temp negative", g(sm_temp=-1.0), ValueError, "sm_temp"),
    ("r_temp NaN", g(r_temp=float("nan")), ValueError, "r_temp"),
    ("option typo", g(cfgg=1.0), TypeError, "'cfgg'"),
    ("unknown schedule", g(schedule="fast"), ValueError, "schedule"),
    ("unknown randomize", g(randomize="sometimes"), ValueError, "randomize"),
    ("unknown placement", gs(full_steps=2, placement="best"), ValueError, "placement"),
    ("prompts to a class model", lambda f: generate(f["migm"], prompts=["a cat"], steps=4), ValueError, "prompts"),
    ("shortcut path instead of model", g(full_steps=2, shortcut="sc.safetensors"), TypeError, "shortcut"),
    ("shortcut of another dtype",
     lambda f: generate(load_migm(f["base"], dtype=torch.bfloat16), classes=[0], steps=4, full_steps=2,
                        shortcut=load_shortcut(f["sc"], f["migm"])), ValueError, "dtype"),
    ("missing file", lambda f: load_migm(f["root"] / "nope.safetensors"), CheckpointError, "not found"),
    ("shortcut folder", lambda f: load_shortcut(f["root"], f["migm"]), CheckpointError, "not found"),
    ("empty .pth", lambda f: load_migm(f["root"] / "empty.pth"), CheckpointError, "is empty"),
    ("text renamed .pth", lambda f: load_migm(f["root"] / "text.pth"), CheckpointError, "not a PyTorch checkpoint"),
    ("HTML page as .ckpt", lambda f: load_migm(f["root"] / "page.ckpt"), CheckpointError, "HTML error page"),
    ("random bytes .ckpt", lambda f: load_migm(f["root"] / "random.ckpt"), CheckpointError, "not a PyTorch checkpoint"),
    ("random bytes .safetensors", lambda f: load_migm(f["root"] / "random.safetensors"), CheckpointError,
     "not a readable .safetensors"),
    ("broken pickle", lambda f: load_migm(f["root"] / "broken_pickle.pth"), CheckpointError, "was refused"),
    ("plain zip", lambda f: load_migm(f["root"] / "plain.pth"), CheckpointError, "not a PyTorch checkpoint"),
    ("truncated torch zip", lambda f: load_migm(f["root"] / "truncated.pth"), CheckpointError, "truncated.pth"),
    ("weights of no known model", lambda f: load_migm(f["root"] / "full.pth"), CheckpointError, "full.pth"),
    ("kind without config", lambda f: load_migm(f["root"] / "no_config.safetensors"), CheckpointError, "no config"),
    ("config not JSON", lambda f: load_migm(f["root"] / "bad_json.safetensors"), CheckpointError, "unreadable config"),
    ("negative config size", lambda f: load_migm(f["root"] / "negative.safetensors"), ValueError, "'hidden'"),
    ("text config size", lambda f: load_migm(f["root"] / "text_field.safetensors"), ValueError, "'hidden'"),
    ("boolean config size", lambda f: load_migm(f["root"] / "bool_field.safetensors"), ValueError, "'depth'"),
    ("fractional config size", lambda f: load_migm(f["root"] / "float_field.safetensors"), ValueError, "'grid'"),
    ("unknown config field", lambda f: load_migm(f["root"] / "unknown_field.safetensors"), ValueError, "colour"),
    ("shortcut given as base", lambda f: load_migm(f["sc"]), CheckpointError, "not a MaskGIT base model"),
    ("base given as shortcut", lambda f: load_shortcut(f["base"], f["migm"]), CheckpointError, "not a shortcut"),
    ("device typo", lambda f: load_migm(f["base"], device="gpu0"), ValueError, "device 'gpu0'"),
    ("device meta", lambda f: load_migm(f["base"], device="meta"), ValueError, "meta"),
    ("integer dtype", lambda f: load_migm(f["base"], dtype=torch.int64), TypeError, "dtype"),
    ("dtype typo", lambda f: load_migm(f["base"], dtype="half-ish"), TypeError, "dtype"),
]
if not torch.cuda.is_available():
    LIBRARY.append(("cuda without a GPU", lambda f: load_migm(f["base"], device="cuda"), ValueError, "no CUDA GPU"))


def train_args(f, tmp, *extra):
    return ["--data", str(f["rec"]), "--migm", str(f["base"]), "--out", str(tmp / "out.safetensors"), "--iters", "2",
            "--no-progress", *extra]


def record_args(f, tmp, *extra):
    return ["--migm", str(f["base"]), "--out", str(tmp / "rec"), "--count", "4", "--steps", "4", "--no-progress", *extra]


CLI = [(f"train {' '.join(extra)}", train_main, train_args, extra, words) for extra, words in [
    (("--lr-decay-at", "abc"), "--lr-decay-at"), (("--width", "0"), "--width"), (("--window", "0"), "--window"),
    (("--val-every", "-1"), "--val-every"), (("--ckpt-every", "-3"), "--ckpt-every"),
    (("--keep-ckpts", "-1"), "--keep-ckpts"), (("--lr", "nan"), "--lr"), (("--lr", "-1"), "--lr"),
    (("--grad-clip", "nan"), "--grad-clip"), (("--dropout", "2"), "--dropout"), (("--ema", "1"), "--ema"),
    (("--val-fraction", "1.5"), "--val-fraction"), (("--batch", "0"), "--batch"), (("--threads", "0"), "--threads"),
    (("--kl-weight", "inf"), "--kl-weight"), (("--rollout", "0"), "--rollout"), (("--device", "gpu0"), "--device"),
    (("--heads", "5"), "--heads"), (("--out", "/proc/no_such_place/x.safetensors"), "/proc/no_such_place"),
]] + [(f"record {' '.join(extra)}", record_main, record_args, extra, words) for extra, words in [
    (("--cfg", "nan"), "cfg"), (("--r-temp", "inf"), "r_temp"), (("--classes", "0-99999999"), "class range"),
    (("--classes", "a red shoe"), "class"), (("--steps", "0"), "steps"), (("--count", "0"), "count"),
    (("--batch", "0"), "batch"), (("--device", "gpu0"), "--device"), (("--shard-size", "3", "--batch", "2"), "shard"),
    (("--out", "/proc/no_such_place/rec"), "/proc/no_such_place"),
]]
if not torch.cuda.is_available():
    CLI += [("train --device cuda", train_main, train_args, ("--device", "cuda"), "no CUDA GPU"),
            ("record --device cuda", record_main, record_args, ("--device", "cuda"), "no CUDA GPU")]

@pytest.mark.parametrize("name, call, kind, words", LIBRARY, ids=[c[0] for c in LIBRARY])
def test_library_refuses_by_name(files, name, call, kind, words):
    before = snapshot(files["root"])
    with pytest.raises(CLEAN) as caught:
        call(files)
    assert isinstance(caught.value, kind), f"{type(caught.value).__name__}: {caught.value}"
    assert words in str(caught.value)
    assert snapshot(files["root"]) == before  # a refusal touches no file


@pytest.mark.parametrize("name, main, args, extra, words", CLI, ids=[c[0] for c in CLI])
def test_clis_refuse_with_one_line_and_status_2(files, tmp_path, capsys, name, main, args, extra, words):
    before = snapshot(files["root"])
    rc = main(args(files, tmp_path, *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert snapshot(files["root"]) == before
    # At most the run's own log: no output, no checkpoint, nothing a later run would have to resume.
    assert not (tmp_path / "out.safetensors").exists() and not list(tmp_path.glob("out.run/ckpt-*"))

