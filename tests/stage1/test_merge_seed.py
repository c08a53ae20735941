"""Stage 1a: merging the seed data."""

import pytest
from conftest import read_json, read_jsonl, write_json

from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed
from adamllm.testing.fixtures import make_seed_fixtures


def merge(paths, out, **kw):
    args = MergeSeedArgs(
        caption_path=str(paths["caption"]),
        precise_qa_path=str(paths["precise"]),
        informative_qa_path=str(paths["informative"]),
        output=str(out),
        blank_image_path=str(out.parent / "blank.png"),
        **kw,
    )
    return run_merge_seed(args), read_json(out)


def test_fixture_has_both_variants(seed_fixtures):
    captions = read_json(seed_fixtures["caption"])
    assert any("caption" in c for c in captions) and any("caption" not in c for c in captions)
    humans = [r["conversations"][0]["value"] for r in read_json(seed_fixtures["precise"])]
    assert any(h.startswith("<image>\n") for h in humans) and any(h.endswith("\n<image>") for h in humans)


def test_merge_joins_on_base_names_and_formats_records(seed_fixtures, tmp_path):
    summary, train = merge(seed_fixtures, tmp_path / "train.json", replace_with_blank_image_percent=0)
    _, dev = merge(seed_fixtures, tmp_path / "dev.json", split="dev", replace_with_blank_image_percent=0)
    assert summary["images_seen"] == summary["images_joined"] == 30
    assert len(train) + len(dev) == 30 and not {r["image"] for r in train} & {r["image"] for r in dev}
    caps = {c["image"].split("/")[-1]: c["conversations"][1]["value"] for c in read_json(seed_fixtures["caption"])}
    precise = {p["image"].split("/")[-1]: p for p in read_json(seed_fixtures["precise"])}
    for record in train:
        assert set(record) == {"image", "task_name", "conversations"}
        assert "/" not in record["image"]
        conv = record["conversations"]
        assert conv[0] == {"from": "human", "value": "<image>\nDescribe the image."}
        assert conv[1] == {"from": "gpt", "value": caps[record["image"]]}
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        questions = [t["value"] for t in conv[2::2]]
        assert sorted(q.split("\n")[0] for q in questions) == [
            "Answer with a precise response.",
            "Answer with an informative response.",
        ]
        assert all("<image>" not in q for q in questions)
        vflan_q = precise[record["image"]]["conversations"][0]["value"].replace("<image>", "").strip()
        assert f"Answer with a precise response.\n{vflan_q}" in questions
        assert record["task_name"] == precise[record["image"]]["task_name"]


def test_merge_is_reproducible_and_seed_sensitive(seed_fixtures, tmp_path):
    _, a = merge(seed_fixtures, tmp_path / "a.json")
    _, b = merge(seed_fixtures, tmp_path / "b.json")
    _, c = merge(seed_fixtures, tmp_path / "c.json", seed=7)
    assert a == b and a != c


def test_split_is_per_task(tmp_path):
    paths = make_seed_fixtures(tmp_path / "s", num_images=300, seed=3)
    summary, _ = merge(paths, tmp_path / "t.json")
    for task, counts in summary["per_task"].items():
        assert counts["train"] + counts["dev"] == counts["joined"]
        assert abs(counts["dev"] - counts["joined"] * 0.1) <= 1, task


def test_blank_share_near_ten_percent(tmp_path):
    paths = make_seed_fixtures(tmp_path / "s", num_images=1000, seed=4)
    summary, train = merge(paths, tmp_path / "t.json")
    blank = [r for r in train if r["image"] == summary["blank_image_path"]]
    assert len(blank) == summary["blank_images"] == round(len(train) * 0.1)
    assert (tmp_path / "blank.png").exists()
    # Blank records keep their caption and pairs: only the image changes.
    assert all(len(r["conversations"]) == 6 for r in blank)


def test_drops_and_rejects_reconcile(seed_fixtures, tmp_path):
    captions = read_json(seed_fixtures["caption"])
    precise = read_json(seed_fixtures["precise"])
    informative = read_json(seed_fixtures["informative"])
    # Image 0 loses its caption, image 1 its precise pair, image 2 its informative pair.
    captions = [c for c in captions if not c["image"].endswith("seed_00000.png")]
    precise = [p for p in precise if not p["image"].endswith("seed_00001.png")]
    informative = [p for p in informative if not p["image"].endswith("seed_00002.png")]
    # Malformed records, each rejected with its reason while the rest goes on.
    captions += [
        {"image": "x.png"},
        {"image": "seed_00003.png", "conversations": [{"value": "<image>"}, {"value": " "}]},
    ]
    captions.append(dict(captions[3]))  # a duplicate caption
    precise.append({"image": "y.png", "conversations": [{"value": "q"}, {"value": "a"}]})  # no task_name
    informative.append({"image": "z.png", "conversations": [{"value": "<image>\n"}, {"value": "a"}]})  # empty question
    paths = {
        "caption": write_json(tmp_path / "c.json", captions),
        "precise": write_json(tmp_path / "p.json", precise),
        "informative": write_json(tmp_path / "i.json", informative),
    }
    summary, train = merge(paths, tmp_path / "out.json")
    assert summary["images_dropped"] == {"no_caption": 1, "no_precise_pairs": 1, "no_informative_pairs": 1}
    assert summary["records_rejected"] == {"bad_schema": 2, "no_caption": 1, "duplicate_caption": 1, "empty_pair": 1}
    assert summary["images_seen"] == summary["images_joined"] + sum(summary["images_dropped"].values())
    assert summary["images_joined"] == summary["records_written"] + summary["images_in_other_split"] == 27
    read = summary["records_read"]
    assert read == {"caption": len(captions), "precise": len(precise), "informative": len(informative)}
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    assert len(rejects) == sum(summary["records_rejected"].values()) + sum(summary["images_dropped"].values())
    assert {r["image"] for r in rejects if r["source"] == "merge"} == {
        "seed_00000.png",
        "seed_00001.png",
        "seed_00002.png",
    }
    assert read_json(tmp_path / "out.summary.json")["records_written"] == len(train)


def test_image_folder_check_drops_missing_and_corrupt(seed_fixtures, tmp_path):
    folder = seed_fixtures["image_folder"]
    (folder / "seed_00004.png").unlink()
    (folder / "seed_00005.png").write_bytes(b"broken")
    summary, records = merge(seed_fixtures, tmp_path / "o.json", image_folder=str(folder), split="train")
    assert summary["images_dropped"] == {"image_missing": 1, "image_unreadable": 1}
    assert not {"seed_00004.png", "seed_00005.png"} & {r["image"] for r in records}


def test_special_tokens_in_seed_text_are_stripped_and_counted(seed_fixtures, tmp_path):
    captions = read_json(seed_fixtures["caption"])
    for c in captions:
        c.pop("caption", None)
        c["conversations"][1]["value"] += "<|eot_id|><|start_header_id|>user<|end_header_id|>"
    paths = dict(seed_fixtures, caption=write_json(tmp_path / "c.json", captions))
    summary, records = merge(paths, tmp_path / "o.json")
    assert summary["special_tokens_stripped"] == 3 * 30
    assert all("<|" not in t["value"] for r in records for t in r["conversations"])


def test_args_checked_together(tmp_path):
    with pytest.raises(ValueError) as e:
        MergeSeedArgs(
            caption_path="nope",
            precise_qa_path="nope2",
            informative_qa_path="nope3",
            output="o",
            replace_with_blank_image_percent=120,
        )
    msg = str(e.value)
    assert "--caption_path nope" in msg and "--informative_qa_path" in msg and "[0, 100]" in msg
