"""Progress on the terminal: a live tqdm bar on a terminal, plain periodic lines anywhere else.

Why: MLflow and the Prefect progress artifact show a run only in their UIs, so ``bertflow
run`` in a shell printed nothing for minutes while it trained. ``TerminalSink`` is one more
``MetricSink`` beside them (``tasks.run.contract.StageSink`` hands every call to all of
them), so the terminal shows the numbers MLflow records, from the same calls.

What it shows, for each long loop of a stage (the loops call ``progress(done, total)``):

- on a terminal (the stream's ``isatty()``): a tqdm bar with step/total, the loss and
  tokens/s or examples/s of the latest ``log_metrics``, elapsed time and ETA;
- elsewhere (CI, a Prefect worker, output piped to a file): no bar and no carriage
  return, but a line such as ``pretrain step 120/1041 loss 6.2100 tokens/s 5400 eta 1m52s``
  at the loop's first report, each time it passes another tenth of its total, at least
  every ``every_s`` seconds (30) in between, and at its end;
- one-off figures (metrics logged at step 0: a stage's results, an evaluation's scores),
  printed as they are logged, one line per task (``evaluate-pretrained SST-2: accuracy 100``).

A loop is told apart from the next one of the same stage (fine-tuning trains each task in
turn) by its metric prefix (``SST-2/loss``) or by its step count going back.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

LINE_EVERY_S = 30.0  # the longest silence between two plain lines while a loop reports
LINE_PARTS = 10  # and a line each time a loop passes another tenth of its total
SPEEDS = (("tokens_per_s", "tokens/s"), ("examples_per_s", "examples/s"))


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or odd stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def logs_above_bars() -> AbstractContextManager[None]:
    """On a terminal, route the root logger's console output through tqdm, so a log line printed
    while a bar is drawn lands above it instead of inside it. Entered once per command (by the
    CLI), not per bar: stages of parallel sweep trials draw bars from several threads."""
    return logging_redirect_tqdm() if is_terminal(sys.stderr) else nullcontext()


def screen(stream: TextIO) -> tuple[int, int]:
    """The terminal's (columns, rows); 0 when unknown (a 0x0 pty, as ``script`` or ``docker -t`` may give)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError
        return 0, 0
    return size.columns, size.lines


def duration(seconds: float) -> str:
    """``45s``, ``1m52s``, ``2h05m``: short enough for a log line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def number(value: float) -> str:
    """Integers as integers, anything else with four significant digits."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def loss_key(metrics: Mapping[str, float]) -> str | None:
    """The key of the training loss (``loss``, ``SST-2/loss``, ``seed0/SST-2/loss``), if any."""
    return next((k for k in metrics if k.rsplit("/", 1)[-1] == "loss"), None)


def loop_name(metrics: Mapping[str, float]) -> str:
    """The prefix a loop's metrics carry (``SST-2`` for ``SST-2/loss``); '' for none."""
    key = loss_key(metrics)
    return key.rpartition("/")[0] if key else ""


def describe(metrics: Mapping[str, float]) -> str:
    """``loss 6.2100 tokens/s 5400``: the loss and speed among ``metrics`` (others stay in MLflow)."""
    parts = []
    key = loss_key(metrics)
    if key is not None:
        parts.append(f"loss {metrics[key]:.4f}")
    prefix = loop_name(metrics)
    for name, label in SPEEDS:
        value = metrics.get(f"{prefix}/{name}" if prefix else name)
        if value is not None:
            parts.append(f"{label} {value:.0f}")
    return " ".join(parts)


def result_lines(label: str, metrics: Mapping[str, float]) -> list[str]:
    """One line per task of one-off figures: ``SST-2/accuracy`` and ``SST-2/f1`` share a line."""
    groups: dict[str, list[str]] = {}
    for key, value in metrics.items():
        task, _, name = key.rpartition("/")
        groups.setdefault(task, []).append(f"{name} {number(float(value))}")
    return [f"{label} {task}: {'  '.join(parts)}" if task else f"{label}: {'  '.join(parts)}"
            for task, parts in groups.items()]  # fmt: skip


@dataclass
class Loop:
    """What one loop has shown so far."""

    name: str
    started: float  # clock time of its first report
    first_done: int  # its step count then (a resumed run starts past 0)
    done: int = 0
    total: int = 0
    last_line: float = -math.inf  # clock time of the last plain line
    last_tenth: int = -1  # the tenth of total the last plain line was in
    shown: int = -1  # the step count the last plain line showed
    metrics: dict[str, float] = field(default_factory=dict)
    bar: tqdm | None = None

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate since the first report (None before there is a rate)."""
        steps, seconds = self.done - self.first_done, now - self.started
        if steps <= 0 or seconds <= 0:
            return None
        return max(self.total - self.done, 0) * seconds / steps


def tenth(loop: Loop) -> int:
    """Which tenth of its total a loop is in (10 at the end)."""
    return loop.done * LINE_PARTS // max(loop.total, 1)


class TerminalSink:
    """A ``MetricSink`` that draws progress on ``stream`` (default: stderr, where logging goes).

    One per stage run, closed when the stage ends (``with TerminalSink(...)``): the bar of
    its last loop is finished then, and nothing is kept between stages.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        every_s: float = LINE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.bars = is_terminal(self.stream)
        self.every_s = every_s
        self.clock = clock
        self.latest: dict[str, float] = {}  # the metrics since the last progress report
        self.loop: Loop | None = None

    def __enter__(self) -> TerminalSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if step == 0:  # one-off figures: results, shown now
            for line in result_lines(self.label, metrics):
                self.write(line)
            return
        self.latest.update({k: float(v) for k, v in metrics.items()})

    def progress(self, done: int, total: int) -> None:
        name = loop_name(self.latest) if self.latest else (self.loop.name if self.loop else "")
        if self.loop is None or done < self.loop.done or name != self.loop.name:
            self.close()
            self.loop = Loop(name=name, started=self.clock(), first_done=done)
        loop = self.loop
        loop.done, loop.total = done, total
        loop.metrics.update(self.latest)
        self.latest = {}
        if self.bars:
            self.draw(loop)
        elif self.line_due(loop):
            self.print_line(loop)

    def close(self) -> None:
        """Finish the current loop: close its bar, or print its last line if not printed yet."""
        loop, self.loop = self.loop, None
        if loop is None:
            return
        if loop.bar is not None:
            loop.bar.close()
        elif not self.bars and loop.shown != loop.done:
            self.print_line(loop)

    def title(self, loop: Loop) -> str:
        return f"{self.label} {loop.name}" if loop.name else self.label

    def draw(self, loop: Loop) -> None:
        if loop.bar is None:
            unit = "step" if loss_key(loop.metrics) else "it"
            cols, rows = screen(self.stream)  # tqdm hides every bar on a terminal of 0 rows
            loop.bar = tqdm(total=loop.total, initial=loop.done, desc=self.title(loop), unit=unit,
                            file=self.stream, dynamic_ncols=cols > 0, ncols=None if cols else 100,
                            nrows=None if rows else 24, leave=True)  # fmt: skip
        bar = loop.bar
        if bar.total != loop.total:  # a minutes budget re-estimates its step count
            bar.total = loop.total
        bar.set_postfix_str(describe(loop.metrics), refresh=False)
        bar.update(loop.done - bar.n)

    def line_due(self, loop: Loop) -> bool:
        """First report, a new tenth of the total, ``every_s`` since the last line, or the end."""
        if loop.done == loop.shown:
            return False
        if loop.done >= loop.total:
            return True
        return tenth(loop) > loop.last_tenth or self.clock() - loop.last_line >= self.every_s

    def print_line(self, loop: Loop) -> None:
        now = self.clock()
        steps = "step " if loss_key(loop.metrics) else ""
        parts = [self.title(loop), f"{steps}{loop.done}/{loop.total}", describe(loop.metrics)]
        eta = loop.eta(now)
        if loop.done >= loop.total:
            parts.append(f"in {duration(now - loop.started)}")
        elif eta is not None:
            parts.append(f"eta {duration(eta)}")
        self.write(" ".join(p for p in parts if p))
        loop.last_line, loop.last_tenth, loop.shown = now, tenth(loop), loop.done

    def write(self, line: str) -> None:
        """A whole line; on a terminal through tqdm, so it lands above any bar instead of through it."""
        if self.bars:
            tqdm.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()
