"""Batch manifests (JSONL, CSV) and the out folder's bookkeeping, without a model."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from batch_support import write_jsonl

from exemplar_core.batch.jobs import (
    MANIFEST_FIELDS,
    ManifestError,
    default_id,
    job_settings,
    read_manifest,
)
from exemplar_core.batch.results import (
    ResultsLog,
    RunFingerprint,
    load_results,
    output_path,
    plan,
    record,
)
from exemplar_core.batch.run import Shard, current_shard
from exemplar_core.editor import EditSettingError
from exemplar_core.files import DestinationError

ROW = {"source": "a.png", "mask": "m.png", "exemplar": "e.png"}


def test_jsonl_and_csv_manifests_give_the_same_jobs(tmp_path):
    write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "one", **ROW, "seed": 3, "similarity": 2.5, "color_match": True},
            {**ROW, "exemplar_mask": "em.png"},
        ],
    )
    (tmp_path / "m.csv").write_text(
        "id,source,mask,exemplar,exemplar_mask,seed,similarity,color_match\n"
        "one,a.png,m.png,e.png,,3,2.5,true\n"
        ",a.png,m.png,e.png,em.png,,,\n"
    )
    from_jsonl, problems_jsonl = read_manifest(tmp_path / "m.jsonl")
    from_csv, problems_csv = read_manifest(tmp_path / "m.csv")
    assert problems_jsonl == problems_csv == []
    # ids: given, or from the line the job is on (the CSV header is line 1)
    assert [job.id for job in from_jsonl] == ["one", default_id(2)] == ["one", "line-000002"]
    assert [job.id for job in from_csv] == ["one", "line-000003"]
    defaults = {"steps": 2, "seed": 0, "similarity": 5.0, "color_match": False}
    for jobs in (from_jsonl, from_csv):
        first, second = jobs
        assert first.source == tmp_path / "a.png" and first.exemplar_mask is None
        assert second.exemplar_mask == tmp_path / "em.png"
        settings = job_settings(first, defaults)
        assert (settings.seed, settings.similarity, settings.color_match) == (3, 2.5, True)
        assert settings.steps == 2  # the command line's default
        assert job_settings(second, defaults).seed == 0


def test_manifest_paths_resolve_against_base_when_given(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [ROW])
    (job,), _ = read_manifest(tmp_path / "m.jsonl", base=tmp_path / "data")
    assert job.source == tmp_path / "data" / "a.png"


def test_each_bad_manifest_line_is_a_problem_naming_its_line(tmp_path):
    write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "a", **ROW},
            {"id": "a", **ROW},
            {"id": "b", **ROW, "stepz": 3},
            {"id": "c", "source": "a.png", "mask": "m.png"},
            {"id": "../evil", **ROW},
            {"id": "d", **ROW},
        ],
        extra_lines=('{"id": "e", "source": ', "[1, 2]"),
    )
    jobs, problems = read_manifest(tmp_path / "m.jsonl")
    assert [job.id for job in jobs] == ["a", "d"]
    messages = {problem.line: str(problem) for problem in problems}
    assert "duplicate id 'a' (first on line 1)" in messages[2]
    assert "unknown setting 'stepz' (did you mean 'steps'?)" in messages[3]
    assert "no exemplar given" in messages[4]
    assert "'../evil' has characters other than letters" in messages[5]
    assert "line 7: not valid JSON" in messages[7]
    assert "a JSON list, not an object" in messages[8]
    assert [problem.job_id for problem in problems][:3] == ["a", "b", "c"]


def test_csv_problems_a_row_of_the_wrong_width_and_an_unknown_column(tmp_path):
    (tmp_path / "m.csv").write_text("id,source,mask,exemplar\na,a.png,m.png,e.png,extra\n")
    jobs, (problem,) = read_manifest(tmp_path / "m.csv")
    assert jobs == [] and problem.line == 2
    assert "the row has 5 cells but the header names 4 columns" in problem.message
    (tmp_path / "bad.csv").write_text("source,mask,exemplar,sede\na.png,m.png,e.png,1\n")
    with pytest.raises(ManifestError, match=r"unknown column 'sede' \(did you mean 'seed'\?\)"):
        read_manifest(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.jsonl", None, "manifest not found"),
        ("empty.jsonl", "\n\n", "has no jobs"),
        ("m.txt", "x", "expected .jsonl"),
    ],
)
def test_an_unreadable_manifest_is_refused(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / name)


def test_a_bad_setting_fails_its_job_with_a_message_naming_the_setting_and_line(tmp_path):
    write_jsonl(
        tmp_path / "m.jsonl",
        [{**ROW, "steps": "many"}, {**ROW, "color_match": "maybe"}, {**ROW, "scheduler": "x"}],
    )
    jobs, _ = read_manifest(tmp_path / "m.jsonl")
    expected = [
        "steps (manifest line 1) must be a whole number",
        "color_match (manifest line 2) must be true or false, got 'maybe'",
        "scheduler (manifest line 3) must be one of pndm",
    ]
    for job, message in zip(jobs, expected, strict=True):
        with pytest.raises(EditSettingError, match=re.escape(message)):
            job_settings(job, {"steps": 2})
    # a bad command-line default is named by its option
    with pytest.raises(EditSettingError, match="--feather must be"):
        job_settings(dataclasses.replace(jobs[0], settings={}), {"feather": -1})


def test_ids_that_differ_only_in_letter_case_are_duplicates(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"id": "A", **ROW}, {"id": "a", **ROW}])
    jobs, problems = read_manifest(tmp_path / "m.jsonl")
    assert [job.id for job in jobs] == ["A"]
    (problem,) = problems
    assert problem.line == 2 and problem.job_id == "a"
    assert "differs from 'A' (line 1) only in letter case" in problem.message


def test_whole_number_floats_of_json_are_whole_numbers(tmp_path):
    write_jsonl(
        tmp_path / "m.jsonl",
        [{**ROW, "seed": 7.0, "steps": 2.0, "size": 64.0}, {**ROW, "seed": 7.5}],
    )
    whole, fraction = read_manifest(tmp_path / "m.jsonl")[0]
    settings = job_settings(whole, {})
    assert (settings.seed, settings.steps, settings.size) == (7, 2, 64)
    assert all(type(value) is int for value in (settings.seed, settings.steps, settings.size))
    with pytest.raises(EditSettingError, match=re.escape("seed (manifest line 2) must be a whole")):
        job_settings(fraction, {})


def test_manifest_fields_are_the_paths_and_every_edit_setting():
    assert MANIFEST_FIELDS[:5] == ("id", "source", "mask", "exemplar", "exemplar_mask")
    assert {"seed", "similarity", "steps", "eta", "paste_back"} <= set(MANIFEST_FIELDS)
    assert "names" not in MANIFEST_FIELDS


def test_results_log_tolerates_a_torn_last_line_and_keeps_the_last_attempt(tmp_path):
    with ResultsLog(tmp_path) as log:
        log.append(record("a", error="boom", stage="load", time="2026-01-01T00:00:01"))
        log.append(record("b", output="b.png", time="2026-01-01T00:00:02"))
    with open(tmp_path / "results.jsonl", "a") as handle:
        handle.write('{"id": "a", "outp')  # a run killed mid-line
    with ResultsLog(tmp_path, rank=1) as log:  # another process's file
        log.append(record("a", output="a.png", time="2026-01-01T00:00:03"))
    with ResultsLog(tmp_path) as log:  # a resumed run starts a fresh line
        log.append(record("c", output="c.png", time="2026-01-01T00:00:04"))
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["id"] == "c"
    done = load_results(tmp_path)
    assert set(done) == {"a", "b", "c"}
    assert done["a"]["output"] == "a.png" and done["a"]["error"] is None


def test_plan_skips_finished_and_failed_jobs_unless_asked(tmp_path):
    jobs, _ = read_manifest(
        write_jsonl(tmp_path / "m.jsonl", [{"id": i, **ROW} for i in ("ok", "bad", "gone", "new")])
    )
    for name in ("ok", "bad"):
        output_path(tmp_path, name).write_bytes(b"png")
    done = {
        "ok": record("ok", output="ok.png"),
        "bad": record("bad", error="x"),
        "gone": record("gone", output="gone.png"),  # its output was deleted since
    }

    def ids(result):
        return [[job.id for job in part] for part in result]

    assert ids(plan(jobs, done, False, False, tmp_path)) == [["gone", "new"], ["ok", "bad"]]
    assert ids(plan(jobs, done, True, False, tmp_path)) == [["bad", "gone", "new"], ["ok"]]
    assert ids(plan(jobs, done, False, True, tmp_path)) == [["ok", "bad", "gone", "new"], []]


def test_a_folder_of_a_run_with_other_settings_is_refused_naming_them(tmp_path):
    checkpoint = {"name": "m.safetensors", "size": 1, "sha256_first_mib": "0"}
    first = RunFingerprint(checkpoint, {"steps": 2, "seed": 0})
    first.claim(tmp_path, overwrite=False)
    first.claim(tmp_path, overwrite=False)  # the same settings: resumed
    other = RunFingerprint(checkpoint, {"steps": 3, "seed": 0})
    with pytest.raises(DestinationError, match=r"steps: 2 in the folder, 3 now") as err:
        other.claim(tmp_path, overwrite=False)
    assert "seed" not in str(err.value)
    other.claim(tmp_path, overwrite=True)
    assert json.loads((tmp_path / "batch-run.json").read_text())["defaults"]["steps"] == 3


def test_shards_split_the_id_sorted_jobs_and_cover_them_once(tmp_path):
    rows = [{"id": f"k{i}", **ROW} for i in (3, 0, 4, 1, 2)]
    jobs, _ = read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    parts = [[job.id for job in Shard(rank, 2).take(jobs)] for rank in (0, 1)]
    assert parts == [["k0", "k2", "k4"], ["k1", "k3"]]
    assert current_shard({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Shard(1, 2, 1)
    assert current_shard({}) == Shard()
