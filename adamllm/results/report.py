"""`adamllm report OUTPUT_DIR`: one self-contained HTML page showing a stage-2 run.

    adamllm report exp/demo/stage2     # -> exp/demo/stage2/report.html

A summary (records per stage, rejections by reason, verdicts and pass rate, length distributions,
time and tokens per stage), the questions most often asked per verdict, what the curation filters
beyond the paper did (`adamllm format --dedup`, `--min_yes_prob`: counts, and the distribution of the
checker's P(Yes) as a plot), and a card per record with its whole path: image, caption, the pairs the
synthesizer wrote, the collected triplet, the verdict and the final training conversation. Cards
filter by verdict or reason (also from the URL: `report.html#verdict=yes`, `#reason=no_triplet`,
`#reason=duplicate_question`).

A run may hold 500,000 records: the summary streams over all of them (`adamllm.results.report_summary`), and
the cards are a seeded sample of at most `--cards_per_group` records per verdict and reason, so the
page stays a few MB and opens in seconds; it says how many records each group holds.

A run folder may have been edited by hand or damaged: a record of the wrong shape still gets its card
(with what could be read), a stats field of the wrong type is left blank, and a file that is not JSON
at all is a ValueError naming it. Thumbnails come only from inside the run's image folder, with the
path checks of the stages. The HTML itself is in `adamllm.results.report_html`.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from adamllm.core.images import load_image
from adamllm.core.jsonfiles import read_json_file, read_run_records
from adamllm.core.records import COLLECTED_QA, CONSISTENCY, ERROR, LOGPROBS, PRED, SYN_ID, RecordError
from adamllm.core.run_folder import FILTERED_FILE, FINAL_FILE, REPORT_FILE, STATS_FILE, curation_path, rejects_path
from adamllm.core.stats import check_run_folder, run_image_folder
from adamllm.models.backbones import split_pairs
from adamllm.results.report_html import render
from adamllm.results.report_summary import CARDS_PER_GROUP, TRIPLET_KEYS, Card, Sample, Summary
from adamllm.stage2.curate import yes_prob

THUMBNAIL = 160


# --- reading a run folder --------------------------------------------------------------------------
def load_stats(path: Path) -> dict[str, dict]:
    """stats.json as {stage: entry}; an entry that is not an object is dropped, so it shows blank."""
    stats = read_json_file(path)
    if not isinstance(stats, dict):
        raise ValueError(f"{path} is not a JSON object of stages (it holds a {type(stats).__name__})")
    return {stage: entry for stage, entry in stats.items() if isinstance(entry, dict)}


def _text(value: Any) -> str:
    """A hand-edited field shown as it is: text stays text, anything else as its JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _first_image(record: dict) -> str:
    images = record.get("images")
    first = images[0] if isinstance(images, list) and images else ""
    return first if isinstance(first, str) else ""


def _caption(record: dict) -> str:
    messages = record.get("messages")
    turn = messages[1] if isinstance(messages, list) and len(messages) > 1 else None
    content = turn.get("content") if isinstance(turn, dict) else None
    return content if isinstance(content, str) else ""


def _triplet(record: dict) -> dict[str, str | None] | None:
    qa = record.get(COLLECTED_QA)
    if not isinstance(qa, dict):
        return None
    return {key: qa.get(key) if isinstance(qa.get(key), str) else None for key in TRIPLET_KEYS}


def _reason(record: dict, verdict: str) -> str:
    if verdict == "yes":
        return ""
    error = record.get(ERROR)
    reason = error.get("reason") if isinstance(error, dict) else error
    return reason if isinstance(reason, str) and reason else f"consistency_{verdict}"


def _conversation(final: Any) -> list[tuple[str, str]] | None:
    """The final record's turns, LLaMA-Factory (`messages`) or LLaVA (`conversations`) style."""
    turns = (final.get("messages") or final.get("conversations")) if isinstance(final, dict) else None
    if not isinstance(turns, list):
        return None
    return [
        (_text(t.get("role", t.get("from", ""))), _text(t.get("content", t.get("value", ""))))
        if isinstance(t, dict)
        else ("", _text(t))
        for t in turns
    ]


class Thumbnails:
    """JPEG data URLs of a run's images, made only from inside `folder`, one decode per image path."""

    def __init__(self, folder: str):
        self.folder = folder
        # Unbounded on purpose: only sampled cards ask, and they keep every thumbnail anyway.
        self._cache: dict[str, str] = {}

    def __call__(self, relative: str) -> str:
        if not self.folder or not relative:
            return ""
        if relative not in self._cache:
            self._cache[relative] = self._make(relative)
        return self._cache[relative]

    def _make(self, relative: str) -> str:
        try:
            image = load_image(self.folder, relative)  # refuses absolute paths, `..` and symlinks out
        except (RecordError, OSError):  # the card says "no image"; a missing image is normal here
            return ""
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _card(index: int, record: Any, final: Any, curation: Any = None) -> Card:
    """The card without what only a shown card needs (its thumbnail, its parsed pairs)."""
    if not isinstance(record, dict):
        return Card(
            syn_id=f"{index} (not a JSON object)",
            image="",
            caption="",
            pred=_text(record),
            triplet=None,
            verdict="none",
            reason="bad_record",
            conversation=_conversation(final),
        )
    consistency = record.get(CONSISTENCY)
    verdict = consistency if isinstance(consistency, str) and consistency else "none"
    pred = record.get(PRED)
    image = _first_image(record)
    reason = _reason(record, verdict)
    if not reason and isinstance(curation, str) and curation:
        reason = curation  # format's curation removed the task the checker kept
    return Card(
        syn_id=_text(record[SYN_ID]) if SYN_ID in record else f"{index} (no syn_id)",
        image=image,
        caption=_caption(record),
        pred=None if pred is None else _text(pred),
        triplet=_triplet(record),
        verdict=verdict,
        reason=reason,
        conversation=_conversation(final),
        yes_prob=yes_prob(record.get(LOGPROBS)),
    )


def load_cards(out_dir: Path, sample: Sample) -> Summary:
    """Stream every record of the filtered file, joined with the final post-training record, into
    the summary and offer its card to the sample.

    The final file holds the filtered records in order, less those format rejected (by index); its
    curation file names, by index, the records whose task curation removed.
    """
    final_path = out_dir / FINAL_FILE
    format_rejects = rejects_path(final_path)
    rejected = {
        row["index"]
        for row in (read_run_records(format_rejects) if format_rejects.exists() else ())
        if isinstance(row, dict) and type(row.get("index")) is int
    }
    curation = curation_path(final_path)
    curated = {  # index -> reason only: a run's curation file may name most of its records
        row["index"]: row.get("reason")
        for row in (read_run_records(curation) if curation.exists() else ())
        if isinstance(row, dict) and type(row.get("index")) is int
    }
    finals = read_run_records(final_path) if final_path.exists() else iter(())
    summary = Summary()
    for index, record in enumerate(read_run_records(out_dir / FILTERED_FILE)):
        card = _card(index, record, None if index in rejected else next(finals, None), curated.get(index))
        summary.add(card)
        pred = record.get(PRED) if isinstance(record, dict) else None
        if sample.offer(index, card) and isinstance(pred, str):
            card.pairs = split_pairs(pred)
    return summary


# --- the image folder ------------------------------------------------------------------------------
def choose_image_folder(out_dir: Path, stats: dict[str, dict], given: str = "") -> tuple[str, str]:
    """The folder thumbnails may come from, and a note saying which and why ("" when there is none):
    the run's image folder by the rule every reader of a run folder follows (`run_image_folder`)."""
    resolved, source = run_image_folder(out_dir, stats, given)
    if resolved is None:
        return "", f"none ({source}; pass --image_folder to show the images)"
    return str(resolved), f"{resolved} ({source})"


def write_report(
    out_dir: str | Path, image_folder: str = "", cards_per_group: int = CARDS_PER_GROUP, seed: int = 0
) -> Path:
    """Write OUTPUT_DIR/report.html; the image folder defaults to the one synthesis ran with."""
    if type(cards_per_group) is not int or cards_per_group < 0:
        raise ValueError(f"--cards_per_group must be a whole number >= 0 (got {cards_per_group!r}); 0 shows no card")
    out = Path(out_dir)
    stats_path = out / STATS_FILE
    if not (out / FILTERED_FILE).exists() or not stats_path.exists():
        raise ValueError(
            f"{out} holds no finished stage-2 run (no {FILTERED_FILE} or {STATS_FILE}); run `adamllm run` first"
        )
    stats = load_stats(stats_path)
    check_run_folder(out, stats)
    folder, note = choose_image_folder(out, stats, image_folder)
    sample = Sample(cards_per_group, seed)
    summary = load_cards(out, sample)
    cards, thumbnail = sample.cards(), Thumbnails(folder)
    for card in cards:
        card.thumbnail = thumbnail(card.image)
    path = out / REPORT_FILE
    try:
        # errors="replace": a JSON "\udc80" escape decodes to a lone surrogate, which UTF-8 cannot hold
        path.write_text(
            render(stats, summary, cards, f"adamllm stage-2 report: {out.name}", note, cards_per_group, sample.shown()),
            encoding="utf-8",
            errors="replace",
        )
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e}") from None
    return path
