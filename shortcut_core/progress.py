"""Progress for headless jobs: tqdm's bar on a terminal, tqdm's status text as occasional lines in a log.

tqdm redraws its line with carriage returns, which a log file (not a TTY) keeps as one
ever-growing line; there the same status is written as a whole line at most every
``interval`` seconds, so logs of hour-long jobs stay readable.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class ProgressBar:
    def __init__(self, total: int, desc: str = "", unit: str = "it", *, start: int = 0, enabled: bool = True,
                 stream=None, interval: float = 10.0):
        self.total = max(int(total), 0)
        self.n = int(start)
        self.start_n = int(start)
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self.postfix = ""
        self.t0 = time.perf_counter()
        self._last = -float("inf")  # the first update always shows (perf_counter may start near 0: a fresh boot)
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                        smoothing=0.1) if enabled and tty else None

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.n >= self.total):
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """tqdm's status text (count, rate, elapsed, remaining) of the work since this run started."""
        return tqdm.format_meter(self.n, self.total, time.perf_counter() - self.t0, initial=self.start_n,
                                 prefix=self.desc, unit=self.unit, postfix=self.postfix or None, ncols=0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
