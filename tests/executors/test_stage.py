"""The batch function every executor runs, with a stand-in stage and engine (no model): one record that
raises is rejected with its reason, the rest of its batch is kept; a fault every record hits is raised."""

import pytest

from adamllm.core.records import RecordError
from adamllm.engines import Generation, Request
from adamllm.executors.stage import Loaded, run_batch_isolating


class StandInStage:
    name, output_file, args = "stand-in", "x.jsonl", None

    def prepare(self, syn_id, record):
        if record == "bad schema":
            raise RecordError("bad_schema", "expected")
        return Request(prompt=record)

    def finish(self, syn_id, record, generation):
        return {"syn_id": syn_id, "out": generation.text}

    def reject(self, syn_id, record, error):
        return {"syn_id": syn_id, "error": error.reason, "detail": error.detail}

    def kept(self, output):
        return "out" in output

    def add_costs(self, stats):
        pass


class StandInEngine:
    def __init__(self, fail_on=("boom",)):
        self.fail_on, self.calls = fail_on, 0

    def generate(self, requests, params):
        self.calls += 1
        if any(r.prompt in self.fail_on for r in requests):
            raise IndexError("the engine tripped over one request")
        return [Generation(text=r.prompt.upper(), token_ids=[1], prompt_tokens=2) for r in requests]


def test_one_failing_record_is_rejected_and_its_batch_kept():
    loaded = Loaded(StandInStage(), StandInEngine(), params=None)
    stats = {}
    out = run_batch_isolating(loaded, [(0, "a"), (1, "boom"), (2, "bad schema"), (3, "b")], stats)
    assert out == [
        {"syn_id": 0, "out": "A"},
        {"syn_id": 1, "error": "stage_error", "detail": "IndexError: the engine tripped over one request"},
        {"syn_id": 2, "error": "bad_schema", "detail": "expected"},
        {"syn_id": 3, "out": "B"},
    ]
    assert stats["output_tokens"] == 2 and stats["prompt_tokens"] == 4


def test_a_fault_every_record_hits_is_raised_not_turned_into_rejects():
    loaded = Loaded(StandInStage(), StandInEngine(fail_on=("a", "b")), params=None)
    with pytest.raises(IndexError):
        run_batch_isolating(loaded, [(0, "a"), (1, "b")], {})
