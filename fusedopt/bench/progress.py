"""A small progress bar on stderr, apart from the results on stdout: redrawn in place on a terminal, a line per
tenth of the work otherwise (logs stay short)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def render(done: int, total: int, label: str, elapsed: float, width: int = 24) -> str:
    frac = min(1.0, done / total) if total else 1.0
    filled = round(frac * width)
    eta = f", ~{elapsed / frac - elapsed:.0f} s left" if 0 < frac < 1 else ""
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%} {elapsed:.0f} s{eta}  {label}"


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_tenth = -1
        self._width = 0

    def __call__(self, label: str) -> None:
        """One unit of work done; `label` says what."""
        self.done += 1
        line = render(self.done, self.total, label, time.perf_counter() - self.start)
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            tenth = int(10 * self.done / self.total) if self.total else 10
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own, without breaking the bar."""
        self.stream.write(("\r" + " " * self._width + "\r" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
