"""Stage-1 speed levers (adamllm/stage1/speed.py): each one's code path is taken, and falls back cleanly
where its kernel cannot run. Liger's Triton kernels cannot run on a CPU: the tests that need them use
a stand-in written in plain torch (test names ending in `_mock`), shaped like Liger's fused linear
cross-entropy (gradients computed in the forward, scaled in the backward)."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import read_json

from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed
from adamllm.testing.fixtures import make_seed_fixtures

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for liger_kernel.transformers: records the Llama patch it is asked for, and computes the
# fused linear cross-entropy in plain torch the way Liger's kernel does (gradients in the forward).
LIGER_STUB = """
import torch

calls = []


def apply_liger_kernel_to_llama(**kwargs):
    calls.append(kwargs)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target, bias, ignore_index, reduction):
        with torch.enable_grad():
            x_, w_ = x.detach().requires_grad_(), weight.detach().requires_grad_()
            b_ = None if bias is None else bias.detach().requires_grad_()
            logits = torch.nn.functional.linear(x_, w_, b_).float()
            loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
            grads = torch.autograd.grad(loss, [t for t in (x_, w_, b_) if t is not None])
        ctx.save_for_backward(*grads)
        ctx.has_bias = bias is not None
        return loss.detach()

    @staticmethod
    def backward(ctx, grad_output):
        grads = [g * grad_output for g in ctx.saved_tensors]
        return grads[0], grads[1], None, grads[2] if ctx.has_bias else None, None, None


class LigerFusedLinearCrossEntropyLoss(torch.nn.Module):
    calls = 0

    def __init__(self, ignore_index=-100, reduction="mean"):
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, lin_weight, _input, target, bias=None):
        type(self).calls += 1
        return _FusedLinearCrossEntropy.apply(_input, lin_weight, target, bias, self.ignore_index, self.reduction)
"""


@pytest.fixture(autouse=True)
def one_thread():
    """Sums in one fixed order, run after run; the thread count is given back for the next tests."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    seed = make_seed_fixtures(root / "seed", num_images=12, seed=7)
    merged = root / "merged.json"
    run_merge_seed(
        MergeSeedArgs(
            caption_path=str(seed["caption"]),
            precise_qa_path=str(seed["precise"]),
            informative_qa_path=str(seed["informative"]),
            output=str(merged),
            blank_image_path=str(root / "blank.png"),
            replace_with_blank_image_percent=25,
        )
    )
    return {
        "merged": merged,
        "image_folder": seed["image_folder"],
        "blank": root / "blank.png",
        "model": tiny_models["synthesizer"],
        "root": root,
    }


@pytest.fixture(scope="module")
def items(data):
    """Three samples of different lengths, one with the blank image."""
    from adamllm.models.model_io import load_processor
    from adamllm.stage1.train_data import SeedDataset

    processor = load_processor(str(data["model"]))
    dataset = SeedDataset(
        str(data["merged"]), processor, str(data["image_folder"]), str(data["blank"]), 6144, data["root"] / "r.jsonl"
    )
    blank = next(i for i, e in enumerate(dataset.examples) if e.blank)
    picked = [dataset[i] for i in [blank] + [i for i in range(len(dataset)) if i != blank][:2]]
    assert len({len(x["input_ids"]) for x in picked}) == 3
    return picked


def load_model(path, attn="sdpa"):
    import torch

    from adamllm.models.model_io import load_synthesizer_model

    torch.manual_seed(0)
    model = load_synthesizer_model(str(path), torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    return model.train()


def loss_and_grads(model, batch, num_items_in_batch=None):
    model.zero_grad()
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    out = model(**batch, **kwargs)
    out.loss.backward()
    out.loss = out.loss.detach()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(loss_a, grads_a, loss_b, grads_b):
    import torch

    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and any("vision_tower" in n for n in grads_a)
    for name in grads_a:
        # Relative to the whole tensor: sums taken in another order differ in their last bits. The
        # attention's key biases have a zero gradient (softmax ignores a constant), so rounding only.
        diff, norm = (float(torch.linalg.vector_norm(t)) for t in (grads_a[name] - grads_b[name], grads_b[name]))
        assert diff <= 1e-4 * norm + 1e-7, (name, diff, norm)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_gives_the_padded_batch_loss_and_gradients(attn, data, items):
    import torch

    from adamllm.stage1.train_data import Collator

    padded = Collator(0)(items)
    packed = Collator(0, padding_free=True)(items)
    total = sum(len(x["input_ids"]) for x in items)
    assert "attention_mask" not in packed and packed["input_ids"].shape == packed["position_ids"].shape == (1, total)
    assert packed["position_ids"][0].eq(0).sum() == 3 and packed["pixel_values"].shape == padded["pixel_values"].shape
    trained = int((padded["labels"][:, 1:] != -100).sum())
    assert int((packed["labels"][:, 1:] != -100).sum()) == trained  # what the Trainer counts as num_items_in_batch

    model = load_model(data["model"], attn)
    for num_items in (None, torch.tensor(trained)):
        out_padded, grads_padded = loss_and_grads(model, padded, num_items)
        out_packed, grads_packed = loss_and_grads(model, packed, num_items)
        assert_same(out_padded.loss, grads_padded, out_packed.loss, grads_packed)
    # The same packed row with a mask that lets samples see each other gives another loss: the
    # equality above is the attention keeping them apart, not a test blind to leaks.
    leaky, _ = loss_and_grads(model, {**packed, "attention_mask": torch.ones_like(packed["input_ids"])})
    assert abs(float(leaky.loss) - float(out_padded.loss)) > 1e-3


def test_padding_free_falls_back_where_attention_cannot_keep_samples_apart(caplog):
    import torch

    from adamllm.stage1.speed import choose_levers

    with caplog.at_level(logging.WARNING, logger="adamllm.stage1.speed"):
        levers = choose_levers("my_hub_kernel", True, False, torch.float32)
    assert not levers.padding_free and levers.attn_implementation == "my_hub_kernel"
    assert [r.getMessage() for r in caplog.records] == levers.fallbacks
    assert "'my_hub_kernel' cannot keep packed samples apart" in levers.fallbacks[0] and "sdpa" in levers.fallbacks[0]
    assert choose_levers("eager", True, False, torch.float32).padding_free


def test_flash_attention_2_falls_back_to_sdpa_with_one_warning(caplog):
    import torch

    from adamllm.stage1.speed import choose_levers

    with caplog.at_level(logging.WARNING, logger="adamllm.stage1.speed"):
        levers = choose_levers("flash_attention_2", True, False, torch.bfloat16)
    # This CPU stack has neither flash-attn nor CUDA: sdpa, which still packs.
    assert levers.attn_implementation == "sdpa" and levers.padding_free and not levers.liger
    assert len(caplog.records) == 1 and "flash_attention_2 falls back to sdpa" in caplog.records[0].getMessage()
    assert "flash-attn not installed" in levers.fallbacks[0] or "no CUDA device" in levers.fallbacks[0]


def test_liger_unavailable_names_why():
    from adamllm.stage1.speed import liger_unavailable

    # On this stack triton is uninstalled on purpose (docs/cpu-stack.md) and there is no CUDA.
    assert importlib.util.find_spec("triton") is None
    assert "triton" in liger_unavailable() and "pip install liger-kernel" in liger_unavailable()


def test_all_levers_on_a_cpu_train_falls_back_and_trains_packed(data, tmp_path, caplog):
    """The real `adamllm train` with every lever asked for: Liger and FlashAttention-2 fall back with
    one warning each, padding-free runs (on sdpa), and the step timer writes what the benchmark reads."""
    from adamllm.stage1.train import main as train_main

    out = tmp_path / "syn"
    with caplog.at_level(logging.WARNING, logger="adamllm.stage1.speed"):
        code = train_main(
            [
                "--model_name_or_path",
                str(data["model"]),
                "--data_path",
                str(data["merged"]),
                "--image_folder",
                str(data["image_folder"]),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "3",
                "--save_strategy",
                "no",
                "--report_to",
                "none",
                "--use_cpu",
                "True",
                "--dataloader_num_workers",
                "0",
                "--use_liger_kernel",
                "True",
                "--attn_implementation",
                "flash_attention_2",
                "--padding_free",
                "True",
                "--step_timing",
                "True",
            ]
        )
    assert code == 0
    levers = read_json(out / "training_summary.json")["speed_levers"]
    assert levers["attn_implementation"] == "sdpa" and levers["padding_free"] and not levers["liger"]
    assert len(levers["fallbacks"]) == 2 and levers["fallbacks"][1].startswith(
        "--use_liger_kernel is off, training goes on without it:"
    )
    assert "triton" in levers["fallbacks"][1] and "flash-attn not installed" in levers["fallbacks"][0]
    assert sorted(r.getMessage() for r in caplog.records if r.name == "adamllm.stage1.speed") == sorted(
        levers["fallbacks"]
    )
    timing = read_json(out / "step_timing.rank0.json")
    assert [s["step"] for s in timing["steps"]] == [1, 2] and timing["peak_memory_bytes"] > 0
    for step in timing["steps"]:
        assert (
            step["seconds"] > 0 and step["samples"] == 3 and step["tokens"] == step["padded_tokens"] > 0
        )  # packed: no padding
        assert step["sum_sq_lengths"] > step["tokens"] ** 2 / 3 - 1


def stub_kernels(tmp_path):
    package = tmp_path / "stub" / "liger_kernel" / "transformers"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text(LIGER_STUB)
    spec = importlib.util.spec_from_file_location("liger_stub", package / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_liger_patch_applied_with_stub_kernels_mock(data, items, tmp_path):
    """apply_liger patches the Llama text model and computes the loss from hidden states through the
    fused kernel: same loss and gradients as the plain model, no logits."""
    import torch

    from adamllm.stage1.speed import apply_liger
    from adamllm.stage1.train_data import Collator

    kernels = stub_kernels(tmp_path)
    batch = Collator(0)(items)
    trained = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    plain = load_model(data["model"])
    patched = load_model(data["model"])
    apply_liger(patched, kernels)
    assert kernels.calls == [
        {
            "rope": True,
            "rms_norm": True,
            "swiglu": True,
            "cross_entropy": False,
            "fused_linear_cross_entropy": False,
            "model": patched.model.language_model,
        }
    ]
    for num_items in (None, trained):
        out_plain, grads_plain = loss_and_grads(plain, batch, num_items)
        calls = kernels.LigerFusedLinearCrossEntropyLoss.calls
        out_fused, grads_fused = loss_and_grads(patched, batch, num_items)
        assert kernels.LigerFusedLinearCrossEntropyLoss.calls == calls + 1 and out_fused.logits is None
        assert_same(out_plain.loss, grads_plain, out_fused.loss, grads_fused)
    # Outside training (generation, evaluation) the patched model is the plain one, logits and all.
    patched.eval()
    with torch.no_grad():
        logits = patched(**{k: v for k, v in batch.items() if k != "labels"}).logits
        assert torch.allclose(
            logits, plain.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits, atol=1e-5
        )


def test_liger_fused_loss_under_zero3_two_processes_with_stub_kernels_mock(data, items, tmp_path):
    """Under DeepSpeed ZeRO-3 the LM head's weight is sharded: the fused loss must still see all of it
    and its gradient must reach the optimizer. Two SGD steps of `adamllm train` on 2 processes with the
    stand-in kernel equal two plain-torch steps on the same global batch.

    Not shown here: a loss that reads `lm_head.weight` from outside the head's module call (Liger's
    own LLaVA forward does) also passes on this CPU stack, where every weight happens to be gathered
    when a step starts; a bare DeepSpeed ZeRO-3 engine leaves such a weight sharded (measured).
    """
    import torch

    from adamllm.models.model_io import load_processor
    from adamllm.stage1.train_data import Collator, SeedDataset

    stub_kernels(tmp_path)
    records = read_json(data["merged"])[:4]  # one global batch: 2 processes x 2
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    launcher = tmp_path / "train_with_stub.py"
    launcher.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "stub")!r})
        import adamllm.stage1.speed
        adamllm.stage1.speed.liger_unavailable = lambda: ""  # the stand-in runs on a CPU
        from adamllm.stage1.train import main
        sys.exit(main(sys.argv[1:]))
    """)
    )
    # scripts/zero3.json, except that no weight of this small model stays gathered between modules.
    zero3 = json.loads((ROOT / "scripts" / "zero3.json").read_text())
    zero3["zero_optimization"].update(
        stage3_param_persistence_threshold=0, stage3_max_live_parameters=0, stage3_max_reuse_distance=0
    )
    (tmp_path / "zero3.json").write_text(json.dumps(zero3))
    lr = 0.1
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29651",
            str(launcher),
            "--deepspeed",
            str(tmp_path / "zero3.json"),
            "--model_name_or_path",
            str(data["model"]),
            "--data_path",
            str(path),
            "--image_folder",
            str(data["image_folder"]),
            "--blank_image_path",
            str(data["blank"]),
            "--output_dir",
            str(out),
            "--per_device_train_batch_size",
            "2",
            "--num_train_epochs",
            "2",
            "--optim",
            "sgd",
            "--learning_rate",
            str(lr),
            "--mm_vision_tower_lr",
            str(lr),
            "--lr_scheduler_type",
            "constant",
            "--weight_decay",
            "0",
            "--max_grad_norm",
            "0",
            "--save_strategy",
            "no",
            "--logging_steps",
            "1",
            "--report_to",
            "none",
            "--dataloader_num_workers",
            "0",
            "--use_liger_kernel",
            "True",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = read_json(out / "training_summary.json")
    assert summary["speed_levers"]["liger"] and summary["speed_levers"]["fallbacks"] == []

    processor = load_processor(str(data["model"]))
    dataset = SeedDataset(
        str(path), processor, str(data["image_folder"]), str(data["blank"]), 6144, tmp_path / "r.jsonl"
    )
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    model = load_model(data["model"])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(2):
        out_plain, grads = loss_and_grads(model, batch, torch.tensor(int((batch["labels"][:, 1:] != -100).sum())))
        losses.append(float(out_plain.loss))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in grads:  # not the vision tower's last layer: its output is not used (feature layer -2)
                    p -= lr * grads[name]
    assert [x["loss"] for x in summary["loss_curve"]] == pytest.approx(losses, rel=1e-4)
    trained = dict(load_model(out).named_parameters())
    for name in (
        "lm_head.weight",
        "model.language_model.layers.0.mlp.up_proj.weight",
        "model.multi_modal_projector.linear_1.weight",
    ):
        got, want = (
            (trained[name].detach() - initial[name]),
            (dict(model.named_parameters())[name].detach() - initial[name]),
        )
        assert float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)) < 1e-3, name
