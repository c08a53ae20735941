"""Parsing synthesizer output into pairs, collecting the triplet, reading the verdict."""

import pytest

from adamllm.core.parse import Triplet, collect_triplet, parse_pairs, parse_verdict

U = "<|start_header_id|>user<|end_header_id|>\n\n"
A = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
E = "<|eot_id|>"
P = "Answer with a precise response.\n"
I = "Answer with an informative response.\n"  # noqa: E741 (the informative hint, beside P)


def test_two_complete_pairs():
    pred = f"{P}How many?{A}3{E}{U}{I}How many?{A}There are three, so 3.{E}"
    assert parse_pairs(pred) == [(f"{P}How many?".strip(), "3"), (f"{I}How many?".strip(), "There are three, so 3.")]


def test_unfinished_last_pair_dropped():
    pred = f"{P}How many?{A}3{E}{U}{I}How many?{A}There are thr"
    assert parse_pairs(pred) == [(P + "How many?", "3")]


def test_no_final_eot_drops_last_piece_even_if_it_looks_whole():
    pred = f"{P}Q1{A}A1{E}{U}{P}Q2{A}A2"
    assert parse_pairs(pred) == [(P + "Q1", "A1")]


def test_trailing_eos_text_is_tolerated():
    assert parse_pairs(f"{P}Q1{A}A1{E}<|end_of_text|>") == [(P + "Q1", "A1")]


def test_empty_question_or_answer_dropped():
    pred = f"{A}A0{E}{U}{P}Q1{A}   {E}{U}{P}Q2{A}A2{E}"
    assert parse_pairs(pred) == [(P + "Q2", "A2")]


def test_piece_that_splits_in_three_dropped():
    pred = f"{P}Q1{A}A1{A}A1b{E}{U}{P}Q2{A}A2{E}"
    assert parse_pairs(pred) == [(P + "Q2", "A2")]


def test_piece_without_assistant_header_dropped():
    assert parse_pairs(f"{P}just a question{E}") == []


def test_empty_output():
    assert parse_pairs("") == []


def test_collect_first_question_seen_with_both_hints():
    pairs = [
        (P + "Q1", "p1"),
        (I + "Q2", "i2"),
        (P + "Q2", "p2"),  # Q2 completes first
        (I + "Q1", "i1"),
    ]
    assert collect_triplet(pairs) == Triplet(Q="Q2", precise_A="p2", informative_A="i2")


def test_collect_keeps_the_later_answer_of_a_repeated_hint():
    """The release keeps one dict per hint and overwrites it: the later answer wins."""
    pairs = [(P + "Q", "first"), (P + "Q", "second"), (I + "Q", "long")]
    assert collect_triplet(pairs) == Triplet("Q", "second", "long")
    # The answer that completes the triplet is the one just read, even after an earlier repeat.
    pairs = [(I + "Q", "long 1"), (I + "Q", "long 2"), (P + "Q", "short")]
    assert collect_triplet(pairs) == Triplet("Q", "short", "long 2")


def test_collect_needs_the_hint_and_a_newline():
    pairs = [("Answer with a precise response. Q", "p"), (I + "Q", "i"), ("Q", "x")]
    assert collect_triplet(pairs) is None


def test_collect_none_when_one_hint_only():
    assert collect_triplet([(P + "Q", "p"), (P + "R", "p")]) is None


def test_end_to_end_parse_and_collect():
    pred = f"{I}What dish?{A}It is a bowl of ramen, so ramen.{E}{U}{P}What dish?{A}Ramen{E}{U}{P}Hot?{A}Ye"
    assert collect_triplet(parse_pairs(pred)) == Triplet("What dish?", "Ramen", "It is a bowl of ramen, so ramen.")


@pytest.mark.parametrize(
    "text, verdict",
    [
        (" Yes", "yes"),
        (" No\n", "no"),
        ("open ended", "open"),
        ("YES it", "yes"),
        ("Yes.", "invalid"),
        ("", "invalid"),
        ("Maybe", "invalid"),
        ("\n", "invalid"),
    ],
)
def test_verdict(text, verdict):
    assert parse_verdict(text) == verdict
