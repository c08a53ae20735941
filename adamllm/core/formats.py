"""File formats: what each stage reads and writes.

Files on disk are the hand-over between stages:
- stage-2 input: image-caption pairs, a JSON list (or JSONL) of LLaMA-Factory ShareGPT records
  `{"images": ["x.jpg"], "messages": [{"role": "user", ...}, {"role": "assistant", "content": caption}]}`;
- stage-2 intermediate files (JSONL): the input record plus `syn_id`, `pred`, `collected_QA`,
  `consistency` (their field names and checks: `adamllm.core.records`);
- post-training output: LLaMA-Factory ShareGPT JSON with `images`, or LLaVA JSON, plus a
  `dataset_info.json` entry so LLaMA-Factory trains on it as it is (this module);
- `*.rejects.jsonl`: every record a stage could not use, with its reason (`adamllm.core.records.Rejects`).
"""

from __future__ import annotations

import os
from pathlib import Path

from adamllm.core.jsonfiles import read_json_file, write_json
from adamllm.core.prompts import IMAGE_TAG
from adamllm.core.run_folder import DATASET_INFO_FILE

STYLES = ("llamafactory", "llava")


def sharegpt_record(messages: list[dict[str, str]], image: str) -> dict:
    """LLaMA-Factory ShareGPT form, with the image (the public release forgot `images` here)."""
    return {"messages": messages, "images": [image]}


def llava_record(record_id: str, messages: list[dict[str, str]], image: str) -> dict:
    """LLaVA's own training form."""
    roles = {"user": "human", "assistant": "gpt"}
    return {
        "id": record_id,
        "image": image,
        "conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in messages],
    }


# Where LLaMA-Factory finds the messages and images of each style, and how turns are tagged.
_DATASET_COLUMNS = {
    "llamafactory": ({"messages": "messages", "images": "images"}, ("role", "content", "user", "assistant")),
    "llava": ({"messages": "conversations", "images": "image"}, ("from", "value", "human", "gpt")),
}


def dataset_info_entry(file_name: str, style: str) -> dict:
    """The LLaMA-Factory `dataset_info.json` entry that describes a file we wrote."""
    if style not in _DATASET_COLUMNS:
        raise ValueError(f"unknown output style {style!r}; choose one of {', '.join(STYLES)}")
    columns, (role, content, user, assistant) = _DATASET_COLUMNS[style]
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": columns,
        "tags": {"role_tag": role, "content_tag": content, "user_tag": user, "assistant_tag": assistant},
    }


def update_dataset_info(folder: str | os.PathLike, name: str, entry: dict, into: Path | None = None) -> Path:
    """Add or replace one entry of `folder/dataset_info.json`, keeping the others; written to `into`
    when given (a temp file that replaces it together with the output)."""
    path = Path(folder) / DATASET_INFO_FILE
    info = read_dataset_info(path)
    info[name] = entry
    write_json(into or path, info)
    return path


def read_dataset_info(path: Path) -> dict:
    """A `dataset_info.json` ({} when there is none yet); damage is a ValueError naming the fix."""
    if not path.exists():
        return {}
    return read_json_file(
        path,
        dict,
        "a JSON object of LLaMA-Factory dataset entries",
        "repair it, or move it away and rerun: `adamllm format` writes a new one holding this dataset's entry",
    )


def user_message(text: str, with_image: bool) -> dict[str, str]:
    content = f"{IMAGE_TAG}\n{text}" if with_image else text
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}
