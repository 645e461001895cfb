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
