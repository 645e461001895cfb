"""Headless progress: tqdm's bar on a terminal, whole status lines at most every interval in a log."""
from __future__ import annotations

import io

from shortcut_core.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_whole_lines_with_counts_and_postfix():
    log = io.StringIO()
    bar = ProgressBar(10, desc="train", unit="it", start=4, stream=log, interval=0)
    for _ in range(6):
        bar.update(1, postfix="loss 0.5")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 6
    assert lines[0].startswith("train:") and "5/10" in lines[0] and "loss 0.5" in lines[0] and "it/s" in lines[0]
    assert "10/10" in lines[-1] and "100%" in lines[-1]


def test_log_lines_are_rate_limited():
    log = io.StringIO()
    bar = ProgressBar(1000, desc="record", unit="traj", stream=log, interval=3600)
    for _ in range(999):
        bar.update(1)
    assert len(log.getvalue().splitlines()) == 1  # the first update only, then nothing for an hour
    bar.update(1)
    assert log.getvalue().splitlines()[-1].startswith("record: 100%")  # the end is always shown


def test_terminal_gets_a_redrawn_tqdm_bar():
    term = Terminal()
    bar = ProgressBar(5, desc="sweep", unit="chunk", stream=term)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()


def test_disabled_bar_writes_nothing():
    log = io.StringIO()
    bar = ProgressBar(3, stream=log, enabled=False, interval=0)
    bar.update(3)
    bar.close()
    assert log.getvalue() == ""
