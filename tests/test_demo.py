"""The README's main job (scripts/demo.py) on the shipped model, small enough for CI."""
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_demo(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts/demo.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_demo_compares_plain_and_shortcut_in_both_regimes(tmp_path):
    out = tmp_path / "grid.png"
    done = run_demo("--steps", "8", "--full-steps", "2", "--per-class", "2", "--show", "2", "--out", str(out),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for regime in ("class-conditional", "unconditional"):
        runs = [line for line in lines if line.lstrip().startswith(regime + ",")]
        assert len(runs) == 4, done.stdout  # plain N, shortcut N/B, feature cache N/B, plain B
        cache = next(line for line in runs if "cache N=8, B=2" in line)
        assert "full 2/8, cache 6" in cache and "feature cache" in cache
        summary = next(line for line in lines if line.startswith(f"{regime}: shortcut"))
        # a base pass is one transformer call per step (guided sampling batches both halves into it); the
        # warm-up saw every class, so step 0 of each run comes from memory
        assert "full steps 8 -> 2 (base passes run 7 -> 1, step 0 from memory in each)" in summary, summary
        assert "x faster than plain N=8" in summary and "the feature cache at the same full steps: " in summary
    assert "class consistency: plain N=8" in done.stdout
    grid = Image.open(out)
    # two regimes, four panels of 10 rows x 2 images of 28 px each, titled with their seconds
    assert grid.width > 4 * 2 * 28 and grid.height > 2 * 10 * 28
    assert "wrote " + str(out) in done.stdout


def test_demo_refuses_bad_arguments_before_any_work(tmp_path):
    done = run_demo("--steps", "8", "--full-steps", "20", cwd=tmp_path)
    assert done.returncode == 2
    assert "--full-steps must be at least 1 and below --steps (8), got 20" in done.stderr
    assert done.stdout == ""  # nothing loaded or sampled
    assert not (tmp_path / "out").exists()


def test_demo_runs_in_bf16(tmp_path):
    done = run_demo("--steps", "4", "--full-steps", "1", "--per-class", "1", "--show", "1", "--dtype", "bf16",
                    "--out", str(tmp_path / "grid.png"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "torch.bfloat16" in done.stdout.splitlines()[0]
    assert "unconditional: shortcut" in done.stdout and (tmp_path / "grid.png").is_file()
