"""Progress for long commands: a bar redrawn in place on a terminal, plain lines in logs and pipes."""

from __future__ import annotations

import time

from django.core.management.base import OutputWrapper

from search.plurals import noun

BAR_WIDTH = 30


class Progress:
    def __init__(self, stdout: OutputWrapper, *, total: int, unit: str, verbosity: int = 1) -> None:
        self.stdout = stdout
        self.total = max(total, 0)
        self.unit = unit
        self.done = 0
        self.verbosity = verbosity
        self.on_terminal = stdout.isatty()
        self.started = time.monotonic()
        self._drawn = False

    def advance(self, step: int = 1, *, detail: str = "") -> None:
        self.done += step
        if self.verbosity < 1:
            return
        if self.on_terminal:
            filled = int(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            # `unit` is the plural the callers name ("files", "chunks"); one of one reads "1/1 file".
            unit = noun(self.total, self.unit.removesuffix("s"), self.unit)
            self.stdout.write(f"\r[{bar}] {self.done}/{self.total} {unit} {detail[:40]:<40}", ending="")
            self.stdout.flush()
            self._drawn = True

    def line(self, message: str) -> None:
        """A line of its own: printed above the bar on a terminal, as is elsewhere."""
        if self.verbosity < 1:
            return
        if self._drawn:
            self.stdout.write("\r" + " " * (BAR_WIDTH + 60) + "\r", ending="")
        self.stdout.write(message)
        if self._drawn:
            self.advance(0)

    def finish(self) -> float:
        if self._drawn:
            self.stdout.write("")
        return time.monotonic() - self.started
