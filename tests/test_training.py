"""Recording trajectories and training shortcuts headless, on a tiny random-weight base."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shortcut_core import CheckpointError, generate, load_migm, load_shortcut, read_safetensors_metadata, save_migm
from shortcut_core import save_shortcut
from shortcut_core import reveal_counts
from tests.tiny import tiny_migm, tiny_shortcut
from training import train as train_mod
from training.data import PairStream, Recording
from training.pairs import MaskGITRecipe
from training.record import derive_seed, main as record_main, record_trajectories
from training.trajectories import MANIFEST, ManifestError, load_shard, read_manifest
from training.train import TrainingInterrupted, main as train_main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
REC = dict(steps=STEPS, batch_size=4, shard_size=4, show_progress=False, log=lambda msg: None)
TRAIN_FAST = ["--heads", "4", "--batch", "8", "--ema", "0.9", "--lr", "1e-3", "--val-fraction", "0.1",
              "--no-progress", "--log-every", "5"]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny base model, in memory and as the file the CLIs load."""
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    save_migm(tiny_migm(vqgan=False), path)
    return load_migm(path), path


@pytest.fixture(scope="module")
def recorded(base, tmp_path_factory):
    """12 trajectories in 3 shards, recorded in one go."""
    migm, _ = base
    out = tmp_path_factory.mktemp("rec") / "a"
    record_trajectories(migm, out, count=12, **REC)
    return out


@pytest.fixture(scope="module")
def dataset(base, tmp_path_factory):
    """The training set: 48 trajectories in 6 shards, through the CLI."""
    _, path = base
    out = tmp_path_factory.mktemp("data") / "traj"
    rc = record_main(["--migm", str(path), "--out", str(out), "--count", "48", "--steps", str(STEPS), "--batch", "8",
                      "--shard-size", "8", "--no-progress"])
    assert rc == 0
    return out


def test_format_manifest_and_tensors(base, recorded):
    migm, _ = base
    m = read_manifest(recorded)
    assert m["format"] == "migm-shortcut-trajectories" and m["family"] == "maskgit"
    assert m["base_fingerprint"] == migm.fingerprint and m["steps"] == STEPS
    assert m["branches"] == ["cond", "uncond"] and m["feature_shapes"] == {"cond": [17, 32], "uncond": [17, 32]}
    assert m["feature_dtype"] == "float16" and m["complete"] is True
    assert m["counts"]["trajectories"] == 12 and m["counts"]["pairs"] == 12 * 2 * (STEPS - 1)
    assert [s["file"] for s in m["shards"]] == [f"shard-00000{j}.safetensors" for j in range(3)]
    counts = reveal_counts(16, STEPS, "arccos")
    assert m["reveal_counts"] == counts
    sh = load_shard(recorded / "shard-000001.safetensors")
    assert sh["index"].tolist() == [4, 5, 6, 7]
    assert sh["cond.features"].shape == (4, STEPS, 17, 32) and sh["cond.features"].dtype == torch.float16
    assert sh["cond.condition"].tolist() == [1, 2, 0, 1] and sh["uncond.condition"].tolist() == [3] * 4
    ra = sh["cond.revealed_at"].long()
    assert torch.equal(ra, sh["uncond.revealed_at"].long()) and (ra[:, 16] == -1).all()
    assert [int((ra[0] == s).sum()) for s in range(STEPS)] == counts
    # Trajectories are reproducible from (run seed, i): the same batch through sample() gives the same tokens.
    again = generate(migm, [1, 2, 0, 1], steps=STEPS, seed=derive_seed(0, 1), decode=False, cfg=2.8)
    assert torch.equal(again.tokens.reshape(4, -1), sh["final_ids"].long())
    # Step 0's feature is the base model's on the all-[MASK] grid.
    f0 = migm.model.features(torch.full((4, 16), migm.config.mask_id), torch.tensor([1, 2, 0, 1]))
    torch.testing.assert_close(sh["cond.features"][:, 0].float(), f0.detach(), atol=2e-3, rtol=2e-3)


def test_bf16_features_and_one_branch_without_guidance(base, tmp_path):
    migm, _ = base
    record_trajectories(migm, tmp_path / "b", count=2, cfg=0.0, feature_dtype="bf16", **{**REC, "batch_size": 2})
    sh = load_shard(tmp_path / "b" / "shard-000000.safetensors")
    assert sh["cond.features"].dtype == torch.bfloat16 and "uncond.features" not in sh
    assert read_manifest(tmp_path / "b")["branches"] == ["cond"]


def test_recorder_resume_neither_duplicates_nor_skips(base, recorded, tmp_path):
    migm, _ = base
    out = tmp_path / "c"
    seen = []

    def progress(done, total):
        seen.append(done)

    r = record_trajectories(migm, out, count=12, progress=progress, should_stop=lambda: seen[-1] >= 4, **REC)
    assert r.interrupted and r.written == 4 and not r.complete
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "shard-000000.safetensors"]
    assert read_manifest(out)["counts"]["trajectories"] == 4
    (out / "shard-000001.safetensors.migm-partial").write_bytes(b"half a shard")  # a crash mid-write
    (out / "thesis draft.tmp").write_text("not the recorder's")
    with pytest.raises(ManifestError, match="--resume"):
        record_trajectories(migm, out, count=12, **REC)
    r = record_trajectories(migm, out, count=12, resume=True, **REC)
    assert r.complete and r.written == 8 and r.already == 4
    assert not list(out.glob("*.migm-partial"))  # its own leftovers are cleaned, nothing else
    assert (out / "thesis draft.tmp").read_text() == "not the recorder's"
    (out / "thesis draft.tmp").unlink()
    for j in range(3):
        name = f"shard-00000{j}.safetensors"
        assert same_tensors(load_shard(out / name), load_shard(recorded / name)), name
    index = torch.cat([load_shard(p)["index"] for p in sorted(out.glob("shard-*"))])
    assert index.tolist() == list(range(12))
    again = record_trajectories(migm, out, count=12, resume=True, **REC)
    assert again.written == 0 and again.complete
    with pytest.raises(ManifestError, match="steps"):
        record_trajectories(migm, out, count=12, resume=True, **{**REC, "steps": 5})


def test_recorder_ranks_record_disjoint_shards(base, recorded, tmp_path):
    migm, _ = base
    out = tmp_path / "d"
    r0 = record_trajectories(migm, out, count=12, rank=0, world_size=2, **REC)
    r1 = record_trajectories(migm, out, count=12, rank=1, world_size=2, resume=True, **REC)
    assert r0.shards_written == ["shard-000000.safetensors", "shard-000002.safetensors"]
    assert r1.shards_written == ["shard-000001.safetensors"]
    final = record_trajectories(migm, out, count=12, resume=True, **REC)  # one process completes the manifest
    assert final.written == 0 and final.complete
    for j in range(3):
        name = f"shard-00000{j}.safetensors"
        assert same_tensors(load_shard(out / name), load_shard(recorded / name))


def test_pair_inputs_from_revealed_steps():
    revealed = torch.tensor([[0, 2, 1, 1, -1], [1, 0, 2, 1, -1]])
    final_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    inputs, mask = MaskGITRecipe().pair_inputs(revealed, final_ids, 1, 4)
    assert inputs["new_positions"].tolist() == [[2, 3], [0, 3]]
    assert inputs["new_ids"].tolist() == [[7, 8], [9, 12]]
    assert inputs["mask_ratio"].tolist() == [0.25, 0.25]
    assert mask.tolist() == [[False, True, False, False, False], [False, False, True, False, False]]


def test_stream_covers_each_pair_once_per_epoch(dataset):
    rec = Recording(dataset)
    train_rows, val_rows = rec.split(0.1, 64)
    assert sum(map(len, val_rows.values())) == 5 and sum(map(len, train_rows.values())) == 43
    stream = PairStream(rec, train_rows, batch=8, window=2, seed=0, rank=0, device=torch.device("cpu"),
                        skip_bad=False)
    plan = stream.plan(0)
    pairs = [(k, j, branch, s) for _, branch, s, rows in plan for k, j in rows]
    assert len(pairs) == len(set(pairs)) == 43 * 2 * (STEPS - 1)
    assert plan == stream.plan(0) and plan != stream.plan(1)
    batch = stream.next()
    assert batch.prev.shape == batch.target.shape and batch.prev.dtype == torch.float32
    assert batch.loss_mask.shape == batch.prev.shape[:2]


def test_training_beats_copy_baseline(base, dataset, tmp_path):
    migm, path = base
    out = tmp_path / "sc.safetensors"
    rc = train_main(["--data", str(dataset), "--migm", str(path), "--out", str(out), "--iters", "160",
                     "--lr-decay-at", "120", "--val-every", "80", "--ckpt-every", "80", *TRAIN_FAST,
                     "--ema", "0.95", "--lr", "2e-3"])  # later flags override TRAIN_FAST
    assert rc == 0
    meta = read_safetensors_metadata(out)
    val = meta["info"]["metrics"]["val"]
    print(f"held-out MSE / copy-previous MSE = {val['mse_ratio']:.3f}; cosine {val['cos']:.4f} "
          f"(copy {val['copy_cos']:.4f})")
    assert val["mse_ratio"] < 0.5 and val["cos"] > val["copy_cos"]
    assert meta["base_fingerprint"] == migm.fingerprint
    assert set(meta["info"]) >= {"architecture", "training", "data", "metrics", "command"}
    assert meta["info"]["command"].startswith("python -m training.train --data")
    # The saved file is the EMA the validation measured, and it drives the sampler.
    shortcut = load_shortcut(out, migm)
    rec = Recording(dataset)
    _, val_rows = rec.split(0.1, 64)
    sums = train_mod.evaluate(shortcut, rec, val_rows, batch=8, device=torch.device("cpu"),
                              autocast=train_mod.nullcontext, skip_bad=False, log=print)
    assert abs(train_mod.summarize(sums)["mse_ratio"] - val["mse_ratio"]) < 1e-4
    res = generate(migm, [0, 1], steps=8, full_steps=3, shortcut=shortcut, seed=0, decode=False)
    assert res.stats.shortcut_steps == 5
    untrained = generate(migm, [0, 1], steps=8, full_steps=3, shortcut=migm.build_shortcut(shortcut.config).eval(),
                         seed=0, decode=False)
    assert not torch.equal(res.tokens, untrained.tokens)  # the trained weights, not just the wiring, drive it
    events = [json.loads(line)["event"] for line in (tmp_path / "sc.run" / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events.count("val") == 2 and events[-1] == "end"


def test_resume_after_interruption_is_exact(base, dataset, tmp_path):
    _, path = base
    common = ["--data", str(dataset), "--migm", str(path), "--iters", "12", "--ckpt-every", "4", "--val-every", "6",
              "--accum", "2", *TRAIN_FAST]
    assert train_main([*common, "--out", str(tmp_path / "a.safetensors")]) == 0
    b = ["--out", str(tmp_path / "b.safetensors")]
    with pytest.raises(TrainingInterrupted):
        train_main([*common, *b], should_stop=lambda it: it == 10)
    run_b = tmp_path / "b.run"
    assert sorted(p.name for p in run_b.glob("ckpt-*.json")) == ["ckpt-00000004.json", "ckpt-00000008.json"]
    assert train_main([*common, *b]) == 2  # refuses to start over an existing run without --resume
    assert train_main([*common, *b, "--resume"]) == 0
    assert same_tensors(load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors")))
    assert same_tensors(load_file(str(tmp_path / "a.run" / "ckpt-00000012.safetensors")),
                        load_file(str(run_b / "ckpt-00000012.safetensors")))
    steps = [json.loads(line)["step"] for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # records past the checkpoint were dropped, then redone
    assert train_main([*common, *b, "--resume", "--iters", "14", "--batch", "4"]) == 2  # not the same run


def test_two_process_gloo_run(base, dataset, tmp_path):
    _, path = base
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training.train",
           "--data", str(dataset), "--migm", str(path), "--out", str(out), "--iters", "6", "--device", "cpu",
           "--ckpt-every", "100", *TRAIN_FAST]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ddp.run"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt-")) == [
        "ckpt-00000006.json", "ckpt-00000006.safetensors"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("start") == 1  # rank 0 alone writes the log
    read = records[-1]["shards_read_by_rank"]
    assert len(read) == 2 and read[0] and read[1] and not set(read[0]) & set(read[1])
    assert set(read[0]) | set(read[1]) == {f"shard-00000{j}.safetensors" for j in range(6)}
    assert records[0]["exact"]["world_size"] == 2
    assert read_safetensors_metadata(out)["info"]["command"].startswith("torchrun --nproc_per_node=2")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_and_corrupt_shards(base, dataset, tmp_path, capsys):
    _, path = base
    data = _copy(dataset, tmp_path / "data")
    shard = data / "shard-000003.safetensors"
    blob = shard.read_bytes()
    shard.write_bytes(blob[: len(blob) // 2])
    common = ["--data", str(data), "--migm", str(path), "--iters", "4", *TRAIN_FAST]
    assert train_main([*common, "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "shard-000003.safetensors is damaged" in err and "--skip-bad-shards" in err
    assert train_main([*common, "--out", str(tmp_path / "y.safetensors"), "--skip-bad-shards"]) == 0
    info = read_safetensors_metadata(tmp_path / "y.safetensors")["info"]
    assert list(info["data"]["bad_shards"]) == ["shard-000003.safetensors"]

    # Flipped bytes inside the data pass the header check; the checksum catches them when the
    # shard is read, the run saves its progress, and a resume that skips the shard completes.
    data2 = _copy(dataset, tmp_path / "data2")
    shard = data2 / "shard-000005.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[-200:-100] = bytes(100)
    shard.write_bytes(bytes(blob))
    common = ["--data", str(data2), "--migm", str(path), "--iters", "40", "--ckpt-every", "1000", "--window", "1",
              "--out", str(tmp_path / "z.safetensors"), *TRAIN_FAST]
    assert train_main(common) == 2
    err = capsys.readouterr().err
    assert "shard-000005.safetensors is damaged" in err and "checksum" in err and "is saved in" in err
    saved = sorted((tmp_path / "z.run").glob("ckpt-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["step"] > 0  # stopped mid-run, progress kept
    assert train_main([*common, "--resume", "--skip-bad-shards"]) == 0
    assert (tmp_path / "z.safetensors").exists()


def test_fingerprint_mismatch(base, dataset, tmp_path, capsys):
    migm, path = base
    other_path = tmp_path / "other.safetensors"
    save_migm(tiny_migm(seed=3, vqgan=False), other_path)
    other = load_migm(other_path)
    common = ["--data", str(dataset), "--migm", str(other_path), "--iters", "2", *TRAIN_FAST]
    assert train_main([*common, "--out", str(tmp_path / "a.safetensors")]) == 2
    err = capsys.readouterr().err
    assert migm.fingerprint in err and other.fingerprint in err and "--allow-fingerprint-mismatch" in err
    out = tmp_path / "b.safetensors"
    assert train_main([*common, "--out", str(out), "--allow-fingerprint-mismatch"]) == 0
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_shortcut(out, other)  # the shortcut belongs to the recording's base model
    load_shortcut(out, other, allow_fingerprint_mismatch=True)
    load_shortcut(out, migm)
    with pytest.raises(ManifestError, match="base_fingerprint"):
        record_trajectories(other, dataset, count=48, resume=True, **{**REC, "batch_size": 8, "shard_size": 8})


def test_nan_loss_stops_and_keeps_last_good_checkpoint(base, dataset, tmp_path, capsys, monkeypatch):
    _, path = base
    calls = {"n": 0}
    real = train_mod.masked_mse

    def poisoned(pred, target, mask):
        calls["n"] += 1
        loss = real(pred, target, mask)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(train_mod, "masked_mse", poisoned)
    out = tmp_path / "n.safetensors"
    rc = train_main(["--data", str(dataset), "--migm", str(path), "--out", str(out), "--iters", "10",
                     "--ckpt-every", "2", *TRAIN_FAST])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "loss became nan at iteration 6" in err and "ckpt-00000004.json (iteration 4)" in err
    ckpt = load_file(str(tmp_path / "n.run" / "ckpt-00000004.safetensors"))
    assert all(torch.isfinite(v.float()).all() for v in ckpt.values())



def test_cli_resume_takes_settings_from_the_manifest(base, dataset, monkeypatch, capsys):
    _, path = base
    before = {p.name: p.stat().st_mtime_ns for p in dataset.glob("shard-*")}
    assert record_main(["--migm", str(path), "--out", str(dataset), "--resume", "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in dataset.glob("shard-*")} == before
    assert "0 trajectories" in capsys.readouterr().out
    monkeypatch.setattr("training.record.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 10, 10))
    assert record_main(["--migm", str(path), "--out", str(dataset), "--resume", "--count", "56", "--no-progress"]) == 2
    assert "free" in capsys.readouterr().err
    assert read_manifest(dataset)["num_trajectories"] == 48  # a refused run changes nothing


def test_lr_step_decay_and_masked_mse():
    assert [train_mod.lr_at(s, 1e-4, 0.1, [1000]) for s in (0, 999, 1000)] == [1e-4, 1e-4, 1e-4 * 0.1]
    pred, target = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [3.0, 3.0], [5.0, 5.0]]])
    assert train_mod.masked_mse(pred, target, torch.tensor([[True, False, True]])).item() == 13.0


def test_unconditional_recording_has_one_branch_and_the_null_class(base, tmp_path):
    migm, path = base
    out = tmp_path / "u"
    assert record_main(["--migm", str(path), "--out", str(out), "--classes", "none", "--count", "4", "--steps",
                        str(STEPS), "--batch", "4", "--shard-size", "4", "--cfg", "3", "--no-progress"]) == 0
    m = read_manifest(out)
    assert m["branches"] == ["cond"] and m["sampler"]["cfg"] == 0.0  # guidance has nothing to compare against
    sh = load_shard(out / "shard-000000.safetensors")
    assert sh["cond.condition"].tolist() == [migm.config.null_class] * 4
    again = generate(migm, "none", batch=4, steps=STEPS, seed=derive_seed(0, 0), decode=False)
    assert torch.equal(again.tokens.reshape(4, -1), sh["final_ids"].long())


def test_training_mixes_several_recordings(base, dataset, tmp_path):
    migm, path = base
    uncond = tmp_path / "uncond"
    record_trajectories(migm, uncond, count=8, classes="none", **{**REC, "batch_size": 8, "shard_size": 8})
    rec = Recording([dataset, uncond])
    assert rec.branches == ["cond", "uncond"] and rec.num_trajectories == 48 + 8
    assert rec.shard_branches(len(rec.shards) - 1) == ["cond"] and rec.data_id() != Recording(dataset).data_id()
    train_rows, val_rows = rec.split(0.1, 64)
    assert any(rec.shards[k]["part"] == 1 for k in {**train_rows, **val_rows})
    stream = PairStream(rec, train_rows, batch=8, window=10, seed=0, rank=0, device=torch.device("cpu"),
                        skip_bad=False)
    seen = {(b.branch, any("uncond" in s for s in b.shards)) for b in (stream.next() for _ in range(60))}
    assert ("cond", True) in seen and ("uncond", True) not in seen  # the uncond folder has no uncond branch
    out = tmp_path / "mixed.safetensors"
    assert train_main(["--data", str(dataset), str(uncond), "--migm", str(path), "--out", str(out), "--iters", "6",
                       *TRAIN_FAST]) == 0
    info = read_safetensors_metadata(out)["info"]
    assert info["data"]["path"] == [str(dataset), str(uncond)] and info["data"]["trajectories"] == 56
    other = tmp_path / "other_steps"
    record_trajectories(migm, other, count=4, **{**REC, "steps": STEPS - 1})
    with pytest.raises(ManifestError, match="steps"):
        Recording([dataset, other])


def test_rollout_batches_chain_the_recorded_pairs(dataset):
    rec = Recording(dataset)
    train_rows, _ = rec.split(0.1, 64)
    stream = PairStream(rec, train_rows, batch=4, window=2, seed=0, rank=0, device=torch.device("cpu"),
                        skip_bad=False, span=3)
    for _ in range(20):
        b = stream.next()
        assert b.span == min(3, STEPS - 1 - b.step)
        masks = [b.loss_mask, *(m for _, _, m in b.later)]
        # Each later pair's positions are a subset of the one before: masked only ever shrinks.
        assert all(bool((later <= earlier).all()) for earlier, later in zip(masks, masks[1:]))
        ratios = [b.inputs["mask_ratio"], *(i["mask_ratio"] for _, i, _ in b.later)]
        assert all(bool((r2 < r1).all()) for r1, r2 in zip(ratios, ratios[1:]))


def test_rollout_loss_tracks_chained_steps_better(base, dataset, tmp_path):
    """Trained on its own predictions, the shortcut's error after 3 chained steps is lower
    than the single-step-trained one's, at the same iterations and data."""
    _, path = base
    common = ["--data", str(dataset), "--migm", str(path), "--iters", "150", "--lr-decay-at", "", "--val-every",
              "150", "--val-chain", "3", "--seed", "1", *TRAIN_FAST, "--ema", "0.9", "--lr", "3e-3"]
    chained = {}
    for k in (1, 3):
        out = tmp_path / f"r{k}.safetensors"
        assert train_main([*common, "--out", str(out), "--rollout", str(k)]) == 0
        val = read_safetensors_metadata(out)["info"]["metrics"]["val"]
        chained[k] = val["chain"]["3"]["mse_ratio"]
        assert set(val["chain"]) == {"2", "3"} and val["chain"]["3"]["per_step"][0]["s"] == 2
        # The feature cache holds the chain's start: one step is copy-previous itself, three steps drift further.
        assert val["cache_ratio"] == pytest.approx(1.0)
        assert val["chain"]["3"]["cache_ratio"] > val["chain"]["2"]["cache_ratio"] > 1.0
    assert chained[3] < chained[1], chained


def test_kl_term_brings_the_heads_token_distributions_closer(base, dataset, tmp_path):
    """With the base head's KL in the loss, the predicted features give next-step token
    distributions closer to the base model's than MSE alone does, at the same iterations and data
    (single step; on this tiny model the chained error grows with the weight, see the ablation)."""
    _, path = base
    common = ["--data", str(dataset), "--migm", str(path), "--iters", "120", "--lr-decay-at", "", "--val-every",
              "120", "--val-chain", "2", "--seed", "1", *TRAIN_FAST, "--ema", "0.9", "--lr", "3e-3"]
    vals = {}
    for w in ("0", "0.5"):
        out = tmp_path / f"kl{w}.safetensors"
        assert train_main([*common, "--out", str(out), "--kl-weight", w]) == 0
        vals[w] = read_safetensors_metadata(out)["info"]["metrics"]["val"]
    assert all(v["kl"] < v["copy_kl"] for v in vals.values()), vals  # both beat copy-previous on tokens too
    assert vals["0.5"]["kl"] < 0.9 * vals["0"]["kl"], (vals["0.5"]["kl"], vals["0"]["kl"])


def test_kl_term_is_zero_on_the_target_and_trains_only_the_shortcut(base):
    migm, _ = base
    head = train_mod.head_logits_for(migm)
    target = torch.randn(2, 5, migm.config.hidden)  # the class slot (last) is never marked
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, False]])
    pred = target.clone().requires_grad_(True)
    mse_only = train_mod.step_loss(pred, target, mask)
    assert train_mod.step_loss(pred, target, mask, kl_weight=5.0, head_logits=head).item() == pytest.approx(
        mse_only.item(), abs=1e-6)
    moved = (target + 0.5 * torch.randn_like(target)).requires_grad_(True)
    loss = train_mod.step_loss(moved, target, mask, kl_weight=5.0, head_logits=head)
    assert loss > train_mod.step_loss(moved, target, mask) and loss.requires_grad
    loss.backward()
    assert moved.grad[~mask].abs().sum() == 0 and moved.grad[mask].abs().sum() > 0
    assert all(p.grad is None for p in migm.model.parameters())


def test_reverse_kl_punishes_confident_tokens_the_target_finds_unlikely(base):
    """KL(prediction || target): zero on the target, and larger than the forward KL for a
    prediction sure of a token the target gives little mass (what a confidence-ordered
    reveal keeps first); it trains the shortcut's positions only."""
    log_q = torch.log(torch.tensor([[0.90, 0.09, 0.01]]))
    assert train_mod.reverse_token_kl(log_q.clone(), log_q).item() == pytest.approx(0.0, abs=1e-7)
    sure_of_unlikely = torch.log(torch.tensor([[0.05, 0.05, 0.90]]))
    p = sure_of_unlikely.exp()
    expected = (p * (sure_of_unlikely - log_q)).sum().item()
    assert train_mod.reverse_token_kl(sure_of_unlikely, log_q).item() == pytest.approx(expected, rel=1e-5)
    assert train_mod.reverse_token_kl(sure_of_unlikely, log_q) > train_mod.token_kl(sure_of_unlikely, log_q)

    migm, _ = base
    head = train_mod.head_logits_for(migm)
    target = torch.randn(2, 5, migm.config.hidden)
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, False]])
    assert train_mod.step_loss(target, target, mask, kl_reverse_weight=5.0, head_logits=head).item() == pytest.approx(
        train_mod.step_loss(target, target, mask).item(), abs=1e-6)
    moved = (target + 0.5 * torch.randn_like(target)).requires_grad_(True)
    both = train_mod.step_loss(moved, target, mask, kl_weight=1.0, head_logits=head, kl_reverse_weight=2.0)
    forward_only = train_mod.step_loss(moved, target, mask, kl_weight=1.0, head_logits=head)
    assert both > forward_only
    both.backward()
    assert moved.grad[~mask].abs().sum() == 0 and moved.grad[mask].abs().sum() > 0


def test_reverse_kl_option_trains_and_is_recorded(base, dataset, tmp_path):
    _, path = base
    out = tmp_path / "rev.safetensors"
    assert train_main(["--data", str(dataset), "--migm", str(path), "--iters", "20", "--lr-decay-at", "",
                       "--val-every", "20", "--seed", "1", *TRAIN_FAST, "--out", str(out),
                       "--kl-reverse-weight", "0.5"]) == 0
    training = read_safetensors_metadata(out)["info"]["training"]
    assert training["kl_reverse_weight"] == 0.5 and "0.5 x reverse KL(head)" in training["loss"]


def test_train_refuses_bad_recipe_options(base, dataset, tmp_path, capsys):
    _, path = base
    common = ["--data", str(dataset), "--migm", str(path), "--out", str(tmp_path / "x.safetensors")]
    for flag, value in (("--rollout", "0"), ("--input-noise", "nan"), ("--cos-weight", "-1"), ("--val-chain", "0"),
                        ("--kl-weight", "inf"), ("--kl-reverse-weight", "-0.5")):
        assert train_main([*common, flag, value]) == 2
        assert flag in capsys.readouterr().err


def test_calibrate_writes_placements_into_the_file(base, dataset, tmp_path, capsys):
    from shortcut_core.placement import calibrated_indices
    from training.calibrate import main as calibrate_main

    migm, path = base
    sc = tmp_path / "sc.safetensors"
    assert train_main(["--data", str(dataset), "--migm", str(path), "--out", str(sc), "--iters", "120",
                       "--lr-decay-at", "", *TRAIN_FAST, "--ema", "0.9", "--lr", "3e-3", "--val-fraction", "0.25"]) == 0
    out = tmp_path / "sc_calibrated.safetensors"
    assert calibrate_main(["--data", str(dataset), "--migm", str(path), "--shortcut", str(sc), "--steps", str(STEPS),
                           "8", "--budgets", "2", "3", "--out", str(out), "--report", str(tmp_path / "cal.json")]) == 0
    printed = capsys.readouterr().out
    assert f"N={STEPS} B=2: calibrated" in printed and "carried over from N=6" in printed  # N=8 via the mask ratio
    before, after = load_file(str(sc)), load_file(str(out))
    assert same_tensors(before, after)  # weights unchanged
    shortcut = load_shortcut(out, migm)
    report = json.loads((tmp_path / "cal.json").read_text())
    for row in report["summary"]:
        assert calibrated_indices(shortcut, row["steps"], row["budget"]) == row["calibrated"]
        assert row["cost_calibrated"] <= row["cost_paper"] + 1e-12
    assert report["held_out"]["val_fraction"] == 0.25  # the split the training held out

    assert calibrate_main(["--data", str(dataset), "--migm", str(path), "--shortcut", str(sc), "--steps", "6",
                           "--budgets", "9"]) == 2

    # One regime's own placements, over the shared ones the file keeps; the data must be of that regime.
    regime_out = tmp_path / "sc_cond.safetensors"
    common = ["--data", str(dataset), "--migm", str(path), "--shortcut", str(out), "--steps", str(STEPS),
              "--budgets", "3", "--metric", "tokens", "--out", str(regime_out)]
    assert calibrate_main([*common, "--for-regime", "uncond"]) == 2
    assert "recordings of conditional sampling" in capsys.readouterr().err and not regime_out.exists()
    assert calibrate_main([*common, "--for-regime", "cond"]) == 0
    assert "for conditional sampling only" in capsys.readouterr().out
    placements = load_shortcut(regime_out, migm).info["placements"]
    assert placements["table"] == load_shortcut(out, migm).info["placements"]["table"]  # kept
    assert set(placements["by_regime"]) == {"cond"} and placements["by_regime_source"]["cond"]["metric"] == "tokens"
    cond_only = placements["by_regime"]["cond"][str(STEPS)]["3"]
    assert calibrated_indices(load_shortcut(regime_out, migm), STEPS, 3, "cond") == cond_only


def test_a_second_recorder_on_the_same_folder_is_refused(base, tmp_path):
    from training.record import RecordingLock

    migm, _ = base
    out = tmp_path / "locked"
    out.mkdir()
    held = RecordingLock(out)  # as a running recorder holds it
    with pytest.raises(ManifestError, match=r"is being recorded by pid \d+"):
        record_trajectories(migm, out, count=4, **REC)
    held.release()  # the holder ends (a crash drops the lock the same way)
    assert not (out / RecordingLock.NAME).exists()
    assert record_trajectories(migm, out, count=4, **REC).complete
    assert not (out / RecordingLock.NAME).exists()  # the finished folder holds the recording only


def test_outputs_never_overwrite_inputs(base, dataset, tmp_path, capsys):
    from shortcut_core.convert import main as convert_main

    migm, path = base
    common = ["--data", str(dataset), "--migm", str(path), "--iters", "2", *TRAIN_FAST]
    before = path.read_bytes()
    assert train_main([*common, "--out", str(path)]) == 2
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    assert train_main([*common, "--out", str(link)]) == 2
    assert train_main([*common, "--out", str(dataset / "shard-000000.safetensors")]) == 2
    assert "would overwrite" in capsys.readouterr().err and path.read_bytes() == before
    assert convert_main([str(path), "--base", str(path), "-o", str(path)]) == 2
    assert path.read_bytes() == before


def test_resume_falls_back_past_a_damaged_newest_checkpoint(base, dataset, tmp_path, capsys):
    _, path = base
    common = ["--data", str(dataset), "--migm", str(path), "--iters", "12", "--ckpt-every", "4", "--keep-ckpts", "0",
              "--val-every", "0", *TRAIN_FAST]
    assert train_main([*common, "--out", str(tmp_path / "whole.safetensors")]) == 0
    b = [*common, "--out", str(tmp_path / "b.safetensors")]
    with pytest.raises(TrainingInterrupted):
        train_main(b, should_stop=lambda it: it == 10)
    run = tmp_path / "b.run"
    newest = run / "ckpt-00000008.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated by a crash or a full disk
    capsys.readouterr()
    assert train_main([*b, "--resume"]) == 0
    assert "ckpt-00000008.json is damaged" in capsys.readouterr().out
    # Resumed from iteration 4 instead, so the run still ends exactly where the uninterrupted one did.
    assert same_tensors(load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "b.safetensors")))
    for p in run.glob("ckpt-*.safetensors"):
        p.write_bytes(b"")
    assert train_main([*b, "--resume"]) == 2
    assert "no older one is readable" in capsys.readouterr().err


def test_recorder_refuses_non_finite_settings(base, tmp_path, capsys):
    _, path = base
    out = tmp_path / "nan"
    assert record_main(["--migm", str(path), "--out", str(out), "--count", "2", "--cfg", "nan", "--no-progress"]) == 2
    assert "cfg must be a finite number" in capsys.readouterr().err and not (out / MANIFEST).exists()


def test_step_weights_have_mean_one_and_lean_where_asked():
    from training.train import step_weights

    counts = [1, 1, 2, 3, 5]  # tokens revealed at steps 0..4
    reveal, masked = step_weights("reveal", counts), step_weights("masked", counts)
    for w in (reveal, masked):
        assert len(w) == 4 and abs(sum(w) / 4 - 1) < 1e-12
    assert reveal == [1 / 2.75, 2 / 2.75, 3 / 2.75, 5 / 2.75]  # what the next step reveals
    assert masked == [11 / 8.5, 10 / 8.5, 8 / 8.5, 5 / 8.5]  # what is still masked then


def test_step_weighting_trains_the_weighted_steps_closer(base, dataset, tmp_path):
    """Weighting early pairs up (masked) lowers the held-out error there against equal weights;
    against each other, each weighting has the lower error at the end it leans to (same
    iterations and data)."""
    _, path = base
    common = ["--data", str(dataset), "--migm", str(path), "--iters", "120", "--lr-decay-at", "", "--val-every",
              "120", "--seed", "1", *TRAIN_FAST, "--ema", "0.9", "--lr", "3e-3"]
    per_step = {}
    for kind in ("none", "masked", "reveal"):
        out = tmp_path / f"w_{kind}.safetensors"
        assert train_main([*common, "--out", str(out), "--step-weight", kind]) == 0
        info = read_safetensors_metadata(out)["info"]
        per_step[kind] = [row["mse_ratio"] for row in info["metrics"]["val"]["per_step"]]
        assert kind == "none" or f"pairs weighted by step ({kind})" in info["training"]["loss"]
    masked, reveal = per_step["masked"], per_step["reveal"]
    assert masked[0] < per_step["none"][0], per_step
    assert masked[0] < reveal[0] and reveal[-1] < masked[-1], per_step


def test_on_policy_recording_follows_the_shortcut_and_labels_with_the_base(base, tmp_path, capsys):
    """Tokens as the shortcut samples them (B=2 of 6), features the base model's on every state
    visited, the policy in the manifest; a resume with another policy is refused."""
    migm, path = base
    shortcut = tiny_shortcut(migm)
    sc_path = tmp_path / "sc.safetensors"
    save_shortcut(shortcut, sc_path, base_fingerprint=migm.fingerprint)
    out = tmp_path / "onp"
    assert record_main(["--migm", str(path), "--out", str(out), "--count", "4", "--steps", str(STEPS), "--batch", "4",
                        "--shard-size", "4", "--no-progress", "--policy-shortcut", str(sc_path),
                        "--policy-full-steps", "2"]) == 0
    m = read_manifest(out)
    assert m["policy"]["full_step_indices"] == [0, 3] and m["policy"]["placement"] == "paper"
    sh = load_shard(out / "shard-000000.safetensors")
    classes = torch.tensor([0, 1, 2, 0])
    policy = load_shortcut(sc_path, migm)
    ran = generate(migm, classes.tolist(), steps=STEPS, full_steps=[0, 3], shortcut=policy, seed=derive_seed(0, 0),
                   decode=False, **m["sampler"])
    final = sh["final_ids"].long()
    assert torch.equal(ran.tokens.reshape(4, -1), final)
    plain = generate(migm, classes.tolist(), steps=STEPS, seed=derive_seed(0, 0), decode=False, **m["sampler"])
    assert not torch.equal(plain.tokens.reshape(4, -1), final)  # the shortcut, not the base, chose the tokens
    ra = sh["cond.revealed_at"].long()[:, :16]
    for step in range(STEPS):
        tokens = torch.where(ra < step, final, torch.full_like(final, migm.config.mask_id))
        for branch, cls in (("cond", classes), ("uncond", torch.full_like(classes, migm.config.null_class))):
            truth = migm.model.features(tokens, cls).detach()
            torch.testing.assert_close(sh[f"{branch}.features"][:, step].float(), truth, atol=3e-3, rtol=3e-3)
    capsys.readouterr()
    assert record_main(["--migm", str(path), "--out", str(out), "--resume", "--no-progress",
                        "--policy-shortcut", str(sc_path), "--policy-full-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "policy" in err and "[0, 3]" in err
    assert record_main(["--migm", str(path), "--out", str(tmp_path / "x"), "--count", "4", "--no-progress",
                        "--policy-full-steps", "2"]) == 2
    assert "--policy-full-steps needs --policy-shortcut" in capsys.readouterr().err
    assert record_main(["--migm", str(path), "--out", str(tmp_path / "y"), "--count", "4", "--steps", str(STEPS),
                        "--no-progress", "--policy-shortcut", str(sc_path), "--policy-full-steps", "2",
                        "--policy-placement", "calibrated"]) == 2
    assert "no calibrated placement for N=6, B=2" in capsys.readouterr().err
