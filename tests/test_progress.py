"""TerminalSink: a tqdm bar with loss and ETA on a terminal, plain lines at a stated cadence elsewhere."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from tasks.progress import TerminalSink, duration, logs_above_bars, result_lines


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def train(sink: TerminalSink, clock: Clock, steps: range, total: int, prefix: str = "") -> None:
    """What fit() does at each logging point: the window's metrics, then progress; one second a step."""
    for step in steps:
        clock.now += 1.0
        sink.log_metrics(
            {f"{prefix}loss": 7.0 - step / 100, f"{prefix}tokens_per_s": 5400.0, "lr": 1e-4}, step
        )
        sink.progress(step, total)


def logged_steps(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"step (\d+)/", text)]


def test_plain_lines_every_tenth_and_every_30_s_without_carriage_returns() -> None:
    out, clock = io.StringIO(), Clock()
    with TerminalSink("pretrain", out, clock=clock) as sink:
        train(sink, clock, range(1, 251), total=1000)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    # the first report, then 30 s of silence at most, and each new tenth (100, 200); the last step on close
    assert logged_steps(text) == [1, 31, 61, 91, 100, 130, 160, 190, 200, 230, 250]
    lines = text.splitlines()
    assert lines[1] == "pretrain step 31/1000 loss 6.6900 tokens/s 5400 eta 16m09s"  # 969 steps at 1 step/s
    assert all(line.startswith("pretrain step ") for line in lines)


def test_plain_lines_of_a_fast_loop_come_by_tenths_and_end_with_its_time() -> None:
    out, clock = io.StringIO(), Clock()
    with TerminalSink("pretrain", out, clock=clock, every_s=1e9) as sink:
        train(sink, clock, range(5, 105, 5), total=100)
    lines = out.getvalue().splitlines()
    assert logged_steps(out.getvalue()) == [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]  # none twice at close
    assert lines[-1] == "pretrain step 100/100 loss 6.0000 tokens/s 5400 in 19s"


def test_each_finetuning_task_is_a_loop_of_its_own() -> None:
    out, clock = io.StringIO(), Clock()
    with TerminalSink("finetune-pretrained", out, clock=clock, every_s=1e9) as sink:
        train(sink, clock, range(1, 8), total=12, prefix="SST-2/")  # stopped early by its budget
        train(sink, clock, range(1, 13), total=12, prefix="MRPC/")
    lines = out.getvalue().splitlines()
    sst2 = [line for line in lines if line.startswith("finetune-pretrained SST-2 step")]
    mrpc = [line for line in lines if line.startswith("finetune-pretrained MRPC step")]
    assert sst2[-1].startswith("finetune-pretrained SST-2 step 7/12 loss 6.9300 tokens/s 5400")
    assert len(mrpc) >= 2 and mrpc[-1].startswith("finetune-pretrained MRPC step 12/12 ")
    assert lines.index(sst2[-1]) < lines.index(mrpc[0])  # SST-2's last line comes before MRPC starts


def test_data_stage_progress_has_counts_and_eta_without_loss() -> None:
    out, clock = io.StringIO(), Clock()
    with TerminalSink("dedup", out, clock=clock) as sink:
        for done in range(100, 1001, 100):
            clock.now += 2.0
            sink.progress(done, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "dedup 100/1000"  # no rate yet
    assert lines[1] == "dedup 200/1000 eta 16s"
    assert lines[-1] == "dedup 1000/1000 in 18s"


def test_results_are_printed_as_they_arrive_one_line_per_task() -> None:
    out = io.StringIO()
    sink = TerminalSink("evaluate-pretrained", out)
    sink.log_metrics({"SST-2/accuracy": 100.0}, step=0)
    assert out.getvalue() == "evaluate-pretrained SST-2: accuracy 100\n"  # at once, not at the end
    sink.log_metrics({"MRPC/accuracy": 54.0, "MRPC/f1": 63.4921, "glue_avg": 55.74}, step=0)
    assert out.getvalue().splitlines()[1:] == [
        "evaluate-pretrained MRPC: accuracy 54  f1 63.49",
        "evaluate-pretrained: glue_avg 55.74",
    ]


def test_terminal_gets_a_tqdm_bar_with_loss_speed_and_eta() -> None:
    out, clock = FakeTerminal(), Clock()
    with TerminalSink("pretrain", out, clock=clock) as sink:
        train(sink, clock, range(1, 41), total=100)
        sink.log_metrics({"glue_avg": 55.0}, step=0)  # a line above the bar, not through it
    text = out.getvalue()
    assert "\r" in text  # redrawn in place
    last = text.rsplit("\r", 1)[-1]
    assert last.startswith("pretrain:  40%|") and " 40/100 " in last
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, ", last), last  # elapsed < ETA
    assert "loss 6.6000" in last and "tokens/s 5400" in last
    assert "pretrain: glue_avg 55\n" in text
    assert not re.search(r"pretrain step \d+/100", text)  # no plain lines on a terminal


def test_log_lines_land_above_the_bar_not_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    out, clock = FakeTerminal(), Clock()
    monkeypatch.setattr(sys, "stderr", out)
    console = logging.StreamHandler(out)  # what logging.basicConfig sets up in the CLI
    logging.root.addHandler(console)
    try:
        with logs_above_bars(), TerminalSink("pretrain", clock=clock) as sink:
            train(sink, clock, range(1, 3), total=10)
            logging.getLogger("tasks.engine.loop").warning("evaluating at step 2")
        assert console in logging.root.handlers  # restored afterwards
    finally:
        logging.root.removeHandler(console)
    before, after = out.getvalue().split("evaluating at step 2\n")
    assert before.endswith("\r") and "step/s" in before  # the bar was cleared first ...
    assert after.startswith("\rpretrain:  20%|")  # ... and redrawn below the line


def test_helpers() -> None:
    assert [duration(s) for s in (0, 45.4, 112, 3600 + 300)] == ["0s", "45s", "1m52s", "1h05m"]
    assert result_lines("x", {"a/b": 0.5}) == ["x a: b 0.5"]
