"""eval.merge_runs: runs of one system on different questions, joined into one run folder
whose summary is the one a single run over all the questions would have had."""

from __future__ import annotations

import json

import pytest
from conftest import numbered_records as records
from conftest import write_eval_run

from eval.merge_runs import main, merge_runs
from medchat.errors import MedchatError


def test_merged_halves_summarise_as_one_run_over_all_questions(tmp_path):
    first, second = records("a", 7), records("b", 6)
    write_eval_run(tmp_path / "a", first, adapter="ad", split="all", max_new_tokens=64)
    write_eval_run(tmp_path / "b", second, adapter="ad", split="all", max_new_tokens=64)
    write_eval_run(tmp_path / "whole", first + second, adapter="ad", split="all", max_new_tokens=64)

    out = merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    merged = json.loads((out / "summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert merged["n"] == 13
    for key in ("base", "tuned", "paired"):
        assert merged[key] == whole[key], key
    assert merged["run"]["merged_from"] == ["a", "b"]
    config = json.loads((out / "config.json").read_text())
    assert config["n"] == 13 and config["merged_from"] == ["a", "b"]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [r["key"] for r in first + second]
    assert (out / "report.md").is_file() and (out / "similarity.png").is_file()


def test_runs_of_other_systems_or_the_same_questions_are_refused(tmp_path, capsys):
    write_eval_run(tmp_path / "a", records("a", 3), adapter="ad", split="all", max_new_tokens=64)
    write_eval_run(tmp_path / "b", records("b", 3), adapter="other", split="all", max_new_tokens=64)
    write_eval_run(tmp_path / "c", records("a", 2, 1), adapter="ad", split="all", max_new_tokens=64)
    with pytest.raises(MedchatError, match=r"other settings than a \(adapter\)"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m1")
    with pytest.raises(MedchatError, match="is in both a and c"):
        merge_runs([tmp_path / "a", tmp_path / "c"], tmp_path / "m2")
    assert (
        main([str(tmp_path / "a"), str(tmp_path / "nowhere"), "--out", str(tmp_path / "m3")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a finished evaluation run" in err
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
