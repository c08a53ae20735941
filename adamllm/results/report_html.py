"""The HTML of `adamllm report`: the summary and the sampled record cards, as one self-contained page.

Everything here reaches a browser, and every value comes from files a person may have edited: each
one goes through `_h` (HTML-escaped, quotes included) before it is placed in text or an attribute,
and numbers from stats.json are formatted only when they are numbers. A Content-Security-Policy
lets only the page's own script run, so an escaping slip still cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from html import escape

from adamllm.results.report_summary import MAX_GROUPS, OTHER_GROUPS, TRIPLET_KEYS, YES_PROB_BINS, Card, Summary
from adamllm.stage2.curate import DUPLICATE_QUESTION, LOW_YES_PROB, NO_YES_PROB

STAGES = ("synthesize", "filter", "format")


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
.questions{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}.questions td:first-child{max-width:420px;text-align:left}
"""

SCRIPT = """
function applyFilter(){
  var v=document.getElementById('verdict').value, r=document.getElementById('reason').value, shown=0;
  document.querySelectorAll('.card').forEach(function(c){
    var ok=(!v||c.dataset.verdict===v)&&(!r||c.dataset.reason===r);
    c.classList.toggle('hidden',!ok); if(ok){shown++;}
  });
  document.getElementById('shown').textContent=shown;
  var matching=0;
  document.querySelectorAll('#groups tr[data-records]').forEach(function(g){
    if((!v||g.dataset.groupVerdict===v)&&(!r||g.dataset.groupReason===r)){matching+=Number(g.dataset.records);}
  });
  if(!v&&!r){matching=Number(document.body.dataset.records);}
  document.getElementById('matching').textContent=matching;
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


# The most of one record a card shows (characters of a field, pairs, turns).
MAX_FIELD = 5000
MAX_PAIRS = 20
MAX_TURNS = 20


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


def _svg_histogram(values: Counter, title: str, width: int = 300, height: int = 120, bins: int = 12) -> str:
    """`values` maps a value to how often it occurs."""
    if not values:
        return f'<div class="plot"><b>{_h(title)}</b><br>no data</div>'
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter()
    for v, times in values.items():
        counts[(v - lo) // step] += times
    n = max(counts) + 1
    peak = max(counts.values())
    bar = width / n
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - 18 - c / peak * (height - 30):.1f}" width="{bar - 2:.1f}" '
        f'height="{c / peak * (height - 30):.1f}" fill="#4a78b5"><title>{lo + i * step}-{lo + (i + 1) * step - 1}: '
        f"{c}</title></rect>"
        for i, c in sorted(counts.items())
    )
    axis = f'<text x="0" y="{height - 4}" font-size="10">{lo}</text><text x="{width - 30}" y="{height - 4}" font-size="10">{hi}</text>'
    return (
        f'<div class="plot"><b>{_h(title)}</b> (n={sum(values.values())}, words)<br>'
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
            stage,
            number(s.get("records_in")),
            number(s.get("records_out")),
            _rejected(s.get("rejected")),
            number(s.get("wall_s"), ".1f"),
            number(s.get("engine_s"), ".1f"),
            number(s.get("image_wait_s"), ".1f"),
            number(s.get("prompt_tokens")),
            number(s.get("output_tokens")),
        ]
        rows.append("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in cells) + "</tr>")
    head = "<tr><th>stage</th><th>in</th><th>out</th><th>rejected by reason</th><th>wall s</th><th>engine s</th><th>waiting for images s</th><th>prompt tokens</th><th>output tokens</th></tr>"
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
    text = "\n".join(
        f"{label}: {triplet[key] if triplet[key] is not None else '(missing)'}"
        for key, label in zip(TRIPLET_KEYS, ("Q", "precise", "informative"))
    )
    return f"<pre>{_h(_clip(text))}</pre>"


def _clip(text: str) -> str:
    """A field as the page shows it: one record's huge field must not make the page huge."""
    return text if len(text) <= MAX_FIELD else f"{text[:MAX_FIELD]}… ({len(text) - MAX_FIELD} more characters)"


def _card(card: Card) -> str:
    def h(text: str) -> str:
        return _h(_clip(text))

    image = h(card.image)
    img = f'<img src="{_h(card.thumbnail)}" alt="{image}">' if card.thumbnail else f"<div>(no image: {image})</div>"
    pairs = (
        "".join(f"<pre>{h(f'Q: {q}')}\n{h(f'A: {a}')}</pre>" for q, a in card.pairs[:MAX_PAIRS])
        or "<i>no pair parsed</i>"
    )
    if len(card.pairs) > MAX_PAIRS:
        pairs += f"<i>({len(card.pairs) - MAX_PAIRS} more pairs)</i>"
    conversation = (
        "".join(
            f'<div class="turn"><span class="role">{h(role)}:</span><pre>{h(content)}</pre></div>'
            for role, content in card.conversation[:MAX_TURNS]
        )
        + (f"<i>({len(card.conversation) - MAX_TURNS} more turns)</i>" if len(card.conversation) > MAX_TURNS else "")
        if card.conversation
        else "<i>not in the post-training file</i>"
    )
    reason = f'<span class="tag">{h(card.reason)}</span>' if card.reason else ""
    if card.yes_prob is not None:
        reason += f'<span class="tag">P(yes) {card.yes_prob:.3f}</span>'
    return (
        f'<section class="card" data-verdict="{h(card.verdict)}" data-reason="{h(card.reason)}">{img}<div class="body">'
        f'<div><span class="tag">#{h(card.syn_id)}</span><span class="tag">verdict: {h(card.verdict)}</span>{reason}'
        f"<b>{image}</b></div>"
        f"<h3>Caption</h3><pre>{h(card.caption)}</pre>"
        f"<details><summary>Synthesizer output: {len(card.pairs)} pair(s)</summary>{pairs}"
        f"<h4>Raw output</h4><pre>{h(card.pred if card.pred is not None else '(none)')}</pre></details>"
        f"<h3>Collected triplet</h3>{_triplet(card.triplet)}<h3>Training "
        f"conversation</h3>{conversation}</div></section>"
    )


def _options(counts: Counter) -> str:
    return "".join(
        f'<option value="{_h(_clip(v))}">{_h(_clip(v))} ({_h(n)})</option>' for v, n in counts.most_common(MAX_GROUPS)
    )


def _plots(summary: Summary) -> str:
    return "".join(
        _svg_histogram(summary.lengths[key], label)
        for key, label in zip(TRIPLET_KEYS, ("question length", "precise answer length", "informative answer length"))
    )


# --- questions and curation (beyond the paper) --------------------------------------------------------
TOP_QUESTIONS = 10
TOP_VERDICTS = 8
# The series of the P(Yes) plot: which records, and their colour.
PROB_SERIES = (
    ("kept", "yes, kept by the confidence filter", "#2e9d4f"),
    ("dropped", "yes, below --min_yes_prob", "#d6a328"),
    ("other", "verdict no / open / invalid", "#8a939c"),
)


def _top_questions(summary: Summary) -> str:
    """Per verdict, the questions most often asked (normalised as --dedup exact compares them)."""
    asked, kept, shown = summary.asked, summary.kept, summary.wording
    if not asked:
        return "<p>No triplet was collected, so no question was asked.</p>"
    verdicts = sorted(asked, key=lambda v: (-sum(asked[v].values()), v))
    tables = []
    for verdict in verdicts[:TOP_VERDICTS]:
        counts = asked[verdict]
        rows = "".join(
            f"<tr><td>{_h(shown[key])}</td><td>{n}</td><td>{kept[verdict][key]}</td></tr>"
            for key, n in counts.most_common(TOP_QUESTIONS)
        )
        tables.append(
            f'<div class="plot"><b>verdict {_h(verdict)}</b>: {sum(counts.values())} questions, {len(counts)} distinct'
            f"<table><tr><th>question</th><th>asked</th><th>kept</th></tr>{rows}</table></div>"
        )
    more = f"<p>({len(verdicts) - TOP_VERDICTS} more verdicts not shown)</p>" if len(verdicts) > TOP_VERDICTS else ""
    return f'<div class="questions">{"".join(tables)}</div>{more}'


def _svg_yes_prob(summary: Summary, threshold: object, width: int = 440, height: int = 150) -> str:
    """The distribution of P(Yes), stacked by what the confidence filter did, with its threshold."""
    bins = summary.yes_prob
    counts = sum(bins, Counter())
    if not counts:
        return ""
    peak = max(sum(b.values()) for b in bins)
    plot_h, bar = height - 30, width / YES_PROB_BINS
    rects = []
    for i, b in enumerate(bins):
        y = height - 18
        for series, label, colour in PROB_SERIES:
            if b[series]:
                h = b[series] / peak * plot_h
                y -= h
                lo, hi = i / YES_PROB_BINS, (i + 1) / YES_PROB_BINS
                rects.append(
                    f'<rect x="{i * bar:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="{colour}" '
                    f'data-series="{series}">'
                    f"<title>P(yes) {lo:.2f}-{hi:.2f}, {_h(label)}: {b[series]}</title></rect>"
                )
    line = ""
    if is_number(threshold) and 0 < threshold <= 1:
        x = threshold * width
        line = (
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" stroke="#c8423b" stroke-dasharray="4 3">'
            f"<title>--min_yes_prob {threshold:g}</title></line>"
        )
    axis = (
        f'<text x="0" y="{height - 4}" font-size="10">0</text><text x="{width / 2 - 8:.0f}" y="{height - 4}" '
        f'font-size="10">0.5</text>'
        f'<text x="{width - 8}" y="{height - 4}" font-size="10">1</text>'
    )
    legend = " ".join(
        f'<span class="tag" style="background:{colour};color:#fff">{_h(label)}: {counts[series]}</span>'
        for series, label, colour in PROB_SERIES
    )
    return (
        f'<div class="plot" id="yes-prob"><b>P(yes) of the checker</b> (n={sum(counts.values())}; softmax over the Yes '
        f"/ No / Open log-probabilities)<br>"
        f'<svg width="{width}" height="{height}" role="img" aria-label="P(yes) '
        f'distribution">{"".join(rects)}{line}{axis}</svg><br>{legend}</div>'
    )


def _curation(fmt: dict, summary: Summary) -> str:
    c = fmt.get("curation")
    c = c if isinstance(c, dict) else {}
    parts = []
    if "dedup" in c:
        near = (
            (
                f", near-duplicates at Jaccard >= {_h(number(c.get('near_threshold'), 'g', '?'))} over "
                f"{_h(number(c.get('near_ngram'), missing='?'))}-word shingles"
            )
            if c.get("dedup") == "near"
            else ""
        )
        parts.append(
            f'<p id="dedup">Duplicate questions (<code>--dedup {_h(c.get("dedup"))}</code>, at most '
            f"{_h(number(c.get('max_per_question'), missing='?'))} "
            f"per question{near}): <b>{_h(number(c.get('questions_seen'), missing='?'))}</b> questions seen, "
            f"<b>{_h(number(c.get('questions_distinct'), missing='?'))}</b> distinct, "
            f"<b>{_h(number(c.get('dropped_duplicate'), missing='?'))}</b> dropped as duplicates (their caption tasks "
            f"stay; "
            f"cards: reason {DUPLICATE_QUESTION}).</p>"
        )
    if "min_yes_prob" in c:
        parts.append(
            f'<p id="confidence">Verdict confidence (<code>--min_yes_prob '
            f"{_h(number(c.get('min_yes_prob'), 'g', '?'))}</code>): "
            f"<b>{_h(number(c.get('yes_prob_checked'), missing='?'))}</b> tasks checked, "
            f"<b>{_h(number(c.get('dropped_low_yes_prob'), missing='?'))}</b> dropped below it ({LOW_YES_PROB}), "
            f"<b>{_h(number(c.get('no_yes_prob'), missing='?'))}</b> without usable log-probabilities "
            f"({NO_YES_PROB}).</p>"
        )
    if not parts:
        parts.append(
            '<p id="no-curation">No curation filter ran: every task the checker said Yes to is kept, as in the paper '
            "(<code>adamllm format --dedup exact|near</code>, <code>--min_yes_prob P</code>).</p>"
        )
    plot = _svg_yes_prob(summary, c.get("min_yes_prob"))
    return (
        "".join(parts)
        + (f'<div class="plots">{plot}</div>' if plot else "")
        + "<h3>Questions most often asked, per verdict</h3>"
        + _top_questions(summary)
    )


def _groups(summary: Summary, shown: Counter) -> str:
    """Records and cards per (verdict, reason) group; the page's script sums the rows a filter matches."""
    rows = []
    for (verdict, reason), n in summary.groups.most_common(MAX_GROUPS):
        rows.append(
            f'<tr data-group-verdict="{_h(_clip(verdict))}" data-group-reason="{_h(_clip(reason))}" data-records="{n}">'
            f"<td>{_h(_clip(verdict))}</td><td>{_h(_clip(reason)) or '(none)'}</td><td>{n}</td><td>{shown[verdict, reason]}</td></tr>"
        )
    more = summary.groups.most_common()[MAX_GROUPS:]
    if more:  # data-* absent: only the unfiltered view counts them
        rows.append(
            f"<tr><td>{len(more)} more groups</td><td>(they share one sample)</td><td>{sum(n for _, n in more)}</td>"
            f"<td>{shown[OTHER_GROUPS]}</td></tr>"
        )
    return f'<table id="groups"><tr><th>verdict</th><th>reason</th><th>records</th><th>cards</th></tr>{"".join(rows)}</table>'


def _sample_note(summary: Summary, cards: int, per_group: int) -> str:
    if cards == summary.records:
        return f'<p id="sample">A card for each of the <b>{summary.records}</b> records.</p>'
    return (
        f'<p id="sample">The cards are a sample: <b>{cards}</b> of the <b>{summary.records}</b> records, at most '
        f"{per_group} "
        f"per verdict and reason, the same on every run (<code>adamllm report --cards_per_group N --seed S</code> "
        "chooses how many and which); every count and plot above is over all records.</p>"
    )


def render(
    stats: dict[str, dict],
    summary: Summary,
    cards: list[Card],
    title: str,
    image_note: str,
    per_group: int,
    shown: Counter,
) -> str:
    """The page; `stats` maps each stage to its (dict) entry of stats.json, `summary` counts every
    record, `cards` are the sampled ones (`shown`: cards per group)."""
    verdicts = summary.verdicts
    reasons = summary.reasons
    filt = stats.get("filter", {})
    verdict_rows = "".join(
        f"<tr><td>{_h(_clip(v))}</td><td>{_h(n)}</td></tr>" for v, n in verdicts.most_common(MAX_GROUPS)
    )
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_h(csp)}">
<title>{_h(title)}</title><style>{STYLE}</style></head>
<body data-cards="{len(cards)}" data-records="{summary.records}">
<h1>{_h(title)}</h1>
<h2>Summary</h2>
{_stage_table(stats)}
<p>Pass rate of the consistency filter: <b>{_h(number(filt.get("pass_rate"), ".0%", missing="unknown"))}</b> of judged triplets
(the paper saw about 30%). Prompt tokens computed by the filter: {_h(number(filt.get("prompt_tokens_computed"), missing="unknown"))},
served from the prefix cache: {_h(prefix_cache_note(filt))}.</p>
<p>Images from: <b id="image-folder">{_h(image_note)}</b></p>
<table><tr><th>verdict</th><th>records</th></tr>{verdict_rows}</table>
<div class="plots">{_plots(summary)}</div>
<h2>Questions and curation</h2>
{_curation(stats.get("format", {}), summary)}
<h2>Records</h2>
{_sample_note(summary, len(cards), per_group)}
{_groups(summary, shown)}
<p>Verdict <select id="verdict"><option value="">all</option>{_options(verdicts)}</select>
reason <select id="reason"><option value="">all</option>{_options(reasons)}</select>
showing <b id="shown">{len(cards)}</b> cards of the <b id="matching">{summary.records}</b> records that match</p>
{"".join(_card(c) for c in cards)}
<script>{SCRIPT}</script>
</body></html>
"""
