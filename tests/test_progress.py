"""Progress: a bar on a terminal, a few plain lines in a file or a CI log, nothing when disabled."""

from __future__ import annotations

import io
import logging

import pytest

from caloforge.progress import PeriodicLines, progress_bar


class FakeClock:
    """Seconds that advance only when told to: line timing without sleeping or timing assertions."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_a_few_lines_ending_with_the_total() -> None:
    stream = io.StringIO()
    with progress_bar(10_000, "simulate", unit="shower", stream=stream) as bar:
        for _ in range(1000):
            bar.update(10)
    text = stream.getvalue()
    lines = text.splitlines()
    assert 1 <= len(lines) <= 12
    assert "\r" not in text  # no bar redraws in a log
    assert lines[-1].startswith("simulate: 10000/10000 showers (100 %), ")
    assert lines[-1].endswith("showers/s")


def test_disabled_writes_nothing_but_still_counts() -> None:
    for stream in (io.StringIO(), Terminal()):
        with progress_bar(10_000, "simulate", unit="shower", enabled=False, stream=stream) as bar:
            for _ in range(1000):
                bar.update(10)
            bar.set_postfix_str("ignored")
        assert stream.getvalue() == ""
        assert bar.n == 10_000


def test_terminal_gets_a_tqdm_bar() -> None:
    stream = Terminal()
    with progress_bar(50, "plots", unit="plot", stream=stream) as bar:
        for _ in range(50):
            bar.update(1)
        bar.set_postfix_str("done")
    text = stream.getvalue()
    assert "\r" in text and "plots" in text and "50/50" in text and "done" in text
    assert bar.n == 50


def test_one_line_per_tenth_of_the_total_with_times_and_rate() -> None:
    clock, lines = FakeClock(), []
    with PeriodicLines(10_000, "simulate", "shower", emit=lines.append, clock=clock) as bar:
        for _ in range(1000):
            clock.now += 1.0  # 10 showers per second
            bar.update(10)
    assert len(lines) == 10
    assert [line.split("(")[1].split(")")[0] for line in lines] == [f"{p} %" for p in range(10, 101, 10)]
    assert lines[3] == ("simulate: 4000/10000 showers (40 %), 6 min 40 s elapsed, ~10 min 00 s left, "
                        "10 showers/s")
    assert lines[-1] == "simulate: 10000/10000 showers (100 %), 16 min 40 s elapsed, 10 showers/s"


def test_quick_work_writes_only_its_final_line() -> None:
    clock, lines = FakeClock(), []
    with PeriodicLines(10_000, "info", "shower", emit=lines.append, clock=clock, min_seconds=2.0) as bar:
        for _ in range(1000):
            clock.now += 0.001
            bar.update(10)
    assert lines == ["info: 10000/10000 showers (100 %), 1.0 s elapsed, 10000 showers/s"]


def test_at_most_twelve_lines_whatever_the_updates() -> None:
    clock, lines = FakeClock(), []
    with PeriodicLines(7, "metrics", "stage", emit=lines.append, clock=clock) as bar:
        for _ in range(7):
            clock.now += 100.0
            bar.update(1)
    assert len(lines) == 7  # every stage is past the next tenth
    clock, lines = FakeClock(), []
    with PeriodicLines(1_000_000, "convert", "shower", emit=lines.append, clock=clock) as bar:
        for _ in range(100_000):
            clock.now += 0.5
            bar.update(10)
    assert len(lines) == 10


def test_postfix_is_on_the_next_line() -> None:
    clock, lines = FakeClock(), []
    with PeriodicLines(3, "classifier (low)", "epoch", emit=lines.append, clock=clock) as bar:
        for epoch in range(3):
            clock.now += 10.0
            bar.set_postfix_str(f"test accuracy 0.{epoch + 5}00")
            bar.update(1)
    assert lines[0].startswith("classifier (low): 1/3 epochs (33 %), 10 s elapsed, ~20 s left")
    assert lines[0].endswith(", test accuracy 0.500")
    assert lines[-1] == ("classifier (low): 3/3 epochs (100 %), 30 s elapsed, 10 s per epoch, "
                         "test accuracy 0.700")


def test_unknown_total_writes_a_line_every_interval() -> None:
    clock, lines = FakeClock(), []
    with PeriodicLines(None, "train", "step", emit=lines.append, clock=clock,
                       seconds_without_total=30.0) as bar:
        for _ in range(100):
            clock.now += 1.0
            bar.update(1)
    assert len(lines) == 4  # at 30, 60 and 90 s, then the final one
    assert lines[0] == "train: 30 steps, 30 s elapsed, 1 steps/s"
    assert lines[-1] == "train: 100 steps, 1 min 40 s elapsed, 1 steps/s"


def test_an_exception_ends_with_where_the_work_stopped() -> None:
    clock, lines = FakeClock(), []
    with pytest.raises(RuntimeError), PeriodicLines(100, "simulate", "shower", emit=lines.append,
                                                    clock=clock) as bar:
        clock.now += 1.0
        bar.update(4)
        raise RuntimeError
    assert lines == ["simulate: 4/100 showers (4 %), 1.0 s elapsed, 4 showers/s (stopped)"]


def test_nothing_done_nothing_written() -> None:
    stream = io.StringIO()
    with progress_bar(0, "simulate", unit="shower", stream=stream):
        pass
    assert stream.getvalue() == ""


def test_lines_can_go_to_a_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("caloforge.test_progress")
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger=logger.name):
        with PeriodicLines(20, "train", "step", emit=logger.info, clock=clock) as bar:
            for _ in range(20):
                clock.now += 5.0
                bar.update(1)
    messages = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert len(messages) == 10 and messages[-1].startswith("train: 20/20 steps (100 %)")
