"""Duplicate questions: normalising, shingles, the external rank sort, both dedup modes."""

from builders import NEAR, SAME

from adamllm.stage2 import dedup
from adamllm.stage2.dedup import Deduper, RankOrder, normalise_question, shingles


def test_normalise_question_ignores_case_whitespace_and_punctuation():
    assert {normalise_question(q) for q in SAME} == {"what is shown in the image"}
    assert normalise_question("Is it a close-up?") == "is it a close up"
    assert normalise_question("What colour is it?") != normalise_question("What color is it?")  # exact is exact


def test_shingles_are_words_or_word_ngrams():
    assert shingles("is the dog bigger than the cat") == shingles("is the cat bigger than the dog")  # a set of words
    assert shingles("is the dog bigger than the cat", 2) != shingles("is the cat bigger than the dog", 2)
    assert shingles("hi", 3) == frozenset(["hi"])


def test_rank_order_spills_sorted_runs_to_disk_and_merges_them():
    order = RankOrder(chunk=3)
    items = [(r * 7919 % 101, r, f"q{r}") for r in range(10)]
    for item in items:
        order.add(*item)
    assert len(order.runs) == 3 and len(order.buffer) == 1  # 10 items, 3 at a time in memory
    tmp = order._tmp.name
    assert list(order) == sorted(items)
    order.close()
    import os

    assert not os.path.exists(tmp)


def test_deduper_keeps_the_lowest_ranks_of_each_question():
    d = Deduper("exact", max_per_question=2, seed=5)
    for syn_id in range(10):
        d.add(syn_id, SAME[syn_id % 4] if syn_id < 8 else f"Other question {syn_id}?")
    d.finish()
    ranked = sorted(range(8), key=lambda s: dedup.dedup_rank(5, s))
    assert d.kept == set(ranked[:2]) | {8, 9}
    assert (d.seen, d.distinct) == (10, 3)
    for syn_id in ranked[2:]:
        assert d.decide(syn_id, SAME[syn_id % 4]) == ranked[0]  # the group's lowest rank
    assert d.decide(ranked[1], SAME[0]) is None


def test_near_deduper_keeps_dropped_groups_on_disk_between_the_passes():
    import os

    d = Deduper("near", max_per_question=1, seed=3)
    questions = {0: NEAR[0], 1: NEAR[1], 2: NEAR[2], 3: NEAR[0]}
    for syn_id, q in questions.items():
        d.add(syn_id, q)
    d.finish()
    assert d.lsh is None and d.reps == {}  # pass 2 needs neither
    rep = min((0, 1, 3), key=lambda s: dedup.dedup_rank(3, s))
    assert d.kept == {rep, 2} and d.distinct == 2
    assert [d.decide(s, questions[s]) for s in (0, 1, 2, 3)] == [None if s == rep else rep for s in (0, 1)] + [None] + [
        None if rep == 3 else rep
    ]
    folder = d._tmp.name
    d.close()
    assert not os.path.exists(folder)


# --- --dedup exact ----------------------------------------------------------------------------------
