"""Curation beyond the paper (issue #12): duplicate questions (`adamllm format --dedup exact|near`) and
verdict confidence (`--min_yes_prob`). Run folders are written by hand; no model runs."""

import math

import pytest
from builders import NEAR, SAME, logprobs_for, make_run, write_rows
from conftest import read_json, read_jsonl

from adamllm.stage2 import dedup
from adamllm.stage2.curate import yes_prob
from adamllm.stage2.dedup import RankOrder, normalise_question
from adamllm.stage2.format import FormatArgs, run_format

FINAL = "image_caption_and_synthetic_task.json"


def read_rows(run):
    return read_jsonl(run["data"])


def fmt(run, **kw):
    summary = run_format(
        FormatArgs(data_path=str(run["data"]), image_folder=str(run["images"]), output=str(run["final"]), **kw)
    )
    return summary, read_json(run["final"])


def has_task(record):
    return len(record["messages"]) == 4


def curation_rows(run):
    return read_jsonl(run["out"] / "image_caption_and_synthetic_task.curation.jsonl")


# --- the pieces -----------------------------------------------------------------------------------
def test_yes_prob_is_the_softmax_of_the_recorded_logprobs():
    assert yes_prob(logprobs_for(0.9)) == pytest.approx(0.9)
    assert yes_prob({"yes": math.log(0.3), "no": math.log(0.1)}) == pytest.approx(0.75)  # Open not in the top-20: 0
    assert yes_prob({"yes": -5.0}) == pytest.approx(1.0)
    assert yes_prob({"no": -0.1, "open": -3.0}) == 0.0 and yes_prob({}) == 0.0  # verdict no, or invalid
    assert yes_prob({"yes": -math.inf, "no": -1.0}) == 0.0
    assert yes_prob({"yes": -1.0, "no": -(10**400)}) == 1.0  # hand-edited: a number too large for a float
    for bad in (None, "x", [1], {"yes": "high"}, {"yes": math.nan}, {"yes": 0.5}, {"yes": True}, {"yes": 10**400}):
        assert yes_prob(bad) is None, bad


def test_exact_dedup_keeps_max_per_question_and_counts_the_rest(tmp_path):
    questions = (
        [SAME[i % 4] for i in range(9)]
        + ["How many cups?", "how many cups", "How many cups?!"]
        + ["Unique one?", "Unique two?"]
    )
    run = make_run(tmp_path, questions)
    summary, out = fmt(run, dedup="exact", max_per_question=2)
    assert summary.records_in == summary.records_out == len(out) == 14  # every record keeps its caption task
    assert summary.rejected == {}
    assert summary.synthetic_tasks == 2 + 2 + 2 and summary.no_synthetic_task == {"duplicate_question": 8}
    assert summary.curation == {
        "dedup": "exact",
        "max_per_question": 2,
        "seed": 42,
        "questions_seen": 14,
        "questions_distinct": 4,
        "dropped_duplicate": 8,
        "file": str(run["out"] / "image_caption_and_synthetic_task.curation.jsonl"),
    }
    kept = {i for i, r in enumerate(out) if has_task(r)}
    assert len(kept & set(range(9))) == 2 and len(kept & {9, 10, 11}) == 2 and {12, 13} <= kept
    for i, record in enumerate(out):  # the caption task is always there
        assert {"role": "assistant", "content": f"Caption {i}."} in record["messages"]
    rows = curation_rows(run)
    assert [r["index"] for r in rows] == sorted(set(range(14)) - kept)
    for row in rows:
        assert row["reason"] == "duplicate_question" and row["duplicate_of"] in kept
        assert normalise_question(questions[row["duplicate_of"]]) == normalise_question(row["Q"])
        assert f"syn_id {row['duplicate_of']}" in row["detail"]
    saved = read_json(run["out"] / "image_caption_and_synthetic_task.summary.json")
    assert saved["curation"]["dropped_duplicate"] == 8 and saved["no_synthetic_task"] == {"duplicate_question": 8}


def test_dedup_choice_is_seeded_and_does_not_depend_on_input_order(tmp_path):
    run = make_run(tmp_path, [SAME[i % 4] for i in range(30)])
    _, first = fmt(run, dedup="exact")
    kept = [i for i, r in enumerate(first) if has_task(r)]
    assert len(kept) == 1
    _, again = fmt(run, dedup="exact")
    assert again == first
    rows = read_rows(run)
    write_rows(run["out"], rows[::-1])
    _, reversed_ = fmt(run, dedup="exact")
    assert reversed_[::-1] == first
    write_rows(run["out"], rows)
    other = {tuple(i for i, r in enumerate(fmt(run, dedup="exact", seed=seed)[1]) if has_task(r)) for seed in range(6)}
    assert len(other) > 1  # the seed chooses which record keeps the question


def test_dedup_spilling_to_disk_gives_the_same_output(tmp_path, monkeypatch):
    questions = [SAME[i % 4] if i % 3 else f"Question number {i % 5}?" for i in range(40)]
    run = make_run(tmp_path, questions)
    fmt(run, dedup="near")
    in_memory = run["final"].read_bytes()
    spills = []
    real_spill = RankOrder._spill
    monkeypatch.setattr(RankOrder, "_spill", lambda self: spills.append(len(self.buffer)) or real_spill(self))
    monkeypatch.setattr(dedup, "SORT_CHUNK", 4)  # 40 candidates in 10 sorted runs on disk
    fmt(run, dedup="near")
    assert spills == [4] * 10
    assert run["final"].read_bytes() == in_memory
    fmt(run, dedup="exact")
    exact_spilled = run["final"].read_bytes()
    monkeypatch.setattr(dedup, "SORT_CHUNK", 200_000)
    fmt(run, dedup="exact")
    assert run["final"].read_bytes() == exact_spilled


def test_curation_that_removes_nothing_changes_no_byte_of_the_output(tmp_path):
    run = make_run(tmp_path, [f"Distinct question {i}?" for i in range(12)], p_yes=[0.95] * 12)
    default, _ = fmt(run)
    default_bytes = run["final"].read_bytes()
    assert default.curation == {} and not (run["out"] / "image_caption_and_synthetic_task.curation.jsonl").exists()
    curated, _ = fmt(run, dedup="near", min_yes_prob=0.9)
    assert run["final"].read_bytes() == default_bytes
    assert curated.curation["dropped_duplicate"] == curated.curation["dropped_low_yes_prob"] == 0
    assert (
        curated.curation["file"] == "" and not (run["out"] / "image_caption_and_synthetic_task.curation.jsonl").exists()
    )


# --- --dedup near ---------------------------------------------------------------------------------
def test_near_dedup_groups_questions_by_word_jaccard(tmp_path):
    run = make_run(tmp_path, NEAR)
    summary, out = fmt(run, dedup="near")
    kept = {i for i, r in enumerate(out) if has_task(r)}
    assert len(kept & {0, 1}) == 1 and 2 in kept and len(kept & {3, 4}) == 1 and 5 in kept
    assert summary.curation["questions_distinct"] == 4 and summary.curation["dropped_duplicate"] == 2
    assert summary.curation["near_threshold"] == 0.8 and summary.curation["num_perm"] == 128
    for row in curation_rows(run):  # each points at the kept question of its group
        assert {row["index"], row["duplicate_of"]} in ({0, 1}, {3, 4})
    summary2, out2 = fmt(run, dedup="near", near_ngram=2)  # word pairs: word order counts, short questions differ more
    assert summary2.curation["questions_distinct"] == 6 and summary2.curation["dropped_duplicate"] == 0
    summary1, _ = fmt(run, dedup="near", near_threshold=1.0)  # the same set of words only
    assert summary1.curation["questions_distinct"] == 5
    summary3, _ = fmt(run, dedup="near", near_threshold=0.5)
    assert (
        summary3.curation["questions_distinct"] == 3
    )  # "... in this picture" (5 or 6 of 10 words) joins the first group


def test_near_dedup_representative_is_the_lowest_rank_of_its_group(tmp_path):
    questions = [
        "What is the main subject of this image?",
        "what is the main subject of the image",
        "What is the main subject of this image",
    ] * 4
    run = make_run(tmp_path, questions)
    _, out = fmt(run, dedup="near", max_per_question=3, seed=7)
    ranked = sorted(range(12), key=lambda s: dedup.dedup_rank(7, s))
    assert {i for i, r in enumerate(out) if has_task(r)} == set(ranked[:3])
    assert {row["duplicate_of"] for row in curation_rows(run)} == {ranked[0]}


# --- --min_yes_prob -------------------------------------------------------------------------------
def test_min_yes_prob_keeps_only_confident_tasks(tmp_path):
    p = [0.95, 0.7, 0.5, None, 0.99, 0.2]
    verdicts = ["yes", "yes", "yes", "yes", "yes", "no"]
    run = make_run(tmp_path, [f"Question {i}?" for i in range(6)], verdicts, p)
    rows = read_rows(run)
    rows[3]["consistency_logprobs"] = {"yes": "very"}  # hand-edited: unusable, so unchecked
    write_rows(run["out"], rows)
    summary, out = fmt(run, min_yes_prob=0.7)
    assert [has_task(r) for r in out] == [True, True, False, False, True, False]
    assert summary.no_synthetic_task == {"low_yes_prob": 1, "no_yes_prob": 1, "consistency_no": 1}
    assert summary.curation == {
        "min_yes_prob": 0.7,
        "yes_prob_checked": 4,
        "dropped_low_yes_prob": 1,
        "no_yes_prob": 1,
        "file": str(run["out"] / "image_caption_and_synthetic_task.curation.jsonl"),
    }
    rows = curation_rows(run)
    assert [(r["index"], r["reason"]) for r in rows] == [(2, "low_yes_prob"), (3, "no_yes_prob")]
    assert rows[0]["yes_prob"] == pytest.approx(0.5) and "below --min_yes_prob 0.7" in rows[0]["detail"]
    assert rows[1]["yes_prob"] is None and rows[1]["Q"] == "Question 3?"


def test_confidence_is_checked_before_duplicates_are_chosen(tmp_path):
    questions = ["What is shown?"] * 8
    p = [0.5] * 8
    run = make_run(tmp_path, questions, p_yes=p)
    best = min(range(8), key=lambda s: dedup.dedup_rank(42, s))  # the record dedup alone would keep
    rows = read_rows(run)
    for i, row in enumerate(rows):
        row["consistency_logprobs"] = logprobs_for(0.6 if i == best else 0.95)
    write_rows(run["out"], rows)
    summary, out = fmt(run, dedup="exact", min_yes_prob=0.9)
    kept = [i for i, r in enumerate(out) if has_task(r)]
    assert len(kept) == 1 and kept[0] != best  # the unconfident task did not take the question's place
    assert summary.no_synthetic_task == {"low_yes_prob": 1, "duplicate_question": 6}
    assert summary.curation["questions_seen"] == 7 and summary.curation["yes_prob_checked"] == 8


def test_syn_only_rejects_records_whose_task_curation_removed(tmp_path):
    run = make_run(tmp_path, [SAME[i % 4] for i in range(5)] + ["Other?"], p_yes=[0.95] * 5 + [0.5])
    summary, out = fmt(run, dedup="exact", min_yes_prob=0.9, train_on_syn_only=True)
    assert len(out) == 1 and summary.records_in == 6 == summary.records_out + sum(summary.rejected.values())
    assert summary.rejected == {"duplicate_question": 4, "low_yes_prob": 1}
    rejects = read_jsonl(run["out"] / "image_caption_and_synthetic_task.rejects.jsonl")
    assert all("--train_on_syn_only" in r["detail"] for r in rejects)
    assert any("duplicates that of syn_id" in r["detail"] for r in rejects)


def test_a_rerun_removes_the_companion_files_of_an_earlier_run(tmp_path):
    run = make_run(tmp_path, [SAME[i % 4] for i in range(4)])
    fmt(run, dedup="exact", train_on_syn_only=True)
    assert curation_rows(run) and (run["out"] / "image_caption_and_synthetic_task.rejects.jsonl").exists()
    summary, _ = fmt(run)
    assert summary.rejected == {} and summary.curation == {}
    assert not (run["out"] / "image_caption_and_synthetic_task.curation.jsonl").exists()
    assert not (run["out"] / "image_caption_and_synthetic_task.rejects.jsonl").exists()  # it would misalign the report


# --- bad flags and inputs: clear errors before any work ---------------------------------------------
def format_cli(run, *flags):
    from adamllm.cli import main

    return main(
        [
            "format",
            "--data_path",
            str(run["data"]),
            "--image_folder",
            str(run["images"]),
            "--output",
            str(run["final"]),
            *map(str, flags),
        ]
    )


def written(run):
    return sorted(p.name for p in run["out"].iterdir())


def test_min_yes_prob_without_logprob_verdicts_is_refused_before_any_work(tmp_path, capsys):
    run = make_run(tmp_path, ["Q?"] * 3)  # filtered with --mode generate: no log-probabilities
    before = written(run)
    assert format_cli(run, "--min_yes_prob", "0.8") == 2
    err = capsys.readouterr().err
    assert (
        "adamllm format: error: --min_yes_prob 0.8:" in err and "no logprob verdicts" in err and "--mode logprob" in err
    )
    assert "Traceback" not in err and written(run) == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--min_yes_prob", "1.5"), "--min_yes_prob 1.5: give a probability between 0 and 1"),
        (("--min_yes_prob", "-0.1"), "--min_yes_prob -0.1: give a probability between 0 and 1"),
        (("--min_yes_prob", "nan"), "--min_yes_prob nan: give a probability between 0 and 1"),
        (("--dedup", "near", "--near_threshold", "0"), "--near_threshold 0.0: give a Jaccard similarity in (0, 1]"),
        (("--dedup", "near", "--near_threshold", "1.2"), "--near_threshold 1.2: give a Jaccard similarity in (0, 1]"),
        (("--dedup", "exact", "--near_threshold", "0.5"), "--near_threshold 0.5 acts only with --dedup near"),
        (("--dedup", "exact", "--max_per_question", "0"), "--max_per_question 0: give a whole number >= 1"),
        (
            (
                "--max_per_question",
                "3",
            ),
            "--max_per_question 3 acts only with --dedup exact or --dedup near",
        ),
        (("--dedup", "near", "--near_ngram", "0"), "--near_ngram 0: give a whole number of words >= 1"),
        (("--dedup", "fuzzy"), "invalid choice: 'fuzzy'"),
    ],
)
def test_bad_curation_flags_are_refused_naming_the_flag(tmp_path, capsys, flags, message):
    run = make_run(tmp_path, ["Q?"] * 2, p_yes=[0.9, 0.9])
    before = written(run)
    with pytest.raises(SystemExit) as exit:
        format_cli(run, *flags)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and "Traceback" not in err
    assert written(run) == before


def test_dedup_near_without_datasketch_names_the_fix(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasketch" else real(name, *a))
    run = make_run(tmp_path, ["Q?"])
    with pytest.raises(ValueError, match=r"--dedup near needs the datasketch package: pip install 'adamllm\[curate\]'"):
        FormatArgs(data_path=str(run["data"]), image_folder=str(run["images"]), output=str(run["final"]), dedup="near")


def test_bad_records_still_reconcile_with_curation_on(tmp_path):
    run = make_run(tmp_path, [SAME[i % 4] for i in range(8)], p_yes=[0.95] * 8)
    rows = read_rows(run)
    rows[1]["images"] = ["../outside.png"]
    rows[2] = "not a record"
    rows[3]["syn_id"] = 0  # a repeat
    rows[4]["consistency_logprobs"] = ["not", "an", "object"]
    write_rows(run["out"], rows)
    summary, out = fmt(run, dedup="exact", min_yes_prob=0.9)
    assert summary.rejected == {"unsafe_image_path": 1, "bad_schema": 1, "duplicate_syn_id": 1}
    assert summary.records_in == 8 == summary.records_out + sum(summary.rejected.values()) == len(out) + 3
    assert summary.synthetic_tasks == 1 and summary.no_synthetic_task == {"no_yes_prob": 1, "duplicate_question": 3}
    assert summary.curation["questions_seen"] == 4  # the 5 usable records less the one without log-probabilities


def test_format_cli_prints_the_curation_and_updates_the_run_stats(tmp_path, capsys):
    run = make_run(tmp_path, [SAME[i % 4] for i in range(6)], p_yes=[0.95, 0.5, 0.95, 0.95, 0.95, 0.95])
    assert format_cli(run, "--dedup", "exact", "--min_yes_prob", "0.9") == 0
    printed = capsys.readouterr().out
    assert "--dedup exact: 5 questions seen, 1 distinct, 4 dropped as duplicates" in printed
    assert "--min_yes_prob 0.9: 6 tasks checked, 1 below it, 0 without usable log-probabilities" in printed
    stats = read_json(run["out"] / "stats.json")
    assert stats["format"]["curation"]["dropped_duplicate"] == 4 and stats["format"]["args"]["dedup"] == "exact"
    assert stats["synthesize"]["records_in"] == 6  # the other stages' entries are kept


def test_run_takes_the_curation_flags_and_checks_them_before_any_work(tiny_models, tmp_path):
    """`adamllm run` (run_synthesis.sh's OTHER_OPT) hands the curation flags to format; a threshold
    that needs log-probabilities the run will not record is refused before synthesis starts."""
    from adamllm.stage2.run import RunArgs, run_pipeline
    from adamllm.testing.fixtures import make_caption_pairs

    pairs = make_caption_pairs(tmp_path / "pairs", 4, seed=2)
    common = dict(
        synthesizer=str(tiny_models["synthesizer"]),
        checker=str(tiny_models["checker"]),
        data_path=str(pairs["data_path"]),
        image_folder=str(pairs["image_folder"]),
        output_dir=str(tmp_path / "out"),
        engine="hf",
        max_new_tokens=8,
    )
    with pytest.raises(
        ValueError, match="--min_yes_prob 0.6 needs the checker's log-probabilities: add --mode logprob"
    ):
        RunArgs(**common, min_yes_prob=0.6)
    with pytest.raises(ValueError, match="--max_per_question 0"):
        RunArgs(**common, dedup="exact", max_per_question=0)
    with pytest.raises(ValueError, match="--batch_size 0: must be >= 1"):  # the serving flags too, not after synthesis
        RunArgs(**common, batch_size=0)
    assert not (tmp_path / "out").exists()
    run_pipeline(RunArgs(**common, mode="logprob", min_yes_prob=0.6, dedup="exact", max_per_question=2))
    saved = read_json(tmp_path / "out" / "stats.json")["format"]
    assert (saved["args"]["dedup"], saved["args"]["max_per_question"], saved["args"]["min_yes_prob"]) == (
        "exact",
        2,
        0.6,
    )
    assert saved["records_in"] == 4
