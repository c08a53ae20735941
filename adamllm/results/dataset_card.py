"""The dataset card (README.md) `adamllm export` writes beside the dataset: the counts of every stage
as stats.json recorded them, the models used, the curation applied, the columns, and a `license`
field left for the user. Every value from stats.json is flattened to one Markdown-safe line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

CARD_FILE = "README.md"


@dataclass
class ExportSummary:
    """What `adamllm export` did: the counts the card reports beside the run's own."""

    records_in: int = 0  # records of the post-training file
    rows: int = 0
    rejected: dict = field(default_factory=dict)
    rows_with_synthetic_task: int = 0
    no_task_reasons: dict = field(default_factory=dict)
    to: str = ""
    pushed_to: str = ""


def stage_entry(stats: dict, stage: str) -> dict:
    """A stage's entry in stats.json ({} when missing or damaged)."""
    entry = stats.get(stage)
    return entry if isinstance(entry, dict) else {}


def stage_args(stats: dict, stage: str) -> dict:
    """The arguments a stage recorded in stats.json ({} when missing or damaged)."""
    args = stage_entry(stats, stage).get("args")
    return args if isinstance(args, dict) else {}


def _cell(value: Any) -> str:
    """A stats value as a Markdown table cell (one line, no pipes, numbers only when numbers)."""
    if isinstance(value, dict):
        return (
            ", ".join(f"{_cell(k)}: {_cell(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) or "none"
        )
    if value is None:
        return ""
    return re.sub(r"[|\r\n`]+", " ", str(value))[:300]


def _size_category(n: int) -> str:
    for bound, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < bound:
            return name
    return "10M<n<100M"


def _model(stats: dict, stage: str, run_flag: str) -> str:
    model = stage_args(stats, stage).get("model") or stage_args(stats, "run").get(run_flag)
    return f"`{_cell(model)}`" if isinstance(model, str) and model else "not recorded in stats.json"


def dataset_card(name: str, stats: dict, summary: ExportSummary) -> str:
    rows = []
    for stage in ("synthesize", "filter", "format"):
        s = stage_entry(stats, stage)
        rows.append(
            f"| {stage} | {_cell(s.get('records_in'))} | {_cell(s.get('records_out'))} | "
            f"{_cell(s.get('rejected', {}))} |"
        )
    rows.append(f"| export | {summary.records_in} | {summary.rows} | {_cell(summary.rejected)} |")
    filt = stage_entry(stats, "filter")
    mode = stage_args(stats, "filter").get("mode") or stage_args(stats, "run").get("mode") or "not recorded"
    curation = stage_entry(stats, "format").get("curation")
    curation = curation if isinstance(curation, dict) else {}
    lines = []
    if "dedup" in curation:
        lines.append(
            f"- duplicate questions (`adamllm format --dedup {_cell(curation.get('dedup'))}`, at most "
            f"{_cell(curation.get('max_per_question'))} per question): {_cell(curation.get('questions_seen'))} "
            f"questions seen, "
            f"{_cell(curation.get('questions_distinct'))} distinct, {_cell(curation.get('dropped_duplicate'))} dropped "
            f"as duplicates"
        )
    if "min_yes_prob" in curation:
        lines.append(
            f"- verdict confidence (`adamllm format --min_yes_prob {_cell(curation.get('min_yes_prob'))}`): "
            f"{_cell(curation.get('yes_prob_checked'))} tasks checked, {_cell(curation.get('dropped_low_yes_prob'))} "
            f"dropped below it, "
            f"{_cell(curation.get('no_yes_prob'))} without log-probabilities"
        )
    curation_text = "\n".join(lines) or "None: every task the checker said Yes to is kept (the paper's rule)."
    return f"""---
license: unknown  # FILL IN: the licence of your images and captions (e.g. cc-by-4.0); see https://huggingface.co/docs/hub/repositories-licenses
pretty_name: {json.dumps(name)}
task_categories:
- visual-question-answering
- image-text-to-text
tags:
- synthetic
- adamllm
size_categories:
- {_size_category(summary.rows)}
---

# {_cell(name)}

Visual instruction tasks synthesized from image-caption pairs by `adamllm`, which reproduces the
method of *On Domain-Adaptive Post-Training for Multimodal Large Language Models* (AdaMLLM): a
synthesizer writes a question with a precise and an informative answer for each image, a text LLM
keeps the triplets whose answers are consistent, and each record holds the image's caption task and,
when its triplet was kept, the synthetic task.

## Licence

**Fill in before sharing.** The `license` field above is left for you: these rows hold your images
and captions, whose licence this tool cannot know.

## Models

| role | model |
| --- | --- |
| synthesizer | {_model(stats, "synthesize", "synthesizer")} |
| consistency checker | {_model(stats, "filter", "checker")} (mode: {_cell(mode)}) |

## Counts

| stage | records in | records out | rejected by reason |
| --- | --- | --- | --- |
{chr(10).join(rows)}

Pass rate of the consistency filter: {_cell(filt.get("pass_rate"))} of judged triplets. Rows with
the synthetic task: {summary.rows_with_synthetic_task} of {summary.rows}; without, by reason:
{_cell(summary.no_task_reasons)}.

Curation beyond the paper:
{curation_text}

## Columns

| column | meaning |
| --- | --- |
| syn_id | the record's number in the stage-2 input |
| image | the image (`Image` feature, the file's bytes) |
| image_path | its path in the image folder |
| messages | the training conversation: `[{{"role": "user" or "assistant", "content": ...}}]`, the image as `<image>` in the first user turn |
| caption | the input caption |
| Q, precise_A, informative_A | the synthesized triplet (null without one) |
| consistency | the checker's verdict: yes, no, open, invalid (null without a triplet) |
| yes_prob | the checker's probability of Yes (with `adamllm filter --mode logprob`; else null) |
| synthetic_task | whether `messages` holds the synthetic task |
| no_task_reason | why not ("" when it does) |

## Loading

```python
from datasets import load_from_disk   # this folder, as written by `adamllm export`
ds = load_from_disk("{_cell(name)}")
# from the Hub, once pushed: load_dataset("NAMESPACE/NAME", split="train")
```
"""  # noqa: E501 (a Markdown table row is one line)
