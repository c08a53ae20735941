"""The HTML of `adamllm report`: the summary and one card per record, as one self-contained page.

Everything here reaches a browser, and every value comes from files a person may have edited: each
one goes through `_h` (HTML-escaped, quotes included) before it is placed in text or an attribute,
and numbers from stats.json are formatted only when they are numbers. A Content-Security-Policy
lets only the page's own script run, so an escaping slip still cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from html import escape

STAGES = ("synthesize", "filter", "format")
TRIPLET_KEYS = ("Q", "precise_A", "informative_A")


@dataclass
class Card:
    """One record's whole path, every field already reduced to text (or None where absent)."""

    syn_id: str
    image: str
    caption: str
    pred: str | None
    triplet: dict[str, str | None] | None  # TRIPLET_KEYS -> text, None for a missing or non-text field
    verdict: str  # yes / no / open / invalid, or "none" without a triplet
    reason: str  # why the record has no kept task ("" when it has one)
    conversation: list[tuple[str, str]] | None  # (role, content) of the final training record
    thumbnail: str = ""  # data: URL
    pairs: list[tuple[str, str]] = field(default_factory=list)


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


def _h(value: object) -> str:
    return escape(str(value))


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value: object, spec: str = "", missing: str = "") -> str:
    """A stats.json number as text; `missing` for an absent or hand-edited non-number."""
    if not is_number(value):
        return missing
    try:
        return format(value, spec)
    except OverflowError:  # an int too large for a float format such as ".1f"
        return str(value)


def _svg_histogram(values: list[int], title: str, width: int = 300, height: int = 120, bins: int = 12) -> str:
    if not values:
        return f'<div class="plot"><b>{_h(title)}</b><br>no data</div>'
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
        f'<div class="plot"><b>{_h(title)}</b> (n={len(values)}, words)<br>'
        f'<svg width="{width}" height="{height}" role="img" aria-label="{_h(title)}">{rects}{axis}</svg></div>'
    )


def _rejected(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{reason}: {number(n, missing='?')}" for reason, n in sorted(value.items())) or "none"
    return "none" if value in (None, {}) else "unreadable"


def _stage_table(stats: dict[str, dict]) -> str:
    rows = []
    for stage in STAGES:
        s = stats.get(stage, {})
        cells = [
            stage, number(s.get("records_in")), number(s.get("records_out")), _rejected(s.get("rejected")),
            number(s.get("wall_s"), ".1f"), number(s.get("engine_s"), ".1f"),
            number(s.get("prompt_tokens")), number(s.get("output_tokens")),
        ]
        rows.append("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in cells) + "</tr>")
    head = "<tr><th>stage</th><th>in</th><th>out</th><th>rejected by reason</th><th>wall s</th><th>engine s</th><th>prompt tokens</th><th>output tokens</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def prefix_cache_note(filt: dict) -> str:
    """How many filter prompt tokens came from the prefix cache, or why no number exists."""
    args = filt.get("args") if isinstance(filt.get("args"), dict) else {}
    prompt_tokens = filt.get("prompt_tokens")
    if not (is_number(prompt_tokens) and prompt_tokens > 0):
        return "none (no prompt was run: no triplet to judge)"
    if args.get("engine") == "hf":  # transformers keeps no prefix cache; a recorded 0 would mislead
        return "not measured by this engine (hf)"
    return number(filt.get("cached_prompt_tokens"), missing="not measured by this engine")


def _triplet(triplet: dict[str, str | None] | None) -> str:
    if triplet is None:
        return "<i>none</i>"
    text = "\n".join(f"{label}: {triplet[key] if triplet[key] is not None else '(missing)'}"
                     for key, label in zip(TRIPLET_KEYS, ("Q", "precise", "informative")))
    return f"<pre>{_h(text)}</pre>"


def _card(card: Card) -> str:
    img = f'<img src="{_h(card.thumbnail)}" alt="{_h(card.image)}">' if card.thumbnail else f"<div>(no image: {_h(card.image)})</div>"
    pairs = "".join(f"<pre>Q: {_h(q)}\nA: {_h(a)}</pre>" for q, a in card.pairs) or "<i>no pair parsed</i>"
    conversation = (
        "".join(f'<div class="turn"><span class="role">{_h(role)}:</span><pre>{_h(content)}</pre></div>' for role, content in card.conversation)
        if card.conversation else "<i>not in the post-training file</i>"
    )
    reason = f'<span class="tag">{_h(card.reason)}</span>' if card.reason else ""
    return (
        f'<section class="card" data-verdict="{_h(card.verdict)}" data-reason="{_h(card.reason)}">{img}<div class="body">'
        f'<div><span class="tag">#{_h(card.syn_id)}</span><span class="tag">verdict: {_h(card.verdict)}</span>{reason}'
        f"<b>{_h(card.image)}</b></div>"
        f"<h3>Caption</h3><pre>{_h(card.caption)}</pre>"
        f"<details><summary>Synthesizer output: {len(card.pairs)} pair(s)</summary>{pairs}"
        f"<h4>Raw output</h4><pre>{_h(card.pred if card.pred is not None else '(none)')}</pre></details>"
        f"<h3>Collected triplet</h3>{_triplet(card.triplet)}<h3>Training conversation</h3>{conversation}</div></section>"
    )


def _options(counts: Counter) -> str:
    return "".join(f'<option value="{_h(v)}">{_h(v)} ({_h(n)})</option>' for v, n in counts.most_common())


def _plots(cards: list[Card]) -> str:
    triplets = [c.triplet for c in cards if c.triplet is not None]
    return "".join(
        _svg_histogram([len(t[key].split()) for t in triplets if t[key] is not None], label)
        for key, label in zip(TRIPLET_KEYS, ("question length", "precise answer length", "informative answer length"))
    )


def render(stats: dict[str, dict], cards: list[Card], title: str, image_note: str) -> str:
    """The page; `stats` maps each stage to its (dict) entry of stats.json."""
    verdicts = Counter(c.verdict for c in cards)
    reasons = Counter(c.reason for c in cards if c.reason)
    filt = stats.get("filter", {})
    verdict_rows = "".join(f"<tr><td>{_h(v)}</td><td>{_h(n)}</td></tr>" for v, n in verdicts.most_common())
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_h(csp)}">
<title>{_h(title)}</title><style>{STYLE}</style></head>
<body data-cards="{len(cards)}">
<h1>{_h(title)}</h1>
<h2>Summary</h2>
{_stage_table(stats)}
<p>Pass rate of the consistency filter: <b>{_h(number(filt.get('pass_rate'), '.0%', missing='unknown'))}</b> of judged triplets
(the paper saw about 30%). Prompt tokens computed by the filter: {_h(number(filt.get('prompt_tokens_computed'), missing='unknown'))},
served from the prefix cache: {_h(prefix_cache_note(filt))}.</p>
<p>Images from: <b id="image-folder">{_h(image_note)}</b></p>
<table><tr><th>verdict</th><th>records</th></tr>{verdict_rows}</table>
<div class="plots">{_plots(cards)}</div>
<h2>Records</h2>
<p>Verdict <select id="verdict"><option value="">all</option>{_options(verdicts)}</select>
reason <select id="reason"><option value="">all</option>{_options(reasons)}</select>
showing <b id="shown">{len(cards)}</b> of {len(cards)}</p>
{''.join(_card(c) for c in cards)}
<script>{SCRIPT}</script>
</body></html>
"""
