"""Progress of long work: a live bar on a terminal, a few plain lines in a log file or a CI log.

A tqdm bar redraws itself many times a second; written to a file or a CI log, every redraw becomes
text (one demo log had ~8,600 lines of progress). So there is one helper, ``progress_bar``, and every
long loop in caloforge uses it:

- stderr is a terminal: a tqdm bar on it, as usual;
- stderr is a file, a pipe or a CI log: ``PeriodicLines``, at most one line per tenth of the total
  (and at most one every ``min_seconds``), then one final line, so at most 10 lines whatever the
  total::

      simulate: 4000/10000 showers (40 %), 12 s elapsed, ~18 s left, 330 showers/s
      simulate: 10000/10000 showers (100 %), 30 s elapsed, 333 showers/s

  Without a total, a line at most every ``seconds_without_total`` seconds.

``PeriodicLines`` needs no tqdm and writes through any ``emit(line)`` callable, e.g. a logger's
``info``, so a Lightning callback (or anything else that logs) can reuse it::

    lines = PeriodicLines(total=max_steps, desc="train", unit="step", emit=logging.getLogger(__name__).info)
    ...                                    # per optimiser step:
    lines.set_postfix_str(f"loss {loss:.4f}")  # shown on the next line written
    lines.update(1)
    ...
    lines.close()                          # the final line

Both kinds (and the silent one ``enabled=False`` gives) share one interface, ``Progress``:
``update(n)``, ``set_postfix_str(text)``, ``close()``, ``n`` and use as a context manager.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, TextIO

__all__ = ["PeriodicLines", "Progress", "is_terminal", "progress_bar"]


class Progress(Protocol):
    """What ``progress_bar`` returns: count work done, show a short status, finish."""

    @property
    def n(self) -> int:
        """Units done so far."""

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""

    def set_postfix_str(self, text: str) -> None:
        """Show ``text`` after the counts (e.g. ``"loss 0.123"``); replaces the previous one."""

    def close(self) -> None:
        """Finish: the bar's last redraw, or the final line."""

    def __enter__(self) -> Progress: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None: ...


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (streams without ``isatty`` are not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # ValueError: a closed stream
        return False


def _duration(seconds: float) -> str:
    """'0.4 s', '12 s', '3 min 05 s', '2 h 07 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _plural(unit: str) -> str:
    return unit if unit == "it" or unit.endswith("s") else unit + "s"


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"  # 330, 12.5, 1.25


class PeriodicLines:
    """Progress as a few plain lines, for log files, pipes and CI logs (no tqdm needed).

    With a known ``total``, a line is written when the count passes the next ``fraction`` of the total
    (10 %, 20 %, ...) and at least ``min_seconds`` have passed since the previous line, so quick work
    writes only its final line and long work at most ``1 / fraction - 1`` lines before it. Without a
    total, a line at most every ``seconds_without_total`` seconds. ``close()`` writes the final line
    (nothing when nothing was counted); used as a context manager, a block left by an exception ends
    with a line saying where the work stopped.

    Args:
        total: units of the whole work, or None when unknown.
        desc: what is being done; starts every line (``"simulate"``).
        unit: a singular noun for one unit (``"shower"``); lines use its plural (``"showers"``).
        emit: receives each line without a newline, e.g. ``logger.info`` or ``print``.
        fraction: part of the total between lines.
        min_seconds: least time between two lines before the final one.
        seconds_without_total: time between lines when ``total`` is None.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        emit: Callable[[str], object] | None = None,
        *,
        fraction: float = 0.1,
        min_seconds: float = 2.0,
        seconds_without_total: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self._emit = emit if emit is not None else _write_to(sys.stderr)
        self.fraction = fraction
        self.min_seconds = min_seconds
        self.seconds_without_total = seconds_without_total
        self._clock = clock
        self._start = clock()
        self._last_time = self._start
        self._last_step = 0  # index of the last fraction of the total a line was written for
        self._last_n: int | None = None  # count on the last line written
        self._postfix = ""
        self._n = 0
        self._closed = False

    @property
    def n(self) -> int:
        return self._n

    def update(self, n: int = 1) -> None:
        self._n += n
        now = self._clock()
        if self.total is None:
            if now - self._last_time >= self.seconds_without_total:
                self._write(now)
            return
        if self.total <= 0 or self._n >= self.total:
            return  # the final line is close()'s
        step = int(self._n / (self.fraction * self.total))
        if step > self._last_step and now - self._last_time >= self.min_seconds:
            self._last_step = step
            self._write(now)

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text

    def line(self, now: float | None = None, final: bool = False) -> str:
        """The line that describes the progress now (what ``update`` and ``close`` write)."""
        elapsed = (self._clock() if now is None else now) - self._start
        units = _plural(self.unit)
        if self.total is not None:
            text = f"{self.desc}: {self._n}/{self.total} {units}"
            if self.total > 0:
                text += f" ({100 * self._n / self.total:.0f} %)"
        else:
            text = f"{self.desc}: {self._n} {units}"
        text += f", {_duration(elapsed)} elapsed"
        rate = self._n / elapsed if elapsed > 0 else 0.0
        if not final and self.total is not None and rate > 0 and self._n < self.total:
            text += f", ~{_duration((self.total - self._n) / rate)} left"
        if rate >= 1:
            text += f", {_rate(rate)} {units}/s"
        elif rate > 0:
            text += f", {_duration(1 / rate)} per {self.unit}"  # slow units: '2 min 08 s per stage'
        if self._postfix:
            text += f", {self._postfix}"
        return text

    def _write(self, now: float, final: bool = False, suffix: str = "") -> None:
        self._emit(self.line(now, final) + suffix)
        self._last_time = now
        self._last_n = self._n

    def close(self, stopped: bool = False) -> None:
        """Write the final line, once; ``stopped``: the work ended early (an exception)."""
        if self._closed:
            return
        self._closed = True
        if self._n == 0 and self._last_n is None and not stopped:
            return  # nothing was done, nothing to report
        if self._last_n != self._n or stopped:
            self._write(self._clock(), final=True, suffix=" (stopped)" if stopped else "")

    def __enter__(self) -> PeriodicLines:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.close(stopped=exc_type is not None)


def _write_to(stream: TextIO) -> Callable[[str], None]:
    def emit(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return emit


class _Bar:
    """A tqdm bar behind the ``Progress`` interface."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO, leave: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave, dynamic_ncols=True)

    @property
    def n(self) -> int:
        return int(self._bar.n)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_postfix_str(self, text: str) -> None:
        self._bar.set_postfix_str(text)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.close()


class _Silent:
    """Counts and shows nothing (``enabled=False``)."""

    def __init__(self) -> None:
        self._n = 0

    @property
    def n(self) -> int:
        return self._n

    def update(self, n: int = 1) -> None:
        self._n += n

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        pass


def progress_bar(
    total: int | None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    stream: TextIO | None = None,
    leave: bool = True,
) -> Progress:
    """Progress of a long loop: a tqdm bar when ``stream`` is a terminal, else ``PeriodicLines`` on it.

    Args:
        total: units of the whole work (None when unknown).
        desc: what is being done (``"simulate"``).
        unit: a singular noun for one unit (``"shower"``).
        enabled: False gives an object that writes nothing (same interface).
        stream: where progress goes; default ``sys.stderr`` at the time of the call (stdout is for
            results).
        leave: keep the finished bar on the terminal (False for bars inside other bars); the plain
            lines always end with their final line.

    Example::

        with progress_bar(total=n, desc="simulate", unit="shower") as bar:
            for chunk in chunks:
                ...
                bar.update(len(chunk))
    """
    if not enabled:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        return _Bar(total, desc, unit, stream, leave)
    return PeriodicLines(total, desc, unit, emit=_write_to(stream))
