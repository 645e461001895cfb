"""bench/gpu_check.py kept from rotting: its --smoke run (tiny configs, CPU) and its failure reporting.

The GPU machine is lent rarely; when it is, the script has to work the first time.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_timings(rec: dict, passes_per_full_step: int, group: str | None) -> None:
    assert rec["status"] == "passed", rec.get("error")
    assert rec["passes_per_full_step"] == passes_per_full_step
    n, budgets = rec["steps"], rec["budgets"]
    groups = rec["batches"] if group else [None]
    assert len(rec["results"]) == len(groups) * (1 + len(budgets))
    for i, g in enumerate(groups):
        plain, *fast = rec["results"][i * (1 + len(budgets)):(i + 1) * (1 + len(budgets))]
        assert g is None or plain[group] == g
        assert (plain["setting"], plain["B"], plain["shortcut_steps"]) == ("plain", n, 0)
        assert plain["base_passes"] + plain["memo_passes"] == plain["plain_base_passes"] == n * passes_per_full_step
        assert [r["B"] for r in fast] == budgets
        for r in [plain, *fast]:
            assert r["s_per_image"] > 0 and r["seconds"] > 0 and r["peak_mib"] > 0 and r["full_step_s"] > 0
        for r in fast:
            assert r["setting"] == f"shortcut B={r['B']}" and len(r["full_step_indices"]) == r["B"]
            assert r["base_passes"] + r["memo_passes"] == r["B"] * passes_per_full_step and r["shortcut_steps"] == n - r["B"]
            assert r["c"] > 0 and r["speedup"] > 0 and r["of_limit"] > 0 and r["ideal"] > 0
            assert r["limit"] == pytest.approx(n / r["B"])


@pytest.mark.slow
def test_smoke_run_writes_the_report_with_real_figures(tmp_path):
    out = tmp_path / "smoke"
    # The smoke run guards code paths, not speed: a budget past the smoke's own 120 s, so that a
    # slow CPU (inductor compiles take 100 s on some) still reaches every section.
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--time-budget", "400", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    assert report["ok"] and report["smoke"] and report["date"]
    assert "gpu_check.py --smoke" in report["command"]
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["device"]
    sections = report["sections"]
    assert list(sections) == ["cuda_tests", "maskgit", "dimoo", "maskgit_compiled"]

    tests = sections["cuda_tests"]
    assert tests["status"] == "passed" and tests["device"] == "cpu" and "no CUDA" in tests["note"]
    assert tests["runner"].startswith("pytest")  # pytest is installed here, so the subprocess path ran
    assert len(tests["tests"]) >= 7 and all(t["outcome"] == "passed" for t in tests["tests"])
    assert {t["name"] for t in tests["tests"]} >= {"test_maskgit_samples_in_bf16", "test_dimoo_samples_in_fp32",
                                                   "test_compiled_sampling_matches_eager"}

    check_timings(sections["maskgit"], passes_per_full_step=1, group="batch")  # cond + uncond in one forward
    check_timings(sections["dimoo"], passes_per_full_step=2, group=None)  # cond and uncond: two forwards
    compiled = sections["maskgit_compiled"]
    check_timings(compiled, passes_per_full_step=1, group="batch")
    assert compiled["batches"] == [1] and compiled["compile_mode"] == "default" and compiled["compile_seconds"] > 0
    # step 0 of the warmed-up class comes from memory in every timed run
    assert all(r["memo_passes"] == 1 for r in compiled["results"])

    assert "SMOKE" in md and report["command"] in md and "all sections passed" in md
    for name in sections:
        assert f"## {name}: passed" in md
    assert "| 4 | shortcut B=2 |" in md and "| shortcut B=4 |" in md and "+1 from memory" in md


def test_gpu_tests_run_without_pytest_too():
    """The GPU machine may lack pytest: the same test functions then run by direct call."""
    tests = load_gpu_check().run_tests_directly("cpu")
    assert len(tests) >= 6
    assert all(t["outcome"] == "passed" for t in tests), [t for t in tests if t["outcome"] != "passed"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_gpu_tests_fail_and_sections_are_reported_failed(tmp_path, monkeypatch):
    import importlib

    gpu_check = load_gpu_check()
    monkeypatch.delenv(gpu_check.DEVICE_ENV, raising=False)
    with pytest.raises(AssertionError, match="no CUDA device"):
        importlib.import_module("tests.test_gpu").device()
    # A real (non-smoke) run here: each timing section fails on its own, recorded, exit status 1.
    assert gpu_check.main(["--out", str(tmp_path), "--sections", "maskgit,dimoo"]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["ok"]
    for name in ("maskgit", "dimoo"):
        assert report["sections"][name]["status"] == "failed"
        assert "no CUDA device" in report["sections"][name]["error"]
    assert "## maskgit: failed" in (tmp_path / "gpu_check.md").read_text()
