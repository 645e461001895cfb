"""A dependency-free progress bar for the recorder and the trainer.

On a terminal it redraws one line; in a log file (not a TTY) it prints a line at most
every ``interval`` seconds, so logs stay readable.
"""
from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total: int, desc: str = "", unit: str = "it", *, start: int = 0, enabled: bool = True,
                 stream=None, interval: float = 10.0, width: int = 24):
        self.total = max(int(total), 0)
        self.n = int(start)
        self.start_n = int(start)
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if not self.tty else 0.2
        self.width = width
        self.postfix = ""
        self.t0 = time.perf_counter()
        self._last = 0.0

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.n >= self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        frac = self.n / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        rate = self.rate()
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        line = (f"{self.desc} [{'#' * filled}{'.' * (self.width - filled)}] {self.n}/{self.total} "
                f"{rate:.2f} {self.unit}/s eta {eta_s}" + (f" {self.postfix}" if self.postfix else ""))
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
