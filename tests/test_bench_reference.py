"""bench/bench_reference.py: importing a reference checkout whose training-only imports are missing or broken.

The reference's code is not part of this project, so these tests use a folder of the same
layout whose files import what the real ``Trainer/vit.py`` imports.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VIT = """
import torch
from Trainer.trainer import Trainer
from Network.transformer import MaskTransformer
from Network.Taming.models.vqgan import VQModel
from omegaconf import OmegaConf
import torchvision.utils as vutils


class MaskGIT(Trainer):
    def sample_shortcut(self):
        return "sampled"
"""


def write_reference(folder: Path) -> None:
    (folder / "Network").mkdir(parents=True)
    (folder / "Trainer").mkdir()
    (folder / "Network" / "transformer.py").write_text("class MaskTransformer:\n    pass\n")
    (folder / "Network" / "shortcut_model.py").write_text("class MaskGITShortcut:\n    pass\n")
    (folder / "Trainer" / "vit.py").write_text(VIT)


def test_training_only_imports_are_stood_in_when_missing_or_broken(tmp_path):
    ref = tmp_path / "MaskGIT-Shortcut"
    write_reference(ref)
    # a torchvision that fails on import, as one built for another torch does
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / 'site')!r})
        sys.path.insert(0, 'bench')
        from bench_reference import import_reference
        from pathlib import Path
        trainer, transformer, shortcut = import_reference(Path({str(ref)!r}))
        assert trainer.__name__ == "MaskGIT" and transformer.__name__ == "MaskTransformer"
        assert shortcut.__name__ == "MaskGITShortcut"
        assert trainer.__new__(trainer).sample_shortcut() == "sampled"
        print("imported")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported" in proc.stdout


def test_a_folder_without_the_reference_is_refused_by_name(tmp_path):
    proc = subprocess.run([sys.executable, "bench/bench_reference.py", "--reference", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Network/transformer.py not found: pass --reference the MaskGIT-Shortcut folder" in proc.stderr


def test_feature_agreement_allows_bf16_rounding_but_not_a_different_computation():
    import pytest
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_reference import feature_agreement

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 257, 768, generator=g)
    rounded = ref.to(torch.bfloat16).float()  # what a bf16 copy of the same computation gives, at best
    worst, relative = feature_agreement([(ref, rounded)], torch.bfloat16)
    assert 0 < relative < 0.01 and worst > 1e-3
    with pytest.raises(SystemExit, match="max difference"):
        feature_agreement([(ref, rounded)], torch.float32)  # fp32 must agree to 1e-3
    assert feature_agreement([(ref, ref + 1e-5)], torch.float32)[0] == pytest.approx(1e-5, rel=0.1)
    other = torch.randn(2, 257, 768, generator=g)  # another computation altogether
    with pytest.raises(SystemExit, match="relative"):
        feature_agreement([(ref, rounded), (ref, other)], torch.bfloat16)


# A working stand-in for the reference, built from this project's own modules (which keep the
# published key names): the bench's whole path runs, both precisions, without the reference's code.
FAKE_TRANSFORMER = """'''Stand-in for the reference's MaskTransformer: this project's MaskGIT (published key names).'''
from dataclasses import replace

import torch

from shortcut_core import MASKGIT_PRESETS, MaskGIT


class MaskTransformer(MaskGIT):
    def __init__(self, img_size, hidden_dim, codebook_size, f_factor, depth, heads, mlp_dim, dropout):
        super().__init__(replace(MASKGIT_PRESETS["maskgit-imagenet512"], grid=f_factor))

    def forward(self, tokens, labels, drop, ret_last_feat=False):
        classes = torch.where(drop, torch.full_like(labels, self.config.null_class), labels)
        feat = self.features(tokens.flatten(1), classes)
        return self.logits(feat), feat

"""

FAKE_SHORTCUT = """'''Stand-in for the reference's shortcut: this project's, fed the reference's map of new tokens.'''
from shortcut_core import SHORTCUT_PRESETS
from shortcut_core import MaskGITShortcut as Ours


class MaskGITShortcut(Ours):
    def __init__(self, hidden_dim, n_block, embed_t, bottleneck_ratio, tok_emb, pos_emb, num_heads, dropout):
        super().__init__(SHORTCUT_PRESETS["maskgit-imagenet512"], tok_emb.weight, pos_emb)

    def forward(self, feat, new_ids, new_map, ratio):
        positions = new_map.nonzero()[:, 1].view(new_map.shape[0], -1)
        return super().forward(feat, new_ids, positions, ratio)
"""

FAKE_VIT = """'''Stand-in for the reference's trainer: ``sample_shortcut`` runs the base model on the full steps and the
shortcut on the others, with its imports as the reference has them.'''
import torch
from Trainer.trainer import Trainer
from Network.transformer import MaskTransformer
from Network.Taming.models.vqgan import VQModel
from omegaconf import OmegaConf
import torchvision.utils as vutils


class MaskGIT(Trainer):
    def sample_shortcut(self, nb_sample, labels, sm_temp, w, randomize, r_temp, sched_mode, step, use_shortcut,
                        shortcut_model, budget):
        grid = self.patch_size
        code = torch.full((nb_sample, grid, grid), self.args.mask_value)
        drop = torch.ones(nb_sample, dtype=torch.bool)
        full = {round(step * k / budget) for k in range(budget)} if use_shortcut else set(range(step))
        with torch.no_grad():
            for i in range(step):
                if i in full:
                    _, feat = self.vit(torch.cat([code, code]), torch.cat([labels, labels]), torch.cat([~drop, drop]),
                                       ret_last_feat=True)
                else:
                    new_map = torch.zeros(feat.shape[0], feat.shape[1], dtype=torch.bool)
                    new_map[:, i] = True
                    feat = shortcut_model(feat, torch.zeros(feat.shape[0], 1, dtype=torch.long), new_map,
                                          torch.full((feat.shape[0],), 0.5))
        return self.ae.decode_code(code)
"""


def test_the_bench_runs_both_precisions_against_their_own_reference(tmp_path):
    import json

    ref = tmp_path / "MaskGIT-Shortcut"
    write_reference(ref)
    (ref / "Network" / "transformer.py").write_text(FAKE_TRANSFORMER)
    (ref / "Network" / "shortcut_model.py").write_text(FAKE_SHORTCUT)
    (ref / "Trainer" / "vit.py").write_text(FAKE_VIT)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/bench_reference.py", "--reference", str(ref), "--grid", "4",
                           "--steps", "4", "--full-steps", "4,2", "--repeats", "1", "--dtypes", "float32,bfloat16",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check, *rows = json.loads(out.read_text())["results"]
    fp32, bf16 = check["feature_check"]["float32"], check["feature_check"]["bfloat16"]
    assert fp32["max_difference"] < 1e-3 and 0 < bf16["relative"] < 0.05
    opponents = {r["variant"]: r["opponent"] for r in rows}
    assert opponents == {
        "reference": "reference", "project": "reference", "project (computed)": "reference",
        "reference (bf16 autocast)": "reference (bf16 autocast)", "project bf16": "reference (bf16 autocast)",
        "project bf16 (computed)": "reference (bf16 autocast)"}
    assert sorted({r["B"] for r in rows}) == [2, 4] and len(rows) == 12
    for r in rows:
        assert r["seconds"] > 0 and r["first"] == "reference" and len(r["round_ratios"]) == 1
        if r["variant"] == r["opponent"]:
            assert r["speed_vs_opponent"] == 1.0 and r["round_ratios"] == [1.0]
    assert "reference (bf16 autocast)" in proc.stdout and "same-precision reference / it" in proc.stdout


def test_unknown_precisions_are_refused_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "bench/bench_reference.py", "--reference", str(tmp_path), "--dtypes",
                           "float32,int8"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--dtypes takes a comma list of float32, bfloat16" in proc.stderr
