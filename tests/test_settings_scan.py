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
    assert "| 1.0 | 6.0 | " in table and '"r_temp": 9.0' in table


def test_token_temperature_is_a_scanned_setting_and_old_rows_keep_their_keys(tmp_path):
    out = tmp_path / "scan.jsonl"
    base = ["--images", "20", "--batch", "10", "--steps", "2", "--cfgs", "1", "--r-temps", "6",
            "--threads", "1", "--seed", "7", "--out", str(out)]
    assert main(base) == 0
    old = [json.loads(line) for line in out.read_text().splitlines()]
    for r in old:  # a scan file written before the option existed: rows carry no sm_temp
        del r["sm_temp"]
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert main(base + ["--sm-temps", "1,0.5"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4  # only the sm_temp 0.5 rows were measured: the old rows count as sm_temp 1
    new = {r["regime"]: r for r in rows[2:]}
    assert sorted(r["key"] for r in new.values()) == ["cond|cfg=1.0|r_temp=6.0|sm_temp=0.5|N=2",
                                                      "uncond|cfg=None|r_temp=6.0|sm_temp=0.5|N=2"]
    for r in old:
        assert new[r["regime"]]["fd"] != r["fd"]  # the option reached the sampler
    table = out.with_suffix(".md").read_text()
    assert "| 1.0 | 6.0 | 1.0 | " in table and "| 1.0 | 6.0 | 0.5 | " in table
