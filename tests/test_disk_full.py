"""A disk that fills up mid-job: a real full filesystem (a small tmpfs in a private mount namespace).

Each job runs inside its own mount namespace (``unshare --mount``, with ``--user
--map-root-user`` when not root) with its output on a tmpfs too small for the whole job: what a full disk does to the CLIs, with no root rights needed
and nothing mounted outside the test. The job must stop with one line naming the problem
(exit 2), leave no temporary file behind, keep every file it completed valid, and resume
from them once there is room.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shortcut_core import load_migm, save_migm
from tests.tiny import tiny_migm, tiny_shortcut
from training.record import main as record_main
from training.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def on_full_disk(tmp_path: Path, size_kb: int, module: str, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``python -m module args`` with ``{disk}`` in args on a ``size_kb`` tmpfs; returns the
    process and a copy of what it left on that disk."""
    disk, left = tmp_path / "disk", tmp_path / "left"
    disk.mkdir()
    left.mkdir()
    script = ('mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 97; shift 2; '
              'left="$1"; shift; "$@"; rc=$?; cp -a "$(dirname "$left")/disk/." "$left/"; exit $rc')
    command = [sys.executable, "-m", module, *(a.replace("{disk}", str(disk)) for a in args)]
    tried = []
    # root needs only its own mount namespace; anyone else also a user namespace mapping them to root
    for unshare in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        done = subprocess.run([*unshare, "sh", "-c", script, "sh", str(size_kb), str(disk), str(left), *command],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        if done.returncode != 97 and "unshare:" not in done.stderr:
            return done, left
        tried.append(f"{' '.join(unshare)}: {done.stderr.strip()[-200:]}")
    pytest.skip("this machine cannot mount a private tmpfs, so a full disk cannot be made here: " + "; ".join(tried))


def assert_one_line_about_space(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "No space left on device" in errors[0], errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    path = root / "m.safetensors"
    save_migm(tiny_migm(), path)
    return path


# One thread in the subprocess as in this process (conftest): recorded features are compared
# bit for bit, and CPU reductions follow the thread count.
RECORD = ("--count", "16", "--steps", "4", "--batch", "4", "--shard-size", "4", "--no-progress", "--threads", "1")


def test_recording_stopped_by_a_full_disk_keeps_its_shards_and_resumes_to_the_same_data(base, tmp_path):
    reference = tmp_path / "reference"
    assert record_main(["--migm", str(base), "--out", str(reference), *RECORD]) == 0
    shard = (reference / "shard-000000.safetensors").stat().st_size
    # room for two shards and the manifest, not three (tmpfs counts whole 4 KiB pages)
    size_kb = (2 * shard + 3 * 4096) // 1024 + 8
    done, left = on_full_disk(tmp_path, size_kb, "training.record", "--migm", str(base), "--out", "{disk}/rec",
                              *RECORD, "--no-disk-check")
    assert_one_line_about_space(done)
    rec = left / "rec"
    assert leftovers(rec) == []
    shards = sorted(rec.glob("shard-*.safetensors"))
    assert 1 <= len(shards) < 4
    for path in shards:  # every completed shard is whole
        for key, value in load_file(str(path)).items():
            assert (value == load_file(str(reference / path.name))[key]).all()
    assert "--resume" in done.stderr  # the message says how to go on
    assert record_main(["--migm", str(base), "--out", str(rec), "--resume", "--no-progress"]) == 0
    for path in sorted(reference.glob("shard-*.safetensors")):
        got, want = load_file(str(rec / path.name)), load_file(str(path))
        assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)


def test_recording_checks_free_space_before_it_starts(base, tmp_path):
    done, left = on_full_disk(tmp_path, 64, "training.record", "--migm", str(base), "--out", "{disk}/rec", *RECORD)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "free" in done.stderr and "--no-disk-check" in done.stderr, done.stderr
    assert not any(left.rglob("shard-*")), "nothing is recorded when the space is known to be short"


def test_training_on_a_full_disk_stops_cleanly_and_its_checkpoints_stay_loadable(base, tmp_path):
    rec = tmp_path / "rec"
    assert record_main(["--migm", str(base), "--out", str(rec), *RECORD]) == 0
    one = tmp_path / "one_ckpt"
    args = ["--data", str(rec), "--migm", str(base), "--iters", "4", "--ckpt-every", "2", "--val-every", "0",
            "--no-progress", "--threads", "1"]
    assert train_main([*args, "--out", str(one / "sc.safetensors")]) == 0
    ckpt = sorted(one.rglob("ckpt-*.safetensors"))[0].stat().st_size
    # room for one checkpoint (with its json and the run's logs), not a second
    size_kb = (ckpt + 6 * 4096) // 1024 + 8
    done, left = on_full_disk(tmp_path, size_kb, "training.train", *args, "--out", "{disk}/sc.safetensors")
    assert_one_line_about_space(done)
    assert "training stopped at iteration 4" in done.stderr and "continue with --resume" in done.stderr
    assert leftovers(left) == []
    assert not (left / "sc.safetensors").exists()
    kept = sorted(left.rglob("ckpt-*.safetensors"))
    assert len(kept) == 1
    load_file(str(kept[0]))  # whole
    # with room again, the run resumes from what the full disk left
    room = tmp_path / "room"
    shutil.copytree(left, room)
    run_dir = kept[0].parent.relative_to(left)
    assert train_main([*args, "--out", str(room / "sc.safetensors"), "--run-dir", str(room / run_dir),
                       "--resume"]) == 0
    assert (room / "sc.safetensors").is_file()


def test_convert_onto_a_full_disk_leaves_nothing_half_written(base, tmp_path):
    src = tmp_path / "sc.pth"
    torch.save(tiny_shortcut(load_migm(base)).state_dict(), src)
    done, left = on_full_disk(tmp_path, 8, "shortcut_core.convert", str(src), "-o", "{disk}/sc.safetensors")
    assert_one_line_about_space(done)
    assert list(left.iterdir()) == []
