"""The batched-throughput benchmark runs end to end at the tiniest size and reports its fields."""

from __future__ import annotations

import functools
import json

import pytest

from bench import batch as bench_batch


@pytest.fixture()
def in_process(monkeypatch):
    """Workers run in this process (the model loaded once) instead of fresh processes."""
    monkeypatch.setattr(bench_batch, "build_model", functools.cache(bench_batch.build_model))
    calls: list[list[str]] = []

    def alternate(sides, repeats):
        results = {name: [] for name in sides}
        for _ in range(repeats):
            for name, argv in sides.items():
                assert argv[:2] == ["bench.batch", "worker"]
                calls.append(argv)
                results[name].append(bench_batch.worker_main(argv[2:]))
        return results

    monkeypatch.setattr(bench_batch, "alternate", alternate)
    return calls


def test_report_gives_edits_per_second_per_batch_size_and_the_ratio(tmp_path, in_process):
    out = tmp_path / "batch.json"
    argv = ["--sizes", "1,2", "--jobs", "2", "--steps", "1", "--repeats", "1"]
    assert bench_batch.main([*argv, "--warmup", "0", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "batch" and report["architecture"] == "mini"
    assert report["sizes"] == [1, 2] and report["jobs"] == 2 and report["steps"] == 1
    assert report["size"] == "64x64"  # the embedded model's native size
    assert [argv[2] for argv in in_process] == ["1", "2"]
    for name, batch in (("batch1", 1), ("batch2", 2)):
        (run,) = report["runs"][name]
        assert run["batch"] == batch and run["edits_per_s"] > 0 and run["peak_mb"] > 0
        assert run["edits_per_s"] == pytest.approx(2 / run["seconds"])
        assert report["median"][name]["edits_per_s"] == run["edits_per_s"]
    ratio = report["median"]["batch2"]["edits_per_s"] / report["median"]["batch1"]["edits_per_s"]
    assert report["throughput_ratio"] == {"batch1": 1.0, "batch2": pytest.approx(ratio)}
    assert "machine" in report


@pytest.mark.parametrize("sizes", ["1,1", "0,4", "4,x", ""])
def test_bad_batch_sizes_are_refused_with_the_rule(sizes, capsys):
    with pytest.raises(SystemExit):
        bench_batch.main(["--sizes", sizes])
    assert "distinct whole numbers >= 1" in capsys.readouterr().err


def test_fewer_jobs_than_the_largest_batch_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_batch.main(["--sizes", "1,8", "--jobs", "4"])
    assert "--jobs must be at least the largest batch size (8)" in capsys.readouterr().err
