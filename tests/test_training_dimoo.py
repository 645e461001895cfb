"""Recording Lumina-DiMOO trajectories and training a DiMOO shortcut, on the tiny fake checkpoint folder."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from shortcut_core import generate, load_migm, load_shortcut, read_safetensors_metadata, sample
from shortcut_core.dimoo.config import DiMOOShortcutConfig
from shortcut_core.dimoo.fake import write_fake_dimoo_folder
from shortcut_core.dimoo.family import keep_masked
from shortcut_core.dimoo.prompt import build_sequence
from shortcut_core.dimoo.shortcut import DiMOOShortcut
from training import train as train_mod
from training.data import Recording, gather_pairs
from training.pairs import DiMOORecipe
from training.record import derive_seed, main as record_main, record_trajectories
from training.trajectories import MANIFEST, ManifestError, load_shard, read_manifest
from training.train import ema_copy, main as train_main

PROMPTS = ["a red cat", "blue dog on green grass", "a cat"]  # three prompt lengths
STEPS = 8
SIZE = dict(height=64, width=64)  # 4 x 4 image tokens
L = 16
REC = dict(prompts=PROMPTS, steps=STEPS, **SIZE, show_progress=False, log=lambda msg: None)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_fake_dimoo_folder(tmp_path_factory.mktemp("dimoo") / "Lumina-DiMOO-fake", seed=0)


@pytest.fixture(scope="module")
def migm(folder):
    return load_migm(folder)


@pytest.fixture(scope="module")
def batched(migm, tmp_path_factory):
    """Six trajectories sampled three at a time (prompts of different lengths share a batch)."""
    out = tmp_path_factory.mktemp("rec") / "batched"
    record_trajectories(migm, out, count=6, batch_size=3, shard_size=3, **REC)
    return out


@pytest.fixture(scope="module")
def dataset(folder, tmp_path_factory):
    """The training set, through the CLI: 36 trajectories, batch 1 (one seed per trajectory), 12 shards."""
    root = tmp_path_factory.mktemp("data")
    prompt_file = root / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS[:2]) + "\n\n" + PROMPTS[2] + "\n")  # a blank line is skipped
    out = root / "traj"
    rc = record_main(["--migm", str(folder), "--out", str(out), "--prompts", str(prompt_file), "--count", "36",
                      "--steps", str(STEPS), "--cfg", "4.0", "--temperature", "1.0", "--height", "64", "--width", "64",
                      "--shard-size", "3", "--no-progress", "--threads", "1"])
    assert rc == 0
    return out


def test_manifest_and_shard_layout(migm, batched, dataset):
    m = read_manifest(dataset)
    tok = migm.tokenizer
    cond_lens = [len(tok.conditional(p)) for p in PROMPTS]
    uncond_len = len(tok.unconditional())
    assert len(set(cond_lens)) == 3
    block = 4 * 5 + 4
    assert m["family"] == "dimoo" and m["base_fingerprint"] == migm.fingerprint and m["steps"] == STEPS
    assert m["sampler"] == {"cfg": 4.0, "temperature": 1.0, "height": 64, "width": 64}
    assert m["conditions"] == {"kind": "prompts", "prompts": PROMPTS, "order": "cycle"}
    assert m["branches"] == ["cond", "uncond"] and m["batch_size"] == 1
    assert m["feature_shapes"] == {"cond": [max(cond_lens) + block, 32], "uncond": [uncond_len + block, 32]}
    assert m["num_image_tokens"] == L and m["image_grid"] == [4, 4] and "padding" in m["layout"]
    keep = [L] + [keep_masked(s, STEPS, L) for s in range(STEPS)]
    assert m["reveal_counts"] == [keep[s] - keep[s + 1] for s in range(STEPS)]
    assert m["complete"] and m["counts"]["trajectories"] == 36 and m["counts"]["pairs"] == 36 * 2 * (STEPS - 1)
    assert len(m["shards"]) == 12

    sh = load_shard(dataset / "shard-000001.safetensors")  # trajectories 3, 4, 5
    assert sh["index"].tolist() == [3, 4, 5]
    assert sh["seed"].tolist() == [derive_seed(0, i) for i in (3, 4, 5)]  # batch 1: a seed per trajectory
    assert sh["cond.condition"].tolist() == [0, 1, 2] and sh["uncond.condition"].tolist() == [-1] * 3
    assert sh["cond.features"].shape == (3, STEPS, max(cond_lens) + block, 32)
    assert sh["cond.features"].dtype == torch.float16 and sh["cond.ids"].dtype == torch.int32
    for row, p in enumerate(PROMPTS):
        n = int(sh["cond.length"][row])
        assert n == cond_lens[row] + block and int(sh["cond.prefix_len"][row]) == cond_lens[row]
        ids = sh["cond.ids"][row].long()
        assert ids[:cond_lens[row]].tolist() == tok.conditional(p)  # the prompt's token ids
        assert (ids[n:] == migm.config.pad_id).all() and (sh["cond.revealed_at"][row, n:] == -1).all()
        assert (sh["cond.features"][row, :, n:] == 0).all()
        seq = build_sequence(tok.conditional(p), 4, 4, migm.config)
        ra = sh["cond.revealed_at"][row].long()
        assert ((ra >= 0).nonzero()[:, 0] == seq.image_positions).all()
        assert torch.equal(ids[seq.image_positions] - migm.config.image_offset, sh["final_ids"][row].long())
        useq = build_sequence(tok.unconditional(), 4, 4, migm.config)
        ura = sh["uncond.revealed_at"][row].long()
        assert torch.equal(ura[useq.image_positions], ra[seq.image_positions])  # same steps, own positions
        assert sh["uncond.ids"][row, :uncond_len].tolist() == tok.unconditional()
        assert [int((ra == s).sum()) for s in range(STEPS)] == m["reveal_counts"]
        # Trajectory 3 + row is reproducible from (run seed, its index) alone.
        again = generate(migm, prompts=[p], steps=STEPS, seed=derive_seed(0, 3 + row), decode=False, **SIZE)
        assert torch.equal(again.tokens.reshape(-1), sh["final_ids"][row].long())
        # Step 0's feature is the base model's on the all-[MASK] sequence.
        f0 = migm.model.features(seq.ids[None])[0]
        torch.testing.assert_close(sh["cond.features"][row, 0, :n].float(), f0.detach(), atol=2e-3, rtol=2e-3)

    # A batch of three prompt lengths stores exactly the padded layout (features zero past each length).
    b = load_shard(batched / "shard-000000.safetensors")
    assert b["seed"].tolist() == [derive_seed(0, 0)] * 3
    for row in range(3):
        n = int(b["cond.length"][row])
        assert (b["cond.features"][row, :, n:] == 0).all() and (b["cond.revealed_at"][row, n:] == -1).all()
    assert (b["uncond.length"] == uncond_len + block).all()


def test_pairs_give_exactly_the_sampling_time_shortcut_inputs(migm, batched):
    """The key check: a recorded pair (s -> s+1) feeds the shortcut what sampling would at step s+1."""
    live = []

    def grab(info):
        state = info.state
        masked = torch.zeros_like(state.revealed_at, dtype=torch.bool)  # cond layout
        masked.scatter_(1, state.cond_image_pos, state.image == migm.config.mask_id)
        umasked = torch.zeros_like(state.uncond_template, dtype=torch.bool)
        umasked.scatter_(1, state.uncond_image_pos, state.image == migm.config.mask_id)
        live.append({"feats": [f.clone() for f in info.feats], "inputs": migm.shortcut_inputs(state),
                     "masked": [masked, umasked]})

    res = sample(migm, PROMPTS, steps=STEPS, seed=derive_seed(0, 0), callback=grab, decode=False, cfg=4.0,
                 temperature=1.0, **SIZE)
    rec = Recording(batched)
    cache = {0: rec.load(0)}
    assert torch.equal(res.tokens.reshape(3, -1), cache[0]["final_ids"].long())
    torch.manual_seed(5)
    shortcut = migm.build_shortcut(DiMOOShortcutConfig.for_base(migm.config)).eval()
    torch.nn.init.normal_(shortcut.proj_out.weight, std=0.5)
    rows = [(0, 0), (0, 1), (0, 2)]
    for s in range(STEPS - 1):
        for bi, branch in enumerate(("cond", "uncond")):
            pb = gather_pairs(rec, cache, rows, branch, s, CPU)
            want = live[s]["inputs"][bi]
            assert set(pb.inputs) == set(want)
            for key, value in want.items():
                got = pb.inputs[key]
                if value is None:
                    assert got is None, (s, branch, key)
                else:
                    assert got.dtype == value.dtype and torch.equal(got, value), (s, branch, key)
            assert torch.equal(pb.loss_mask, live[s]["masked"][bi]), (s, branch)  # still masked after step s
            valid = want["seq_valid"] if want["seq_valid"] is not None else torch.ones(pb.prev.shape[:2], dtype=bool)
            prev, nxt = live[s]["feats"][bi], live[s + 1]["feats"][bi]
            assert pb.prev.shape == prev.shape
            torch.testing.assert_close(pb.prev[valid], prev[valid], atol=2e-3, rtol=2e-3)
            torch.testing.assert_close(pb.target[valid], nxt[valid], atol=2e-3, rtol=2e-3)
            with torch.inference_mode():
                a = shortcut(pb.prev, **pb.inputs)
                b = shortcut(prev, **want)
            torch.testing.assert_close(a[valid], b[valid], atol=1e-2, rtol=1e-2)
        cond_new, uncond_new = live[s]["inputs"]
        r = uncond_new["new_positions"].shape[1]
        for i, pl in enumerate(cache[0]["cond.prefix_len"].tolist()):
            # The same image tokens, at each branch's own positions (the prompts differ in length).
            assert torch.equal(cond_new["new_ids"][i, pl:pl + r], uncond_new["new_ids"][i])
            assert (cond_new["new_positions"][i, pl:pl + r] != uncond_new["new_positions"][i]).all()


def test_pair_inputs_cond_prefix_and_own_positions():
    """Prompt prefixes of 3 and 4 tokens, then BOA, 3 image tokens, EOA; row 0 is padded to row 1's length."""
    revealed = torch.tensor([[-1, -1, -1, -1, 0, 1, 0, -1, -1], [-1, -1, -1, -1, -1, 1, 0, 0, -1]])
    ids = torch.tensor([[7, 8, 9, 5, 100, 101, 102, 6, 0], [7, 8, 9, 9, 5, 200, 201, 202, 6]])
    final_ids = torch.tensor([[0, 1, 2], [0, 1, 2]])
    fields = dict(ids=ids, length=torch.tensor([8, 9]), prefix_len=torch.tensor([3, 4]))
    inputs, mask = DiMOORecipe().pair_inputs(revealed, final_ids, 0, 3, branch="cond", **fields)
    assert inputs["new_positions"].tolist() == [[0, 1, 2, 4, 6, 0], [0, 1, 2, 3, 6, 7]]
    assert inputs["new_valid"].tolist() == [[True] * 5 + [False], [True] * 6]
    assert inputs["new_ids"].tolist() == [[7, 8, 9, 100, 102, 7], [7, 8, 9, 9, 201, 202]]
    assert inputs["seq_valid"].tolist() == [[True] * 8 + [False], [True] * 9]
    assert inputs["mask_ratio"].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert mask.tolist() == [[False] * 5 + [True] + [False] * 3] * 2
    un, _ = DiMOORecipe().pair_inputs(revealed, final_ids, 1, 3, branch="uncond", **fields)
    assert un["new_positions"].tolist() == [[5], [5]] and un["new_ids"].tolist() == [[101], [200]]
    assert un["new_valid"] is None and un["mask_ratio"].tolist() == [0.0, 0.0]


def test_resume_no_guidance_and_refusals(migm, batched, folder, tmp_path, capsys):
    out = tmp_path / "r"
    seen = []
    r = record_trajectories(migm, out, count=6, batch_size=3, shard_size=3, progress=lambda d, t: seen.append(d),
                            should_stop=lambda: bool(seen) and seen[-1] >= 3, **REC)
    assert r.interrupted and r.written == 3
    r = record_trajectories(migm, out, count=6, batch_size=3, shard_size=3, resume=True, **REC)
    assert r.complete and r.written == 3 and r.already == 3
    for j in range(2):
        name = f"shard-00000{j}.safetensors"
        a, b = load_shard(out / name), load_shard(batched / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    with pytest.raises(ManifestError, match="conditions"):
        record_trajectories(migm, out, count=6, batch_size=3, shard_size=3, resume=True,
                            **{**REC, "prompts": PROMPTS[:2]})
    with pytest.raises(ValueError, match="prompts"):
        record_trajectories(migm, tmp_path / "x", count=2, classes=[0], steps=STEPS, show_progress=False)
    one = record_trajectories(migm, tmp_path / "c", count=2, cfg=0.0, batch_size=2, **REC)
    assert one.complete and read_manifest(tmp_path / "c")["branches"] == ["cond"]
    assert "uncond.features" not in load_shard(tmp_path / "c" / "shard-000000.safetensors")
    # The CLI: DiMOO takes --prompts, not --classes; settings left out on --resume come from the manifest.
    assert record_main(["--migm", str(folder), "--out", str(tmp_path / "y"), "--count", "2", "--classes", "0-3"]) == 2
    assert "--classes" in capsys.readouterr().err
    assert record_main(["--migm", str(folder), "--out", str(tmp_path / "y"), "--count", "2"]) == 2
    assert "--prompts" in capsys.readouterr().err
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert record_main(["--migm", str(folder), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before
    assert (out / MANIFEST).exists()


def test_ema_shares_the_base_embedding_table(migm):
    model = migm.build_shortcut(DiMOOShortcutConfig.for_base(migm.config))
    ema = ema_copy(model)
    assert ema.wte is model.wte and ema.wte.data_ptr() == migm.model.wte.weight.data_ptr()
    assert all(e.data_ptr() != p.data_ptr() for e, p in zip(ema.parameters(), model.parameters()))
    assert not any("wte" in k for k in ema.state_dict())


def test_training_beats_copy_baseline_and_drives_the_sampler(migm, folder, dataset, tmp_path):
    out = tmp_path / "dimoo-sc.safetensors"
    rc = train_main(["--data", str(dataset), "--migm", str(folder), "--out", str(out), "--iters", "60",
                     "--batch", "8", "--lr", "2e-3", "--lr-decay-at", "45", "--ema", "0.9", "--val-fraction", "0.15",
                     "--val-every", "60", "--ckpt-every", "30", "--keep-ckpts", "0", "--no-progress",
                     "--log-every", "10"])
    assert rc == 0
    meta = read_safetensors_metadata(out)
    val = meta["info"]["metrics"]["val"]
    print(f"DiMOO held-out MSE / copy-previous MSE = {val['mse_ratio']:.3f}; cosine {val['cos']:.4f} "
          f"(copy {val['copy_cos']:.4f})")
    assert val["mse_ratio"] < 0.9 and val["cos"] > val["copy_cos"]
    assert meta["base_fingerprint"] == migm.fingerprint and meta["family"] == "dimoo"
    assert DiMOOShortcutConfig.from_dict(meta["config"]) == DiMOOShortcutConfig.for_base(migm.config)
    # Neither the output nor the checkpoints (model and EMA) carry the base embedding table.
    tensors = load_file(str(out))
    assert not any("wte" in k for k in tensors)
    assert sum(v.numel() for v in tensors.values()) == sum(p.numel() for p in DiMOOShortcut(
        DiMOOShortcutConfig.for_base(migm.config)).parameters())
    for ckpt in (tmp_path / "dimoo-sc.run").glob("ckpt-*.safetensors"):
        assert not any("wte" in k for k in load_file(str(ckpt)))
    # The file loads for this base model, measures what training measured, and drives the sampler.
    shortcut = load_shortcut(out, migm)
    rec = Recording(dataset)
    _, val_rows = rec.split(0.15, 64)
    sums = train_mod.evaluate(shortcut, rec, val_rows, batch=8, device=CPU, autocast=train_mod.nullcontext,
                              skip_bad=False, log=print)
    assert abs(train_mod.summarize(sums)["mse_ratio"] - val["mse_ratio"]) < 1e-4
    res = generate(migm, prompts=PROMPTS[:2], steps=STEPS, full_steps=3, shortcut=shortcut, seed=0, **SIZE)
    assert res.stats.shortcut_steps == STEPS - 3 and res.images.shape == (2, 64, 64, 3)
    assert torch.isfinite(res.images).all()
    metrics = (tmp_path / "dimoo-sc.run" / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in metrics]
    assert events[0] == "start" and events[-1] == "end"
