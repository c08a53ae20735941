"""Sharding, recovery and merging, without a model; and streaming in bounded memory."""

import json
import tracemalloc

import pytest

from adamllm.formats import iter_json_records
from adamllm.shards import Shard, ShardWriter, done_marker, merge_shards, recover, sum_stats


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
    assert [json.loads(l)["syn_id"] for l in (tmp_path / "stage.jsonl").read_text().splitlines()] == list(range(7))


def test_merge_refuses_lost_or_duplicated_records(tmp_path):
    write_shard(tmp_path, 2, 0, [0, 2])
    path = write_shard(tmp_path, 2, 1, [1, 3])
    done_marker(path).write_text(json.dumps({"records": 3}))  # one record lost
    with pytest.raises(RuntimeError, match="hold 4 records but reported 5"):
        merge_shards(tmp_path, "stage.jsonl", 2, tmp_path / "out.jsonl")
    write_shard(tmp_path / "b", 2, 0, [0, 1])
    write_shard(tmp_path / "b", 2, 1, [1, 3])
    with pytest.raises(RuntimeError, match="syn_id 1 appears twice"):
        merge_shards(tmp_path / "b", "stage.jsonl", 2, tmp_path / "b" / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_sum_stats():
    total = sum_stats([{"wall_s": 2.0, "engine_s": 1.0, "rejected": {"a": 1}}, {"wall_s": 3.0, "engine_s": 2.0, "rejected": {"a": 2, "b": 1}}])
    assert total == {"wall_s": 3.0, "shard_wall_s": 5.0, "engine_s": 3.0, "rejected": {"a": 3, "b": 1}, "shards": 2}


def peak_bytes(tmp_path, n):
    """Peak memory of reading an n-record input and merging two shards of n records."""
    record = {"images": ["x.png"], "messages": [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "c" * 300}]}
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
    from adamllm.shards import check_fingerprint, input_fingerprint

    data = tmp_path / "in.jsonl"
    data.write_text('{"a": 1}\n' * 10)
    first = input_fingerprint(data, model="m", limit=0)
    check_fingerprint(tmp_path, "stage.jsonl", 2, first)
    shard = tmp_path / "shards" / "stage.001-of-002.jsonl"
    shard.write_text('{"syn_id": 1}\n')  # a finished record of this run
    check_fingerprint(tmp_path, "stage.jsonl", 2, input_fingerprint(data, model="m", limit=0))  # same run: resumes
    with pytest.raises(ValueError, match=r"holds 1 stage records .*changed: limit.*--overwrite or delete .*shards/stage\.\* ; or use a new --output_dir"):
        check_fingerprint(tmp_path, "stage.jsonl", 2, input_fingerprint(data, model="m", limit=5))
    data.write_text('{"a": 2}\n' * 10)  # same size, other content
    with pytest.raises(ValueError, match="changed: sha256"):
        check_fingerprint(tmp_path, "stage.jsonl", 2, input_fingerprint(data, model="m", limit=0))
    assert shard.exists()
    check_fingerprint(tmp_path, "stage.jsonl", 3, input_fingerprint(data, model="m", limit=5))  # another sharding: its own files


def test_fingerprint_sees_a_same_size_edit_in_the_middle_of_a_large_input(tmp_path):
    from adamllm.shards import input_fingerprint

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
    from adamllm.shards import check_fingerprint, input_fingerprint

    data = tmp_path / "in.jsonl"
    data.write_text('{"a": 1}\n')
    check_fingerprint(tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="wrong"))
    check_fingerprint(tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="right"))  # nothing done yet: no refusal
    marker = tmp_path / "shards" / "stage.input-of-001.json"
    assert json.loads(marker.read_text())["model"] == "right"
    (tmp_path / "shards" / "stage.000-of-001.jsonl").write_text('{"syn_id": 0}\n')
    (tmp_path / "shards" / "other.000-of-001.jsonl").write_text('{"syn_id": 0}\n')  # another stage's: kept
    with pytest.raises(ValueError, match="--overwrite"):
        check_fingerprint(tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="third"))
    check_fingerprint(tmp_path, "stage.jsonl", 1, input_fingerprint(data, model="third"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["other.000-of-001.jsonl", "stage.input-of-001.json"]
    assert json.loads(marker.read_text())["model"] == "third"
