"""The resume check every trainer of the embedded recipe passes."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoints import TrainingError


def assert_resumes_bit_exactly(run, folder: Path, stop_at: int, changed: tuple[str, ...], changed_name: str):
    """``run(out, *argv, should_stop=...)`` trains into ``out``. A run stopped before unit
    ``stop_at`` and resumed must end with the weights of an uninterrupted one; a restart without
    --resume and a resume with ``changed`` settings are refused. Returns (whole, part) paths."""
    whole = run(folder / "whole.safetensors")
    part = folder / "part.safetensors"
    run(part, should_stop=lambda unit: unit == stop_at)
    assert not part.exists()
    with pytest.raises(TrainingError, match="pass --resume"):
        run(part)
    with pytest.raises(TrainingError, match=f"settings differ.*{changed_name}"):
        run(part, "--resume", *changed)
    run(part, "--resume")
    a, b = load_file(str(whole)), load_file(str(part))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return whole, part


def resume_with_other_threads(run, folder: Path, stop_at: int) -> tuple[dict, str]:
    """A run stopped before unit ``stop_at`` on 1 CPU thread and resumed on 2: (its file's info, its log)."""
    from shortcut_core.checkpoints import read_safetensors_metadata

    out = folder / "threads.safetensors"
    try:
        run(out, "--threads", "1", should_stop=lambda unit: unit == stop_at)
        run(out, "--resume", "--threads", "2")
    finally:
        torch.set_num_threads(1)  # the trainers set the process's count; tests run on 1 (conftest)
    return read_safetensors_metadata(out)["info"], (folder / "threads.run" / "train.log").read_text()
