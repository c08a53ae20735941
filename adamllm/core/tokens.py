"""Counting a text's tokens with work bounded by the limit it must fit under, not by the text.

One record with a 60 MB caption once took 110 s and 12 GB just to be rejected as too long: the whole
caption was tokenized. No token covers more characters than the tokenizer's longest vocabulary entry
(byte-level entries spell one byte per character, and a character is at least a byte), so a text of
more than `longest * (limit + 1)` characters holds more than `limit` tokens; only that much of it is
tokenized, to confirm it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

_LONGEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its longest entry


@dataclass(frozen=True)
class TokenCount:
    """`n` tokens; when `whole` is False, `n` counts a prefix that is already over the limit."""

    n: int
    whole: bool = True


def longest_token_chars(tokenizer) -> int:
    """The most characters one token of `tokenizer` covers (its longest vocabulary entry)."""
    longest = _LONGEST.get(tokenizer)
    if longest is None:
        longest = _LONGEST[tokenizer] = max(1, max(map(len, tokenizer.get_vocab()), default=1))
    return longest


def text_char_cap(tokenizer, limit: int) -> int:
    """The characters beyond which a text certainly holds more than `limit` tokens."""
    return longest_token_chars(tokenizer) * (max(limit, 0) + 1)


def count_tokens(tokenizer, text: str, limit: int) -> TokenCount:
    """`len(tokenizer(text).input_ids)`, exact whenever the text can fit under `limit`; for a longer
    text, the count of its first `text_char_cap` characters (over `limit`, so the caller refuses it).
    A normalizer that deletes characters could keep that prefix under the limit: then the whole text
    is counted, as before."""
    cap = text_char_cap(tokenizer, limit)
    # verbose=False: transformers' "longer than the specified maximum" warning is this check's verdict,
    # said by the caller's reject.
    if len(text) > cap:
        n = len(tokenizer(text[:cap], verbose=False).input_ids)
        if n > limit:
            return TokenCount(n, whole=False)
    return TokenCount(len(tokenizer(text, verbose=False).input_ids))
