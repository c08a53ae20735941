import json
import os
import tempfile
from pathlib import Path

import pytest


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path):
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj), encoding="utf-8")
    return Path(path)


def pairs_with_bad_images(root, num_pairs: int, seed: int, missing: int, corrupt: int) -> dict:
    """Generated stage-2 pairs where record `missing` names an absent image and record `corrupt`'s
    image file is not an image."""
    from adamllm.testing.fixtures import make_caption_pairs

    out = make_caption_pairs(root, num_pairs, seed=seed)
    records = read_json(out["data_path"])
    (out["image_folder"] / records[corrupt]["images"][0]).write_bytes(b"not an image")
    records[missing]["images"] = ["missing.png"]
    write_json(out["data_path"], records)
    return out


@pytest.fixture
def seed_fixtures(tmp_path):
    from adamllm.testing.fixtures import make_seed_fixtures

    return make_seed_fixtures(tmp_path / "seed", num_images=30, seed=1)


# vLLM on a small CPU machine (cpu-stack.md): 1 GiB of KV cache, the engine in-process, no hub.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="adamllm-vllm-cache-"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny synthesizer and checker, built once per test session."""
    from adamllm.testing.tiny import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def qwen_models(tmp_path_factory):
    """A tiny synthesizer and checker of each Qwen-VL family, built once per test session."""
    from adamllm.testing.tiny import make_tiny_models

    return {f: make_tiny_models(tmp_path_factory.mktemp(f), family=f) for f in ("qwen2_5_vl", "qwen3_vl")}
