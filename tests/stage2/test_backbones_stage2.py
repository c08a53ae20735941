"""Stage 2 on the Qwen-VL families: the same tokens from vLLM and transformers, the dry run's prompts
in the family's format, a Qwen3 text checker in both filter modes, `adamllm run` on the Ray executor."""

import json

import pytest
from builders import handwritten
from conftest import read_jsonl

from adamllm.core import prompts
from adamllm.models.backbones import BACKBONES
from adamllm.stage2.filter import FilterArgs, candidate_ids, run_filter
from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize
from adamllm.testing.fixtures import make_caption_pairs

pytestmark = pytest.mark.slow

QWEN = ("qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_caption_pairs(tmp_path_factory.mktemp("pairs"), 6, seed=7)


def synth(models, pairs, out, **kw) -> list[dict]:
    args = dict(
        model=str(models["synthesizer"]),
        data_path=str(pairs["data_path"]),
        image_folder=str(pairs["image_folder"]),
        output_dir=str(out),
        max_new_tokens=24,
    )
    run_synthesize(SynthesizeArgs(**{**args, **kw}))
    name = "prompts.jsonl" if kw.get("dry_run") else "syn_task_triplets.jsonl"
    return read_jsonl(out / name)


@pytest.mark.parametrize("family", QWEN)
def test_vllm_and_transformers_write_the_same_tokens_and_max_pixels_reaches_both(qwen_models, pairs, family, tmp_path):
    models = qwen_models[family]
    small = {"qwen2_5_vl": 4 * 28 * 28, "qwen3_vl": 4 * 32 * 32}[family]  # 4 image tokens; the pictures make 9
    for max_pixels in (0, small):
        preds = {
            engine: [
                r["pred"]
                for r in synth(models, pairs, tmp_path / f"{engine}{max_pixels}", engine=engine, max_pixels=max_pixels)
            ]
            for engine in ("vllm", "hf")
        }
        assert preds["vllm"] == preds["hf"] and all(isinstance(p, str) and p for p in preds["vllm"])
    stats = {m: json.loads((tmp_path / f"vllm{m}" / "stats.json").read_text())["synthesize"] for m in (0, small)}
    assert stats[small]["prompt_tokens"] < stats[0]["prompt_tokens"]  # fewer image tokens per picture


@pytest.mark.parametrize("family", QWEN)
def test_dry_run_prompts_are_the_family_conversation(qwen_models, pairs, family, tmp_path):
    rows = synth(qwen_models[family], pairs, tmp_path, dry_run=True)
    assert len(rows) == 6
    for row in rows:
        assert "<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n" in row["prompt"]
        assert row["prompt"].endswith("<|im_end|>\n<|im_start|>user\n") and "<|eot_id|>" not in row["prompt"]
        assert row["prompt"].startswith("<|im_start|>system\n") == (family == "qwen2_5_vl")


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_a_qwen3_checker_judges_chatml_triplets_in_both_modes(qwen_models, tmp_path, mode):
    from transformers import AutoTokenizer

    checker = qwen_models["qwen3_vl"]["checker"]
    assert json.loads((checker / "config.json").read_text())["model_type"] == "qwen3"
    ids = candidate_ids(AutoTokenizer.from_pretrained(checker))
    assert len(set(ids.values())) == 3  # its own first tokens of " Yes" / " No" / " Open"
    data = handwritten(tmp_path, BACKBONES["qwen3_vl"].marks)
    stats = run_filter(FilterArgs(model=str(checker), data_path=str(data), output_dir=str(tmp_path), mode=mode))
    out = read_jsonl(tmp_path / "filtered_task_pairs.jsonl")
    assert [r["collected_QA"] for r in out] == [
        {"Q": "How many?", "precise_A": "3", "informative_A": "I count three, so 3."},
        {"Q": "What dish?", "precise_A": "Ramen", "informative_A": "It is ramen."},
        None,
        None,
    ]
    assert all(r["consistency"] in ("yes", "no", "open", "invalid") for r in out[:2])
    assert out[2]["error"]["reason"] == "no_triplet" and out[3]["error"]["reason"] == "image_missing"
    assert stats["records_in"] == 4 == stats["records_out"] + sum(stats["rejected"].values())
    if mode == "logprob":
        assert all(set(r["consistency_logprobs"]) <= {"yes", "no", "open"} for r in out[:2])


def test_adamllm_run_on_a_qwen_synthesizer_with_the_ray_executor(qwen_models, pairs, tmp_path):
    from adamllm.stage2.run import RunArgs, run_pipeline

    models = qwen_models["qwen2_5_vl"]
    stats = run_pipeline(
        RunArgs(
            synthesizer=str(models["synthesizer"]),
            checker=str(models["checker"]),
            data_path=str(pairs["data_path"]),
            image_folder=str(pairs["image_folder"]),
            output_dir=str(tmp_path),
            max_new_tokens=24,
            executor="ray",
        )
    )
    assert stats["synthesize"]["records_in"] == 6 == stats["synthesize"]["records_out"]
    assert stats["filter"]["records_in"] == 6
    preds = [r["pred"] for r in read_jsonl(tmp_path / "syn_task_triplets.jsonl")]
    assert preds == [r["pred"] for r in synth(models, pairs, tmp_path / "local")]  # local and Ray agree
    assert prompts.EOT not in "".join(preds)
