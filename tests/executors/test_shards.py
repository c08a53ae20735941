"""Sharding, recovery and merging, without a model; and streaming in bounded memory."""

import json
import tracemalloc

import pytest

from adamllm.core.jsonfiles import iter_json_records
from adamllm.executors.shards import Shard, ShardWriter, done_marker, merge_shards, recover, sum_stats


def write_shard(out, count, index, ids, done=True):
    path = Shard(index, count).path(out, "stage.jsonl")
    w = ShardWriter(path)
    w.write({"syn_id": i, "v": f"r{i}"} for i in ids)
    w.close()
    if done:
        done_marker(path).write_text(json.dumps({"records": len(ids)}))
    return path


def test_shard_ownership_and_names(tmp_path):
    s = Shard(1, 3)
    assert [i for i in range(10) if s.owns(i)] == [1, 4, 7]
    assert s.path(tmp_path, "syn_task_triplets.jsonl").name == "syn_task_triplets.001-of-003.jsonl"


def test_recover_cuts_a_torn_last_line(tmp_path):
    path = write_shard(tmp_path, 1, 0, [0, 1, 2], done=False)
    with open(path, "a") as fh:
        fh.write('{"syn_id": 3, "v": "r')
    assert recover(path) == [0, 1, 2]
    assert path.read_text().endswith('"r2"}\n')
    assert recover(tmp_path / "absent.jsonl") == []


def test_merge_in_syn_id_order_only_when_all_done(tmp_path):
    write_shard(tmp_path, 3, 0, [0, 3, 6])
    write_shard(tmp_path, 3, 1, [1, 4])
    assert merge_shards(tmp_path, "stage.jsonl", 3, tmp_path / "stage.jsonl") is None
    write_shard(tmp_path, 3, 2, [2, 5])
    merge_shards(tmp_path, "stage.jsonl", 3, tmp_path / "stage.jsonl")
    assert [json.loads(line)["syn_id"] for line in (tmp_path / "stage.jsonl").read_text().splitlines()] == list(
        range(7)
    )


def test_merge_refuses_lost_or_duplicated_records(tmp_path):
    write_shard(tmp_path, 2, 0, [0, 2])
    path = write_shard(tmp_path, 2, 1, [1, 3])
    done_marker(path).write_text(json.dumps({"records": 3}))  # one record lost
    with pytest.raises(RuntimeError, match="hold 4 records but reported 5"):
        merge_shards(tmp_path, "stage.jsonl", 2, tmp_path / "out.jsonl")
    write_shard(tmp_path / "b", 2, 0, [0, 1])
    write_shard(tmp_path / "b", 2, 1, [1, 3])
    with pytest.raises(
        RuntimeError,
        match=r"syn_id 1 is in two shards, .*stage\.000-of-002\.jsonl \(line 2\) and .*stage\.001-of-002\.jsonl \(line "
        r"1\); rerun the stage with --overwrite",
    ):
        merge_shards(tmp_path / "b", "stage.jsonl", 2, tmp_path / "b" / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_merge_names_a_line_written_twice_and_blames_no_input(tmp_path):
    path = write_shard(tmp_path, 1, 0, [0, 1, 2, 0, 1, 2])  # two runs that wrote one shard at once
    with pytest.raises(RuntimeError) as error:
        merge_shards(tmp_path, "stage.jsonl", 1, tmp_path / "out.jsonl")
    assert str(error.value) == (
        f"{path}: syn_id 0 is on lines 1 and 4: a record written twice (two runs into one folder?); "
        "rerun the stage with --overwrite to start it over"
    )
    assert "input" not in str(error.value) and not (tmp_path / "out.jsonl").exists()


def test_merge_checks_one_output_record_per_input_record(tmp_path):
    """Whatever the executor did, a merged output that lost or gained records is never written."""
    write_shard(tmp_path, 2, 0, [0, 100])
    write_shard(tmp_path, 2, 1, [5, 9, 101])
    out = tmp_path / "stage.jsonl"
    assert merge_shards(tmp_path, "stage.jsonl", 2, out, iter([0, 5, 9, 100, 101]), "filter") is not None
    assert [json.loads(line)["syn_id"] for line in out.read_text().splitlines()] == [0, 5, 9, 100, 101]
    out.unlink()
    with pytest.raises(RuntimeError) as error:
        merge_shards(tmp_path, "stage.jsonl", 2, out, iter([0, 5, 9, 100, 101, 5000, 5001]), "filter")
    assert str(error.value).startswith(
        f"filter: the shards in {tmp_path / 'shards'} do not hold one record per input record "
        "(5 records for 7 input records: 2 input records have none, syn_id 5000, 5001); "
    )
    assert f"one record of {out}, kept or rejected, so nothing was written; rerun the stage with --overwrite" in str(
        error.value
    )
    with pytest.raises(
        RuntimeError, match=r"\(5 records for 4 input records: 1 records are of no input record, syn_id 9\)"
    ):
        merge_shards(tmp_path, "stage.jsonl", 2, out, iter([0, 5, 100, 101]), "filter")
    with pytest.raises(
        RuntimeError,
        match=r"\(5 records for 5 input records: 1 input records have none, syn_id 7; 1 records are of no input "
        r"record, syn_id 9\)",
    ):
        merge_shards(tmp_path, "stage.jsonl", 2, out, iter([0, 5, 7, 100, 101]), "filter")
    assert not out.exists()


def test_recover_sorts_records_a_resume_redid_but_names_a_record_written_twice(tmp_path):
    # A resume that redoes a record (its image changed) appends it after later ones: sorted, kept.
    path = tmp_path / "stage.000-of-001.jsonl"
    path.write_text('{"syn_id": 0}\n{"syn_id": 2}\n{"syn_id": 1}\n')
    assert recover(path) == [0, 1, 2]
    assert path.read_text() == '{"syn_id": 0}\n{"syn_id": 1}\n{"syn_id": 2}\n'
    path.write_text('{"syn_id": 0}\n{"syn_id": 2}\n{"syn_id": 1}\n{"syn_id": 2}\n')
    with pytest.raises(ValueError, match="syn_id 2 is on lines 2 and 4: a record written twice"):
        recover(path)


@pytest.mark.parametrize(
    "lines, problem",
    [
        (['{"syn_id": 0}', '{"syn_id": 1}', '{"syn_id": 0}'], "syn_id 0 is on lines 1 and 3: a record written twice"),
        (
            ['{"syn_id": 0}', '{"syn_id": 1, "v": "r{"syn_id": 2}', '{"syn_id": 3}'],
            "line 2 is not a record with an integer syn_id",
        ),
        (['{"syn_id": 0}', '["syn_id", 1]'], "line 2 is not a record with an integer syn_id"),
        (['{"syn_id": 0}', '{"syn_id": true}'], "line 2 is not a record with an integer syn_id"),
    ],
)
def test_recover_names_a_damaged_shard_line(tmp_path, lines, problem):
    path = tmp_path / "stage.000-of-001.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as error:
        recover(path)
    assert str(error.value).startswith(f"{path}: {problem}")


def test_check_shards_refuses_what_cannot_resume_and_overwrite_redoes_only_that_shard(tmp_path):
    from adamllm.executors.resume import check_shards

    shards = [Shard(0, 2), Shard(1, 2)]
    good = write_shard(tmp_path, 2, 0, [0, 2])
    bad = write_shard(tmp_path, 2, 1, [1, 2])  # syn_id 2 is shard 0's
    with pytest.raises(
        ValueError,
        match=rf"^{bad}: syn_id 2 belongs to shard 0\. Rerun with --overwrite to redo this shard's records, or delete "
        rf"{bad}$",
    ):
        check_shards(tmp_path, "stage.jsonl", shards, iter(range(4)))
    check_shards(tmp_path, "stage.jsonl", shards, iter(range(4)), overwrite=True)
    assert not bad.exists() and not done_marker(bad).exists() and recover(good) == [0, 2]
    write_shard(tmp_path, 2, 1, [1, 3, 7])  # 7: a record of another input
    with pytest.raises(ValueError, match=r"syn_id 7 is not in the stage's input \(a record of another input\)"):
        check_shards(tmp_path, "stage.jsonl", shards, iter(range(4)))
    check_shards(tmp_path, "stage.jsonl", [Shard(1, 2)], iter(range(8)))  # with 7 in the input: resumable
    write_shard(tmp_path, 2, 1, [1, 3, 1])
    with pytest.raises(ValueError, match="syn_id 1 is on lines 1 and 4"):  # appended after the three above
        check_shards(tmp_path, "stage.jsonl", [Shard(1, 2)], iter(range(8)))


def test_check_shards_reads_no_input_when_no_shard_holds_a_record(tmp_path):
    from adamllm.executors.resume import check_shards

    def never():
        raise AssertionError("the input was read")
        yield

    check_shards(tmp_path, "stage.jsonl", [Shard(0, 1)], never())


def test_sum_stats():
    total = sum_stats(
        [
            {"wall_s": 2.0, "engine_s": 1.0, "rejected": {"a": 1}},
            {"wall_s": 3.0, "engine_s": 2.0, "rejected": {"a": 2, "b": 1}},
        ]
    )
    assert total == {"wall_s": 3.0, "shard_wall_s": 5.0, "engine_s": 3.0, "rejected": {"a": 3, "b": 1}, "shards": 2}


def peak_bytes(tmp_path, n):
    """Peak memory of reading an n-record input and merging two shards of n records."""
    record = {
        "images": ["x.png"],
        "messages": [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "c" * 300}],
    }
    folder = tmp_path / str(n)
    folder.mkdir()
    path = folder / "big.json"
    with open(path, "w") as fh:
        fh.write("[" + ",\n".join(json.dumps(record) for _ in range(n)) + "]")
    for i in range(2):
        write_shard(folder, 2, i, range(i, n, 2))
    tracemalloc.start()
    count = sum(1 for _ in iter_json_records(path))
    merge_shards(folder, "stage.jsonl", 2, folder / "merged.jsonl")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    return peak, path.stat().st_size


def test_streaming_memory_does_not_grow_with_the_input(tmp_path):
    small, _ = peak_bytes(tmp_path, 5000)
    large, size = peak_bytes(tmp_path, 40000)
    assert size > 14_000_000
    assert large < size / 3, f"peak {large:,} bytes for a {size:,}-byte input: something holds the input"
    assert large < small * 1.3 + 200_000, f"peak grew from {small:,} to {large:,} bytes with 8x the records"


def test_fingerprint_refuses_to_mix_runs(tmp_path):
    from adamllm.executors.resume import check_fingerprint, input_fingerprint

    data = tmp_path / "in.jsonl"
    data.write_text('{"a": 1}\n' * 10)
    first = input_fingerprint(data, model="m", limit=0)
    check_fingerprint(tmp_path, "stage.jsonl", 2, first)
    shard = tmp_path / "shards" / "stage.001-of-002.jsonl"
    shard.write_text('{"syn_id": 1}\n')  # a finished record of this run
    check_fingerprint(tmp_path, "stage.jsonl", 2, input_fingerprint(data, model="m", limit=0))  # same run: resumes
    with pytest.raises(
        ValueError,
        match=r"holds 1 stage records .*changed: limit.*--overwrite or delete .*shards/stage\.\* ; or use a new "
        r"--output_dir",
    ):
        check_fingerprint(tmp_path, "stage.jsonl", 2, input_fingerprint(data, model="m", limit=5))
    data.write_text('{"a": 2}\n' * 10)  # same size, other content
    with pytest.raises(ValueError, match="changed: sha256"):
        check_fingerprint(tmp_path, "stage.jsonl", 2, input_fingerprint(data, model="m", limit=0))
    assert shard.exists()
    check_fingerprint(
        tmp_path, "stage.jsonl", 3, input_fingerprint(data, model="m", limit=5)
    )  # another sharding: its own files


def test_fingerprint_sees_a_same_size_edit_in_the_middle_of_a_large_input(tmp_path):
    from adamllm.executors.resume import input_fingerprint

    data = tmp_path / "in.jsonl"
    rows = [f'{{"caption": "record {i:07d}"}}\n' for i in range(20000)]  # ~600 KB
    data.write_text("".join(rows))
    before = input_fingerprint(data)
    rows[10000] = rows[10000].replace("record", "recorD")
    data.write_text("".join(rows))
    after = input_fingerprint(data)
    assert before["size"] == after["size"] and before["sha256"] != after["sha256"]


def test_other_settings_start_over_when_nothing_was_finished_or_with_overwrite(tmp_path):
    """A run that failed before its first record (a wrong model name, say) is no reason to refuse the fix."""
    from adamllm.executors.resume import check_fingerprint, input_fingerprint

    data = tmp_path / "in.jsonl"
    data.write_text('{"a": 1}\n')
    check_fingerprint(tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="wrong"))
    check_fingerprint(
        tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="right")
    )  # nothing done yet: no refusal
    marker = tmp_path / "shards" / "stage.input-of-001.json"
    assert json.loads(marker.read_text())["model"] == "right"
    (tmp_path / "shards" / "stage.000-of-001.jsonl").write_text('{"syn_id": 0}\n')
    (tmp_path / "shards" / "other.000-of-001.jsonl").write_text('{"syn_id": 0}\n')  # another stage's: kept
    with pytest.raises(ValueError, match="--overwrite"):
        check_fingerprint(tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="third"))
    check_fingerprint(tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="third"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "other.000-of-001.jsonl",
        "stage.input-of-001.json",
    ]
    assert json.loads(marker.read_text())["model"] == "third"
