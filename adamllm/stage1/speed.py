"""Stage-1 speed levers of `adamllm train`, each with a clean fallback, and the step timer the
benchmark (bench/bench_stage1.py) reads.

- `--use_liger_kernel True`: Liger's Triton kernels for the Llama-3 language model (RMSNorm, SwiGLU,
  RoPE) and its fused linear cross-entropy on the LM head, so the [tokens x 128256] logits are never
  materialised. Liger patches LLaVA but not LLaVA-NeXT, so the patch is applied here by hand.
  Needs liger-kernel, triton and a CUDA device; without them one warning says which, and training
  goes on with the plain path.
- `--attn_implementation flash_attention_2`: needs flash-attn, a CUDA device and bf16/fp16;
  otherwise sdpa, with a warning saying why.
- `--padding_free True`: each micro-batch is one row without padding, position ids restarting per
  sample (train_data.Collator); the attention keeps samples apart from the position ids.
- `--step_timing True`: OUTPUT_DIR/step_timing.rank<R>.json, seconds and tokens per optimizer step
  and peak memory.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MethodType

import torch
import transformers

from adamllm.core.jsonfiles import write_json
from adamllm.models.backbones import BACKBONES, DEFAULT_FAMILY, Backbone
from adamllm.stage1.train_data import IGNORE_INDEX

log = logging.getLogger(__name__)

# Attention implementations of transformers 5.x that keep packed samples apart: flash-attention reads
# the restarts of position_ids as sequence boundaries (varlen), sdpa / eager / flex build a
# block-diagonal causal mask from them (masking_utils.find_packed_sequence_indices). Any other
# implementation (a custom or hub kernel) may get no mask at all and let samples attend to each other.
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention")


@dataclass
class Levers:
    """What each speed lever ended up as; training_summary.json records it."""

    attn_implementation: str
    padding_free: bool
    liger: bool
    fallbacks: list[str] = field(default_factory=list)  # why a requested lever is off

    def as_dict(self) -> dict:
        return asdict(self)


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _fall_back(levers: Levers, message: str) -> None:
    levers.fallbacks.append(message)
    if _main_process():  # one warning, not one per rank
        log.warning("%s", message)


def liger_unavailable() -> str:
    """Why Liger's kernels cannot run here ("" when they can)."""
    missing = [
        package
        for module, package in (("liger_kernel", "liger-kernel"), ("triton", "triton"))
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        return (
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (pip install "
            f"liger-kernel, which brings triton)"
        )
    if not torch.cuda.is_available():
        return "no CUDA device (Liger's kernels are Triton GPU kernels)"
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as e:  # a broken install: say so rather than crash mid-setup
        return f"liger_kernel.transformers does not import: {e}"
    return ""


def flash_attention_unavailable(dtype: torch.dtype) -> str:
    """Why flash_attention_2 cannot run here ("" when it can)."""
    from transformers.utils import is_flash_attn_2_available

    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn not installed (pip install flash-attn --no-build-isolation)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not is_flash_attn_2_available():
        return "flash-attn is older than 2.3.3 or not a FlashAttention-2 build"
    if dtype not in (torch.bfloat16, torch.float16):
        return "FlashAttention-2 runs in bf16 or fp16 only: add --bf16 True"
    return ""


def choose_levers(
    attn_implementation: str,
    padding_free: bool,
    use_liger_kernel: bool,
    dtype: torch.dtype,
    backbone: Backbone = BACKBONES[DEFAULT_FAMILY],
) -> Levers:
    """The levers that can run here, as requested or with a warning naming why not."""
    levers = Levers(attn_implementation, padding_free, use_liger_kernel)
    if padding_free and not backbone.packs:
        levers.padding_free = False
        _fall_back(levers, f"--padding_free is off: {backbone.title} computes its positions from unpacked sequences")
    if use_liger_kernel and not backbone.liger:
        levers.liger = False
        _fall_back(
            levers, f"--use_liger_kernel is off, training goes on without it: not patched for {backbone.title} here"
        )
    if attn_implementation == "flash_attention_2":
        why = flash_attention_unavailable(dtype)
        if why:
            levers.attn_implementation = "sdpa"
            _fall_back(levers, f"--attn_implementation flash_attention_2 falls back to sdpa: {why}")
    if levers.padding_free and levers.attn_implementation not in PACKING_ATTENTION:
        levers.padding_free = False
        _fall_back(
            levers,
            (
                f"--padding_free is off: attention {levers.attn_implementation!r} cannot keep packed samples apart; "
                f"use one of {', '.join(PACKING_ATTENTION)}"
            ),
        )
    if levers.liger:
        why = liger_unavailable()
        if why:
            levers.liger = False
            _fall_back(levers, f"--use_liger_kernel is off, training goes on without it: {why}")
    return levers


def apply_liger(model, kernels=None) -> None:
    """Liger's kernels on a LLaVA-NeXT whose text model is a Llama.

    The language model gets Liger's RoPE, RMSNorm and SwiGLU (`apply_liger_kernel_to_llama` on the
    instance, its own cross-entropy patches off). The loss is computed from the last hidden states by
    `LigerFusedLinearCrossEntropyLoss` (see `_fused_lm_head_forward`). `kernels` is the module that
    holds both (default `liger_kernel.transformers`).
    """
    if kernels is None:
        import liger_kernel.transformers as kernels
    text_type = model.config.text_config.model_type
    if text_type != "llama":
        raise ValueError(
            f"--use_liger_kernel: the text model is a {text_type}; only a Llama text model (LLaVA-NeXT Llama-3) is "
            f"patched"
        )
    kernels.apply_liger_kernel_to_llama(
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
        model=model.model.language_model,
    )
    model.lm_head.fused_loss_cls = kernels.LigerFusedLinearCrossEntropyLoss
    model.lm_head.forward = MethodType(_fused_lm_head_forward, model.lm_head)
    model.forward = _fused_loss_forward(model)


def _fused_lm_head_forward(
    self, hidden_states: torch.Tensor, labels: torch.Tensor | None = None, num_items_in_batch=None
):
    """The LM head's forward once the fused loss is on: given labels, the loss instead of the logits.

    The loss runs inside the head's own module call, not on `lm_head.weight` read from outside: under
    DeepSpeed ZeRO-3 that weight is sharded, and only this call's hooks gather it (for the forward,
    and again for the backward) and hand its gradient to the partitioned optimizer.
    """
    if labels is None:
        return torch.nn.functional.linear(hidden_states, self.weight, self.bias)
    # As transformers' ForCausalLMLoss: shift, mean over the trained tokens of the whole (accumulated,
    # all-rank) batch when the Trainer passes their number, else over this micro-batch's.
    target = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden_states.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss_fn = self.fused_loss_cls(ignore_index=IGNORE_INDEX, reduction=reduction)
    loss = loss_fn(self.weight, hidden_states.reshape(-1, hidden_states.shape[-1]), target, self.bias)
    if num_items_in_batch is not None:
        loss = loss / (
            num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        )
    return loss


def _fused_loss_forward(model):
    """LLaVA-NeXT's forward with the fused loss: training with labels returns the loss and no logits."""
    from transformers.models.llava_next.modeling_llava_next import LlavaNextCausalLMOutputWithPast

    plain = model.forward

    # wraps: the Trainer reads the forward's signature to keep the batch's columns (pixel_values, ...).
    @functools.wraps(plain)
    def forward(*args, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None or not model.training:
            loss_kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
            return plain(*args, labels=labels, **loss_kwargs, **kwargs)
        outputs = model.model(*args, return_dict=True, **kwargs)
        loss = model.lm_head(outputs.last_hidden_state, labels, num_items_in_batch)
        return LlavaNextCausalLMOutputWithPast(loss=loss, logits=None, image_hidden_states=outputs.image_hidden_states)

    return forward


def sample_lengths(inputs: dict) -> list[int]:
    """Tokens of each sample in a batch from train_data.Collator, padded or packed."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum(dim=1).tolist()
    starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist()
    return [b - a for a, b in zip(starts, starts[1:] + [inputs["position_ids"].shape[1]])]


class StepTimer(transformers.TrainerCallback):
    """Seconds, tokens (padding excluded) and padded tokens of every optimizer step of this rank, and
    its peak memory, written to OUTPUT_DIR/step_timing.rank<R>.json when training ends.

    A step runs from the end of the previous one (the first from the start of training), so it
    includes data loading and logging, as real training does. Each sample's squared length is kept
    for the attention term of the benchmark's FLOPs.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / f"step_timing.rank{int(os.environ.get('RANK', '0'))}.json"
        self.steps: list[dict] = []
        self._pending = {"tokens": 0, "padded_tokens": 0, "sum_sq_lengths": 0, "samples": 0}
        self._last = 0.0

    def count(self, inputs: dict) -> None:
        lengths = sample_lengths(inputs)
        self._pending["tokens"] += sum(lengths)
        self._pending["padded_tokens"] += inputs["input_ids"].numel()
        self._pending["sum_sq_lengths"] += sum(n * n for n in lengths)
        self._pending["samples"] += len(lengths)

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the GPU's queued work belongs to the step it was queued in
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._last = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        now = self._now()
        self.steps.append({"step": state.global_step, "seconds": now - self._last, **self._pending})
        self._pending = dict.fromkeys(self._pending, 0)
        self._last = now

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            memory = {
                "device": torch.cuda.get_device_name(),
                "peak_memory_bytes": torch.cuda.max_memory_allocated(),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            }
        else:  # peak resident set of this process (Linux reports KiB)
            memory = {"device": "cpu", "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        write_json(self.path, {"world_size": args.world_size, **memory, "steps": self.steps})
