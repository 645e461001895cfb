"""bench/bench_sampler.py side by side: variants interleaved, step 0 from memory only where it should be."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_variants_run_side_by_side_and_report_memory_served_steps(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/bench_sampler.py", "--grid", "2", "--steps", "4", "--full-steps", "2",
                           "--variants", "computed,eager", "--threads", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["variant"], r["B"]) for r in results] == [("computed", 4), ("eager", 4), ("computed", 2), ("eager", 2)]
    by = {(r["variant"], r["B"]): r for r in results}
    # computed: every full step runs the base model; eager: the warm-up saw the class, so step 0 is remembered
    assert (by["computed", 4]["base_passes"], by["computed", 4]["memo_passes"]) == (4, 0)
    assert (by["eager", 4]["base_passes"], by["eager", 4]["memo_passes"]) == (3, 1)
    assert (by["computed", 2]["base_passes"], by["eager", 2]["base_passes"]) == (2, 1)
    assert all(r["seconds"] > 0 and r["vs_first"] > 0 for r in results)
    assert "eager     shortcut B=2" in proc.stdout and "1+1m" in proc.stdout
    bad = subprocess.run([sys.executable, "bench/bench_sampler.py", "--variants", "fast"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--variants takes a comma list of computed, eager, compiled" in bad.stderr
