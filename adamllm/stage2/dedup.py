"""Duplicate synthetic questions (`adamllm format --dedup exact|near`): which records keep their task.

The same question asked of many images keeps at most `max_per_question` of them. `exact` compares
normalised questions (case, whitespace and punctuation ignored); `near` finds near-duplicates with
MinHash LSH (datasketch, `NUM_PERM` permutations, bands chosen by `lsh_params` so that a pair at the
threshold is a candidate with probability >= 90%) over word shingles, confirmed by the exact Jaccard
similarity of the shingle sets.

Which duplicates are kept is a seeded choice that depends only on `(seed, syn_id)`: candidates are
taken in the order of a hash of both (their rank), and each group keeps its first
`max_per_question`. In `near` mode the lowest-rank question of a group is its representative, and
a later question joins the most similar representative ranked before it. Reruns, shardings and
reorderings of the input therefore give the same output.

Memory: ranking needs the candidates in rank order, which an external sort provides (chunks of
`SORT_CHUNK` questions sorted in memory, spilled to temporary files, merged as a stream); the
decision state holds one entry per kept question (and, for `near`, the shingles and the LSH index
of the groups' representatives; the dropped records' groups go to a temporary SQLite file), never
one per input record.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Iterator

NUM_PERM = 128  # MinHash permutations: the estimate's standard error is about 1 / sqrt(128) = 0.09
DEFAULT_NEAR_THRESHOLD = 0.8
MINHASH_SEED = 1  # fixed, so that which questions count as near-duplicates never depends on --seed
# The least probability that LSH offers two questions exactly at the threshold as candidates (above
# it, more: at 0.8, 0.947 at the threshold and 0.999 at 0.875). Higher costs time on large inputs
# (more false candidates, each confirmed by its exact Jaccard similarity).
LSH_RECALL = 0.9
SORT_CHUNK = 200_000  # candidates sorted in memory before spilling a sorted run to disk

_SPACES = re.compile(r"\s+")


def normalise_question(text: str) -> str:
    """A question as `exact` deduplication compares it: case-folded, punctuation removed, whitespace
    collapsed ("What is shown in the image?" == "what is shown in  the image")."""
    chars = (" " if unicodedata.category(c).startswith("P") else c for c in text.casefold())
    return _SPACES.sub(" ", "".join(chars)).strip()


def shingles(normalised: str, ngram: int = 1) -> frozenset[str]:
    """The word shingles of a normalised question: its contiguous `ngram`-word sequences (with 1, its
    set of words). A question shorter than `ngram` words is one shingle."""
    words = normalised.split()
    if len(words) <= ngram:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 1.0


def dedup_rank(seed: int, syn_id: int) -> int:
    """A record's place in the seeded order duplicates are kept in (lower is kept first)."""
    digest = hashlib.blake2b(f"adamllm-dedup:{seed}:{syn_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# --- ranking: an external sort by (rank, syn_id) ------------------------------------------------------
class RankOrder:
    """Candidates `(rank, syn_id, question)` given in any order, returned in rank order; memory holds
    at most `chunk` of them (sorted runs beyond that wait in temporary files)."""

    def __init__(self, chunk: int | None = None):
        self.chunk = chunk or SORT_CHUNK
        self.buffer: list[tuple[int, int, str]] = []
        self.runs: list[Path] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def add(self, rank: int, syn_id: int, question: str) -> None:
        self.buffer.append((rank, syn_id, question))
        if len(self.buffer) >= self.chunk:
            self._spill()

    def _spill(self) -> None:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="adamllm-dedup-")
        path = Path(self._tmp.name) / f"run{len(self.runs):05d}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for item in sorted(self.buffer):
                fh.write(json.dumps(item, ensure_ascii=True) + "\n")
        self.runs.append(path)
        self.buffer = []

    def __iter__(self) -> Iterator[tuple[int, int, str]]:
        if not self.runs:
            yield from sorted(self.buffer)
            return
        if self.buffer:
            self._spill()
        files = [open(p, encoding="utf-8") for p in self.runs]
        try:
            yield from heapq.merge(*(map(lambda line: tuple(json.loads(line)), fh) for fh in files))
        finally:
            for fh in files:
                fh.close()

    def close(self) -> None:
        self.buffer = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# --- deduplication --------------------------------------------------------------------------------
class Deduper:
    """Two passes over the same candidates: `add` each (pass 1), `finish`, then `decide` each (pass 2),
    then `close`.

    `decide` returns None when the record keeps its synthetic task, else the syn_id of the kept
    question it duplicates (the representative of its group). In `near` mode the dropped records'
    groups wait in a temporary SQLite file between the passes (memory holds only the kept ones).
    """

    def __init__(
        self,
        mode: str,
        max_per_question: int = 1,
        seed: int = 0,
        threshold: float = DEFAULT_NEAR_THRESHOLD,
        ngram: int = 1,
        chunk: int | None = None,
    ):
        if mode not in ("exact", "near"):
            raise ValueError(f"dedup mode {mode!r}: choose exact or near")
        self.mode, self.max_per_question, self.seed = mode, max_per_question, seed
        self.threshold, self.ngram = threshold, ngram
        self.order = RankOrder(chunk)
        self.seen = 0  # candidates added
        self.kept: set[int] = set()  # syn_ids that keep their task
        # exact: digest of the normalised question -> its representative's syn_id
        self.groups: dict[bytes, int] = {}
        # near: representative syn_id -> (rank, its shingles), and the LSH index of them
        self.reps: dict[int, tuple[int, frozenset]] = {}
        self.groups_near = 0
        self.lsh = None
        self._permutations = None
        self._scheme = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._db = None  # near: syn_id -> group of each dropped record
        if mode == "near":
            from datasketch import MinHash, MinHashLSH

            self.lsh = MinHashLSH(num_perm=NUM_PERM, params=lsh_params(threshold))
            template = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)
            self._permutations, self._scheme = template.permutations, getattr(template, "scheme", None)

    @property
    def distinct(self) -> int:
        """Distinct questions (exact) or near-duplicate groups (near)."""
        return len(self.groups) if self.mode == "exact" else self.groups_near

    def add(self, syn_id: int, question: str) -> None:
        self.seen += 1
        self.order.add(dedup_rank(self.seed, syn_id), syn_id, normalise_question(question))

    def finish(self) -> None:
        """Take the candidates in rank order: each joins its group (exact: its normalised question;
        near: the most similar representative before it, else it starts a group), and keeps its task
        while the group has kept fewer than `max_per_question`."""
        dropped: list[tuple[int, int]] = []
        if self.mode == "near":
            self._open_db()
        try:
            counts: dict[Any, int] = {}
            for rank, syn_id, norm in self.order:
                if self.mode == "exact":
                    group = self.groups.setdefault(_digest(norm), syn_id)
                else:
                    mine = shingles(norm, self.ngram)
                    minhash = self._minhash(mine)
                    group = self._nearest(rank, syn_id, mine, minhash)
                    if group is None:
                        group = syn_id
                        self.reps[syn_id] = (rank, mine)
                        self.lsh.insert(syn_id, minhash)
                if counts.get(group, 0) < self.max_per_question:
                    counts[group] = counts.get(group, 0) + 1
                    self.kept.add(syn_id)
                elif self._db is not None:
                    dropped.append((syn_id, group))
                    if len(dropped) >= 10_000:
                        self._db.executemany("INSERT INTO dropped VALUES (?, ?)", dropped)
                        dropped = []
            if self._db is not None:
                self._db.executemany("INSERT INTO dropped VALUES (?, ?)", dropped)
                self._db.commit()
                self.groups_near = len(self.reps)
                self.reps, self.lsh = {}, None  # pass 2 reads the groups from the file
        finally:
            self.order.close()

    def decide(self, syn_id: int, question: str) -> int | None:
        if syn_id in self.kept:
            return None
        if self.mode == "exact":
            return self.groups.get(_digest(normalise_question(question)))
        found = self._db.execute("SELECT grp FROM dropped WHERE syn_id = ?", (syn_id,)).fetchone()
        # None: a candidate pass 1 did not see (its image changed between the passes): it is kept
        return found[0] if found else None

    def close(self) -> None:
        self.order.close()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _open_db(self) -> None:
        import sqlite3

        self._tmp = tempfile.TemporaryDirectory(prefix="adamllm-dedup-")
        self._db = sqlite3.connect(Path(self._tmp.name) / "dropped.sqlite")
        self._db.execute("CREATE TABLE dropped (syn_id INTEGER PRIMARY KEY, grp INTEGER NOT NULL)")

    def _minhash(self, mine: frozenset):
        from datasketch import MinHash

        kwargs = {"scheme": self._scheme} if self._scheme else {}
        m = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, permutations=self._permutations, **kwargs)
        m.update_batch([s.encode("utf-8") for s in mine])
        return m

    def _nearest(self, rank: int, syn_id: int, mine: frozenset, minhash) -> int | None:
        """The representative ranked before (rank, syn_id) whose shingles are most similar to `mine`,
        at or above the threshold (ties: the lower rank); None when there is none."""
        best = None
        size = len(mine)
        for rep in self.lsh.query(minhash):
            rep_rank, rep_shingles = self.reps[rep]
            if rep_rank > rank or (rep_rank == rank and rep >= syn_id):
                continue
            other = len(rep_shingles)
            if min(size, other) < self.threshold * max(size, other):  # the Jaccard similarity cannot reach it
                continue
            similarity = jaccard(mine, rep_shingles)
            if similarity >= self.threshold:
                key = (-similarity, rep_rank, rep)
                if best is None or key < best:
                    best = key
        return None if best is None else best[2]


def lsh_params(threshold: float, num_perm: int = NUM_PERM, recall: float = LSH_RECALL) -> tuple[int, int]:
    """LSH bands and rows: the most rows per band (the fewest false candidates) such that two questions
    whose Jaccard similarity is exactly `threshold` still meet in some band with probability >= `recall`.

    datasketch's own choice balances misses against false candidates, and at the threshold misses
    about 60% of pairs; here the candidates are confirmed by their exact Jaccard similarity, so false
    candidates only cost time, and misses are what must be rare."""
    for rows in range(num_perm // 2, 0, -1):  # datasketch needs 2 bands or more
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def _digest(norm: str) -> bytes:
    return hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=16).digest()
