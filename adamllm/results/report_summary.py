"""What `adamllm report` shows, computed in one pass over a run of any size.

`Summary` counts every record (verdicts, reasons, triplet lengths, the questions asked, P(Yes)) in
memory that does not grow with the records: only with the distinct questions, held as 8-byte digests
and a clipped first wording. `Sample` keeps the cards: at most `per_group` records per (verdict,
reason) group, the same records on every run with the same seed (each record's rank is a seeded hash
of its position in the filtered file, so a group's sample does not depend on the other groups).
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from adamllm.stage2.curate import LOW_YES_PROB
from adamllm.stage2.dedup import normalise_question

TRIPLET_KEYS = ("Q", "precise_A", "informative_A")
YES_PROB_BINS = 20
QUESTION_CHARS = 300  # of a question's first wording kept for the tables of top questions
# Groups past this many share one sample: a hand-edited file with a new reason on every record
# would otherwise put every record on the page.
MAX_GROUPS = 40
CARDS_PER_GROUP = 20  # the default of --cards_per_group
OTHER_GROUPS = ("", "")  # the key of that shared sample


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
    yes_prob: float | None = None  # the checker's P(Yes), with --mode logprob


def is_kept(card: Card) -> bool:
    """Whether the card's synthetic task is in the training data."""
    return card.verdict == "yes" and not card.reason and card.conversation is not None


def prob_series(card: Card) -> str:
    """The series of the P(Yes) plot the card counts in."""
    if card.reason == LOW_YES_PROB:
        return "dropped"
    return "kept" if card.verdict == "yes" else "other"


def _question_key(normalised: str) -> bytes:
    return hashlib.blake2b(normalised.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@dataclass
class Summary:
    """Counts over every record of a run."""

    records: int = 0
    groups: Counter = field(default_factory=Counter)  # (verdict, reason) -> records
    lengths: dict[str, Counter] = field(
        default_factory=lambda: {key: Counter() for key in TRIPLET_KEYS}
    )  # words -> triplets
    asked: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # verdict -> question -> times
    kept: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # verdict -> question -> kept
    wording: dict[bytes, str] = field(default_factory=dict)  # question -> its first wording, clipped
    yes_prob: list[Counter] = field(
        default_factory=lambda: [Counter() for _ in range(YES_PROB_BINS)]
    )  # bin -> series -> n

    def add(self, card: Card) -> None:
        self.records += 1
        self.groups[card.verdict, card.reason] += 1
        if card.triplet is not None:
            for key in TRIPLET_KEYS:
                if card.triplet[key] is not None:
                    self.lengths[key][len(card.triplet[key].split())] += 1
            q = card.triplet.get("Q")
            if isinstance(q, str) and q.strip():
                key = _question_key(normalise_question(q))
                self.wording.setdefault(key, q[:QUESTION_CHARS] + ("…" if len(q) > QUESTION_CHARS else ""))
                self.asked[card.verdict][key] += 1
                self.kept[card.verdict][key] += is_kept(card)
        if card.yes_prob is not None:
            p = min(max(card.yes_prob, 0.0), 1.0)
            self.yes_prob[min(int(p * YES_PROB_BINS), YES_PROB_BINS - 1)][prob_series(card)] += 1

    @property
    def verdicts(self) -> Counter:
        counts = Counter()
        for (verdict, _), n in self.groups.items():
            counts[verdict] += n
        return counts

    @property
    def reasons(self) -> Counter:
        counts = Counter()
        for (_, reason), n in self.groups.items():
            if reason:
                counts[reason] += n
        return counts


def _rank(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "big")


@dataclass
class Sample:
    """The records that get a card: per group, the `per_group` of lowest seeded rank."""

    per_group: int
    seed: int = 0
    # group -> heap of (-rank, index, card): the root is the kept record of highest rank
    heaps: dict[tuple[str, str], list] = field(default_factory=dict)

    def group(self, card: Card) -> tuple[str, str]:
        key = (card.verdict, card.reason)
        return key if key in self.heaps or len(self.heaps) < MAX_GROUPS else OTHER_GROUPS

    def offer(self, index: int, card: Card) -> bool:
        """Whether the record is (for now) in the sample; later records of its group may replace it."""
        if self.per_group <= 0:
            return False
        heap = self.heaps.setdefault(self.group(card), [])
        rank = _rank(self.seed, index)
        if len(heap) < self.per_group:
            heapq.heappush(heap, (-rank, index, card))
            return True
        if rank < -heap[0][0]:
            heapq.heapreplace(heap, (-rank, index, card))
            return True
        return False

    def cards(self) -> list[Card]:
        """The sampled cards in the order of the filtered file."""
        return [
            card for _, _, card in sorted((entry for heap in self.heaps.values() for entry in heap), key=lambda e: e[1])
        ]

    def shown(self) -> Counter:
        """Cards per group (OTHER_GROUPS for the groups past MAX_GROUPS)."""
        return Counter({key: len(heap) for key, heap in self.heaps.items()})
