"""`adamllm report OUTPUT_DIR`: one self-contained HTML page showing a stage-2 run.

    adamllm report exp/demo/stage2     # -> exp/demo/stage2/report.html

A summary (records per stage, rejections by reason, verdicts and pass rate, length distributions,
time and tokens per stage) and a card per record with its whole path: image, caption, the pairs the
synthesizer wrote, the collected triplet, the verdict and the final training conversation. Cards
filter by verdict or reason (also from the URL: `report.html#verdict=yes`, `#reason=no_triplet`).
Every text is escaped, and a Content-Security-Policy lets only the page's own script run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from PIL import Image

from adamllm.consistency import OUTPUT_FILE as FILTERED_FILE
from adamllm.formats import COLLECTED_QA, CONSISTENCY, ERROR, PRED, SYN_ID, RecordError, iter_json_records, read_jsonl
from adamllm.images import load_image
from adamllm.parse import parse_pairs
from adamllm.pipeline import FINAL_FILE
from adamllm.stats import STATS_FILE

REPORT_FILE = "report.html"
THUMBNAIL = 160
STAGES = ("synthesize", "filter", "format")


@dataclass
class Card:
    syn_id: int
    image: str
    caption: str
    pred: str | None
    triplet: dict | None
    verdict: str  # yes / no / open / invalid, or "none" without a triplet
    reason: str  # why the record has no kept task ("" when it has one)
    conversation: list[dict] | None  # the final training record's messages
    thumbnail: str = ""  # data: URL
    pairs: list[tuple[str, str]] = field(default_factory=list)


def _caption(record: dict) -> str:
    try:
        return record["messages"][1]["content"]
    except (KeyError, IndexError, TypeError):
        return ""


def _thumbnail(image_folder: str, relative: str) -> str:
    try:
        image = load_image(image_folder, relative)
    except RecordError:
        return ""
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def load_cards(out_dir: Path, image_folder: str) -> list[Card]:
    """One card per record of the filtered file, joined with the final post-training record."""
    final_path = out_dir / FINAL_FILE
    rejects_path = out_dir / FINAL_FILE.replace(".json", ".rejects.jsonl")
    format_rejects = {r["index"] for r in read_jsonl(rejects_path)} if rejects_path.exists() else set()
    finals = iter(iter_json_records(final_path)) if final_path.exists() else iter(())
    cards = []
    for index, record in enumerate(read_jsonl(out_dir / FILTERED_FILE)):
        final = None if index in format_rejects else next(finals, None)
        verdict = record.get(CONSISTENCY) or "none"
        reason = "" if verdict == "yes" else (record.get(ERROR) or {}).get("reason") or f"consistency_{verdict}"
        image = (record.get("images") or [""])[0] if isinstance(record.get("images"), list) else ""
        pred = record.get(PRED)
        cards.append(
            Card(
                syn_id=record.get(SYN_ID, index),
                image=image,
                caption=_caption(record),
                pred=pred,
                triplet=record.get(COLLECTED_QA),
                verdict=verdict,
                reason=reason,
                conversation=(final.get("messages") or final.get("conversations")) if final else None,
                thumbnail=_thumbnail(image_folder, image) if image else "",
                pairs=parse_pairs(pred) if isinstance(pred, str) else [],
            )
        )
    return cards


# --- rendering -------------------------------------------------------------------------------------
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a;background:#f6f7f9}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #d5d9de;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
.plots{display:flex;gap:18px;flex-wrap:wrap}.plot{background:#fff;border:1px solid #d5d9de;padding:8px}
.card{display:flex;gap:16px;background:#fff;border:1px solid #d5d9de;border-left:6px solid #8a939c;margin:12px 0;padding:12px}
.card[data-verdict=yes]{border-left-color:#2e9d4f}.card[data-verdict=no]{border-left-color:#c8423b}
.card[data-verdict=open]{border-left-color:#d6a328}.card img{width:160px;height:auto;align-self:flex-start}
.card .body{flex:1;min-width:0}.tag{display:inline-block;padding:1px 8px;border-radius:9px;background:#e8ebee;margin-right:6px}
pre{white-space:pre-wrap;word-break:break-word;background:#f1f3f5;padding:6px;margin:4px 0;max-height:220px;overflow:auto}
.turn{margin:3px 0}.role{font-weight:600;margin-right:4px}.hidden{display:none}
"""

SCRIPT = """
function applyFilter(){
  var v=document.getElementById('verdict').value, r=document.getElementById('reason').value, shown=0;
  document.querySelectorAll('.card').forEach(function(c){
    var ok=(!v||c.dataset.verdict===v)&&(!r||c.dataset.reason===r);
    c.classList.toggle('hidden',!ok); if(ok){shown++;}
  });
  document.getElementById('shown').textContent=shown;
}
function fromHash(){
  new URLSearchParams(location.hash.slice(1)).forEach(function(value,key){
    var el=document.getElementById(key); if(el){el.value=value;}
  });
  applyFilter();
}
document.getElementById('verdict').addEventListener('change',applyFilter);
document.getElementById('reason').addEventListener('change',applyFilter);
window.addEventListener('hashchange',fromHash);
fromHash();
"""


def _svg_histogram(values: list[int], title: str, width: int = 300, height: int = 120, bins: int = 12) -> str:
    if not values:
        return f'<div class="plot"><b>{escape(title)}</b><br>no data</div>'
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((v - lo) // step for v in values)
    n = max(counts) + 1
    peak = max(counts.values())
    bar = width / n
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - 18 - c / peak * (height - 30):.1f}" width="{bar - 2:.1f}" '
        f'height="{c / peak * (height - 30):.1f}" fill="#4a78b5"><title>{lo + i * step}-{lo + (i + 1) * step - 1}: {c}</title></rect>'
        for i, c in sorted(counts.items())
    )
    axis = f'<text x="0" y="{height - 4}" font-size="10">{lo}</text><text x="{width - 30}" y="{height - 4}" font-size="10">{hi}</text>'
    return (
        f'<div class="plot"><b>{escape(title)}</b> (n={len(values)}, words)<br>'
        f'<svg width="{width}" height="{height}" role="img" aria-label="{escape(title)}">{rects}{axis}</svg></div>'
    )


def _stage_table(stats: dict) -> str:
    rows = []
    for stage in STAGES:
        s = stats.get(stage) or {}
        rejected = ", ".join(f"{k}: {v}" for k, v in sorted((s.get("rejected") or {}).items())) or "none"
        cells = [
            stage, s.get("records_in", ""), s.get("records_out", ""), rejected,
            f"{s.get('wall_s', 0):.1f}", f"{s.get('engine_s', 0):.1f}", s.get("prompt_tokens", ""), s.get("output_tokens", ""),
        ]
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "<tr><th>stage</th><th>in</th><th>out</th><th>rejected by reason</th><th>wall s</th><th>engine s</th><th>prompt tokens</th><th>output tokens</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _card(card: Card) -> str:
    img = f'<img src="{card.thumbnail}" alt="{escape(card.image)}">' if card.thumbnail else f"<div>(no image: {escape(card.image)})</div>"
    pairs = "".join(f"<pre>Q: {escape(q)}\nA: {escape(a)}</pre>" for q, a in card.pairs) or "<i>no pair parsed</i>"
    triplet = (
        "<pre>" + escape(f"Q: {card.triplet['Q']}\nprecise: {card.triplet['precise_A']}\ninformative: {card.triplet['informative_A']}") + "</pre>"
        if isinstance(card.triplet, dict) else "<i>none</i>"
    )
    conversation = (
        "".join(
            f'<div class="turn"><span class="role">{escape(str(m.get("role", m.get("from", ""))))}:</span>'
            f'<pre>{escape(str(m.get("content", m.get("value", ""))))}</pre></div>'
            for m in card.conversation
        )
        if card.conversation else "<i>not in the post-training file</i>"
    )
    reason = f'<span class="tag">{escape(card.reason)}</span>' if card.reason else ""
    return (
        f'<section class="card" data-verdict="{escape(card.verdict)}" data-reason="{escape(card.reason)}">{img}<div class="body">'
        f'<div><span class="tag">#{card.syn_id}</span><span class="tag">verdict: {escape(card.verdict)}</span>{reason}'
        f"<b>{escape(card.image)}</b></div>"
        f"<h3>Caption</h3><pre>{escape(card.caption)}</pre>"
        f"<details><summary>Synthesizer output: {len(card.pairs)} pair(s)</summary>{pairs}"
        f"<h4>Raw output</h4><pre>{escape(card.pred if card.pred is not None else '(none)')}</pre></details>"
        f"<h3>Collected triplet</h3>{triplet}<h3>Training conversation</h3>{conversation}</div></section>"
    )


def render(stats: dict, cards: list[Card], title: str) -> str:
    verdicts = Counter(c.verdict for c in cards)
    reasons = Counter(c.reason for c in cards if c.reason)
    triplets = [c.triplet for c in cards if isinstance(c.triplet, dict)]
    filt = stats.get("filter") or {}
    plots = "".join(
        _svg_histogram([len(t[key].split()) for t in triplets], label)
        for key, label in (("Q", "question length"), ("precise_A", "precise answer length"), ("informative_A", "informative answer length"))
    )
    verdict_rows = "".join(f"<tr><td>{escape(v)}</td><td>{n}</td></tr>" for v, n in verdicts.most_common())
    options = lambda values: "".join(f'<option value="{escape(v)}">{escape(v)} ({n})</option>' for v, n in values.most_common())
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body data-cards="{len(cards)}">
<h1>{escape(title)}</h1>
<h2>Summary</h2>
{_stage_table(stats)}
<p>Pass rate of the consistency filter: <b>{filt.get('pass_rate', 0):.0%}</b> of judged triplets
(the paper saw about 30%). Prompt tokens computed by the filter: {escape(str(filt.get('prompt_tokens_computed', '')))},
served from the prefix cache: {escape(str(filt.get('cached_prompt_tokens', '')))}.</p>
<table><tr><th>verdict</th><th>records</th></tr>{verdict_rows}</table>
<div class="plots">{plots}</div>
<h2>Records</h2>
<p>Verdict <select id="verdict"><option value="">all</option>{options(verdicts)}</select>
reason <select id="reason"><option value="">all</option>{options(reasons)}</select>
showing <b id="shown">{len(cards)}</b> of {len(cards)}</p>
{''.join(_card(c) for c in cards)}
<script>{SCRIPT}</script>
</body></html>
"""


def write_report(out_dir: str | Path, image_folder: str = "") -> Path:
    """Write OUTPUT_DIR/report.html; the image folder defaults to the one synthesis ran with."""
    out = Path(out_dir)
    stats_path = out / STATS_FILE
    if not (out / FILTERED_FILE).exists() or not stats_path.exists():
        raise ValueError(f"{out} holds no finished stage-2 run (no {FILTERED_FILE} or {STATS_FILE}); run `adamllm run` first")
    stats = json.loads(stats_path.read_text())
    folder = image_folder or (stats.get("synthesize") or {}).get("args", {}).get("image_folder", "")
    cards = load_cards(out, folder)
    path = out / REPORT_FILE
    path.write_text(render(stats, cards, f"adamllm stage-2 report: {out.name}"), encoding="utf-8")
    return path
