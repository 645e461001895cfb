"""The quality-speed sweep: target arithmetic, Pareto front, and a tiny resumable run on the shipped model."""
import json

import pytest

from training.sweep import Setting, main, pareto_front, parse_settings, targets


def row(key, steps, full, fd, ms, cc=0.9):
    return {"key": key, "plain": steps == full, "steps": steps, "full_steps": full, "fd_fmnist": fd,
            "seconds_per_image": ms / 1e3, "class_consistency": cc}


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 9.0), (2.0, 5.0), (3.0, 6.0), (4.0, 4.0), (2.5, 5.0)]
    assert pareto_front(points) == [0, 1, 3]


def test_targets_compare_with_the_fastest_plain_setting_of_equal_fd():
    results = [row("plain_N4", 4, 4, 90.0, 40), row("plain_N16", 16, 16, 80.0, 160),
               row("shortcut_N16_B4", 16, 4, 82.0, 45), row("shortcut_N16_B5", 16, 5, 79.0, 55)]
    checks = targets(results)
    iso = {t["shortcut"]: t for t in checks["iso_quality"]}
    # FD 82: plain N=4 (FD 90) is worse, so the reference is plain N=16 (160 ms).
    assert iso["shortcut_N16_B4"]["plain"] == "plain_N16" and iso["shortcut_N16_B4"]["speedup"] == pytest.approx(160 / 45)
    # FD 79 beats every plain setting: compared with the best plain FD (N=16).
    assert iso["shortcut_N16_B5"]["plain"] == "plain_N16" and iso["shortcut_N16_B5"]["speedup"] == pytest.approx(160 / 55)
    assert checks["best_iso_quality"]["shortcut"] == "shortcut_N16_B4" and checks["target_2x_met"]
    same_n = {t["shortcut"]: t for t in checks["same_n_b_le_n3"]}
    assert set(same_n) == {"shortcut_N16_B4", "shortcut_N16_B5"}
    assert same_n["shortcut_N16_B4"]["fd_rel"] == pytest.approx(82 / 80 - 1) and checks["target_5pct_met"]

    slow = targets([row("plain_N2", 2, 2, 85.0, 20), row("shortcut_N16_B4", 16, 4, 86.0, 45)])
    assert not slow["target_2x_met"] and slow["best_iso_quality"]["plain"] == "plain_N2"
    assert not slow["target_5pct_met"]  # no plain N=16 to compare with


def test_settings_parse_and_refuse_b_not_below_n():
    assert parse_settings("4", "16:3") == [Setting(4, 4), Setting(16, 3)]
    with pytest.raises(ValueError, match="need 1 <= B < N"):
        parse_settings("", "8:8")


def test_tiny_sweep_writes_the_report_and_resumes(tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    args = ["--plain", "2", "--shortcut-settings", "4:1", "--images", "20", "--headline", "plain_N2",
            "--headline-images", "40", "--batch", "20", "--cost-repeats", "1", "--grids", "shortcut_N4_B1",
            "--state-dir", str(state), "--out-dir", str(out)]
    first = main(args)
    by_key = {r["key"]: r for r in first["results"]}
    assert by_key["plain_N2"]["images"] == 40 and by_key["shortcut_N4_B1"]["images"] == 20
    assert by_key["shortcut_N4_B1"]["base_passes_per_image"] == 1 and by_key["plain_N2"]["base_passes_per_image"] == 2
    assert by_key["plain_N2"]["fd_fmnist_second_block"] is not None  # the noise estimate of a headline row
    costs = first["step_costs"]
    assert costs["full_step_ms_per_image"] > costs["base_net_ms_per_image"] > 0
    assert costs["shortcut_step_ms_per_image"] > costs["shortcut_net_ms_per_image"] > 0
    for name in ("fmnist_sweep.md", "fmnist_sweep.json", "fmnist_sweep.png", "fmnist_samples_shortcut_N4_B1.png"):
        assert (out / name).is_file(), name
    assert "| shortcut N=4 B=1 | 4 | 1 | 20 |" in (out / "fmnist_sweep.md").read_text()

    chunks = sorted(state.rglob("*.npz"))
    assert len(chunks) == 2 + 1  # plain N=2: 40 images, shortcut: 20, in chunks of 20
    stamps = [p.stat().st_mtime_ns for p in chunks]
    second = main(args)  # everything is on disk: nothing is generated again, the figures are the same
    assert [p.stat().st_mtime_ns for p in chunks] == stamps
    assert json.dumps(second["results"], sort_keys=True) == json.dumps(first["results"], sort_keys=True)
    # Stopped after a setting's last chunk but before its JSON: the summary comes from the chunks.
    (state / "results" / "shortcut_N4_B1.json").unlink()
    third = main(args)
    assert json.dumps(third["results"], sort_keys=True) == json.dumps(first["results"], sort_keys=True)
