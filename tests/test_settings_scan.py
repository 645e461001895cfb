"""The sampling-settings scan of the embedded model: rows, resumption, the table."""
import json

from training.fmnist.settings_scan import main


def test_scan_measures_each_setting_once_and_resumes(tmp_path, capsys):
    out = tmp_path / "scan.jsonl"
    args = ["--images", "20", "--batch", "10", "--steps", "2", "--cfgs", "1", "--r-temps", "0,6",
            "--threads", "1", "--seed", "7", "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == ["cond|cfg=1.0|r_temp=0.0|N=2", "cond|cfg=1.0|r_temp=6.0|N=2",
                                              "uncond|cfg=None|r_temp=0.0|N=2", "uncond|cfg=None|r_temp=6.0|N=2"]
    for r in rows:
        assert r["images"] == 20 and r["seed"] == 7 and r["fd"] > 0 and len(r["fd_halves"]) == 2
        assert (r["class_consistency"] is None) == (r["regime"] == "uncond")
    cond = {r["r_temp"]: r for r in rows if r["regime"] == "cond"}
    assert 0 <= cond[0.0]["class_consistency"] <= 1
    assert cond[0.0]["fd"] != cond[6.0]["fd"]  # the option reached the sampler
    assert main(args) == 0  # nothing left to do: no row is measured twice
    assert len(out.read_text().splitlines()) == 4
    table = out.with_suffix(".md").read_text()
    assert "### cond: 20 images, seeds 7-8 (chunks of 10), fp32" in table
    assert "| 1.0 | 6.0 | " in table and '"r_temp": 4.5' in table
