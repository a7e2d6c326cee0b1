"""Benchmark plumbing shared by the inference and node benchmarks."""

from __future__ import annotations

import pytest
import torch

from bench.common import warmup_count
from bench.inference import timed


def test_warmup_auto_is_one_on_an_accelerator_and_none_on_a_cpu():
    assert warmup_count("auto", torch.device("cpu")) == 0
    assert warmup_count("auto", torch.device("cuda")) == 1
    assert warmup_count("3", torch.device("cpu")) == 3
    with pytest.raises(SystemExit, match="--warmup must be 'auto' or a count >= 0"):
        warmup_count("-1", torch.device("cpu"))


def test_timed_runs_the_warmups_untimed_then_times_one_call():
    calls = []

    def edit():
        calls.append(len(calls))
        return f"result {len(calls)}"

    result, seconds, peak = timed(edit, torch.device("cpu"), "2")
    assert calls == [0, 1, 2] and result == "result 3"
    assert seconds >= 0 and peak > 0
