"""The transformers backend: batched greedy generation, for machines without vLLM and as a
cross-check of the vLLM backend."""

from __future__ import annotations

from adamllm.engines import EngineArgs, Generation, GenParams, Request
from adamllm.models.backbones import ProcessorOptions


class HfEngine:
    def __init__(self, args: EngineArgs, multimodal: bool, options: ProcessorOptions = ProcessorOptions()):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from adamllm.models.model_io import load_synthesizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = args.dtype
        if dtype == "auto":
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        if multimodal:
            self.model, self.processor = load_synthesizer(args.model, dtype, options)
            self.tokenizer = self.processor.tokenizer
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(args.model)
            self.processor = self.tokenizer
            self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        self.model.to(self.device).eval()
        # Left padding: every prompt of a batch ends where generation starts.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = args.batch_size

    def generate(self, requests: list[Request], params: GenParams) -> list[Generation]:
        out = []
        for start in range(0, len(requests), self.batch_size):
            out += self._batch(requests[start : start + self.batch_size], params)
        return out

    def _batch(self, requests: list[Request], params: GenParams) -> list[Generation]:
        import torch

        texts = [r.prompt for r in requests]
        if requests[0].image is not None:
            inputs = self.processor(images=[r.image for r in requests], text=texts, padding=True, return_tensors="pt")
        else:
            inputs = self.tokenizer(texts, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.no_grad():
            result = self.model.generate(
                **inputs,
                max_new_tokens=params.max_tokens,
                do_sample=False,
                eos_token_id=params.stop_token_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                output_scores=bool(params.candidates),
                return_dict_in_generate=True,
            )
        prompt_len = inputs["input_ids"].shape[1]
        generations = []
        for row, sequence in enumerate(result.sequences):
            ids = sequence[prompt_len:].tolist()[: requests[row].max_tokens or params.max_tokens]
            for i, tid in enumerate(ids):
                if tid in params.stop_token_ids:
                    ids = ids[:i]
                    break
            candidates = {}
            if params.candidates:
                logprobs = torch.log_softmax(result.scores[0][row].float(), dim=-1)
                top = set(torch.topk(logprobs, params.top_k_logprobs).indices.tolist())
                candidates = {n: logprobs[t].item() for n, t in params.candidates.items() if t in top}
            generations.append(
                Generation(
                    text=self.tokenizer.decode(ids, skip_special_tokens=False),
                    token_ids=ids,
                    prompt_tokens=int(inputs["attention_mask"][row].sum()),
                    candidate_logprobs=candidates,
                )
            )
        return generations
