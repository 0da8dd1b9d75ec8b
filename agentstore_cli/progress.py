"""Progress of long copies: redrawn on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import IO, Protocol


class Progress(Protocol):
    """Receives progress for one kind at a time."""

    def start(self, label: str, total: int | None, initial: int = 0) -> None: ...

    def advance(self, rows: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Progress that shows nothing."""

    def start(self, label: str, total: int | None, initial: int = 0) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass

    def finish(self) -> None:
        pass


class LineProgress:
    """Progress per kind on `stream`: rows, rate and (with a total) percentage and ETA.

    On a terminal one line per kind is redrawn in place, with a bar. Elsewhere (a log, a
    pipe) plain lines are appended instead, no bar and no carriage return: one every `every`
    seconds while a kind is copied, so long work still shows it is moving, and one at its end.
    """

    def __init__(
        self, stream: IO[str] | None = None, tty: bool | None = None, every: float = 30.0
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._every = every
        self._label, self._rows, self._initial = "", 0, 0
        self._total: int | None = None
        self._began = self._drawn = 0.0

    def start(self, label: str, total: int | None, initial: int = 0) -> None:
        """Begin a line; `initial` rows were done by an earlier run and count for no rate."""
        self._label, self._total, self._rows, self._initial = label, total, initial, initial
        self._began = self._drawn = time.monotonic()
        if self._tty:
            self._draw()

    def advance(self, rows: int) -> None:
        self._rows += rows
        # A terminal redraws at most ten times a second: a write per page would slow small
        # pages. A log gets a line only every `every` seconds.
        if time.monotonic() - self._drawn >= (0.1 if self._tty else self._every):
            self._draw()

    def finish(self) -> None:
        self._draw()
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _text(self) -> str:
        elapsed = max(time.monotonic() - self._began, 1e-9)
        rate = (self._rows - self._initial) / elapsed
        if self._total is None:
            return f"{self._label:<12} {self._rows:>10,} rows  {rate:>9,.0f}/s  {elapsed:6.1f} s"
        left = max(self._total - self._rows, 0)
        eta = _clock(left / rate) if rate > 0 and left else "--:--" if left else "done"
        pct = min(100.0 * self._rows / self._total, 100.0) if self._total else 100.0
        filled = int(pct / 5)
        bar = f"[{'#' * filled}{'-' * (20 - filled)}] " if self._tty else ""
        return (
            f"{self._label:<12} {bar}{self._rows:>10,}/{self._total:,} rows ({pct:5.1f}%)  "
            f"{rate:>9,.0f}/s  ETA {eta}"
        )

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        self._stream.write("\r\x1b[K" + self._text() if self._tty else self._text() + "\n")
        self._stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
