"""bench/bench_row_blocks.py: both variants side by side on the embedded model, the same tokens."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_pass_and_row_blocks_run_side_by_side_on_the_same_tokens(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/bench_row_blocks.py", "--batches", "120", "--steps", "4",
                           "--full-steps", "2", "--repeats", "1", "--threads", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["regime"], r["setting"]) for r in results] == [
        ("cond", "plain"), ("cond", "shortcut 4/2"), ("uncond", "plain"), ("uncond", "shortcut 4/2")]
    # 120 guided images are 240 rows, past the 218 a block holds; 120 unguided rows fit one block
    assert [(r["rows"], r["blocks"]) for r in results] == [(240, 2), (240, 2), (120, 1), (120, 1)]
    assert all(r["same_tokens"] and r["one pass ms/image"] > 0 and r["row blocks ms/image"] > 0 for r in results)
    assert "same tokens: True" in proc.stdout
