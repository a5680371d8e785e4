"""bench/train_throughput.py's summary of alternating rounds: each step's fastest time where
every round trains the same batches, else the median run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "train_throughput.py"
spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
train_throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_throughput)


def run(steps: list[float], peak: float) -> dict:
    return {
        "trained_tokens": 120,
        "seconds": sum(steps),
        "trained_tokens_per_s": round(120 / sum(steps), 1),
        "step_seconds": steps,
        "peak_rss_mb": peak,
    }


def test_fastest_steps_times_each_step_by_its_fastest_round():
    # a burst of others' work slowed step 2 of the first round and step 1 of the second
    runs = [run([4.0, 30.0, 6.0], 3000.0), run([20.0, 5.0, 6.5], 3100.0)]
    result = train_throughput.fastest_steps(runs)
    assert result["step_seconds"] == [4.0, 5.0, 6.0]
    assert result["seconds"] == 15.0
    assert result["trained_tokens_per_s"] == 8.0
    assert result["peak_rss_mb"] == 3000.0  # the other figures are the median run's
    assert runs[0]["seconds"] == 40.0  # the runs themselves are left as measured


def test_median_run_is_the_middle_of_an_odd_count_and_the_slower_of_two():
    runs = [run([10.0], 1.0), run([4.0], 2.0), run([6.0], 3.0)]
    assert train_throughput.median_run(runs)["peak_rss_mb"] == 3.0
    assert train_throughput.median_run(runs[:2])["peak_rss_mb"] == 1.0
