"""Reading model output: synthesizer text into question-answer pairs and a task triplet (stage 2a),
the checker's continuation into a verdict (stage 2b)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from adamllm.core.prompts import ASSISTANT, EOS, EOT, INFORMATIVE_HINT, PRECISE_HINT, USER, VERDICTS, header


@dataclass(frozen=True)
class Triplet:
    """One synthetic task: a question with its precise and informative answers."""

    Q: str
    precise_A: str
    informative_A: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_pairs(pred: str) -> list[tuple[str, str]]:
    """Split the synthesizer's continuation of the open user turn into (question, answer) pairs.

    The output reads `question EOT H(assistant) answer EOT H(user) question ...`. A last piece without
    a closing EOT was cut off by the token limit and is dropped, as is any piece that does not split
    into exactly one non-empty question and one non-empty answer.
    """
    pred = pred.rstrip()
    if pred.endswith(EOS):  # an engine that keeps the stop token's text
        pred = pred[: -len(EOS)].rstrip()
    pieces = pred.split(header(USER))
    if not pred.endswith(EOT):
        pieces = pieces[:-1]
    pairs = []
    for piece in pieces:
        parts = piece.split(EOT + header(ASSISTANT))
        if len(parts) != 2:
            continue
        question = parts[0].strip()
        answer = parts[1].strip()
        if answer.endswith(EOT):
            answer = answer[: -len(EOT)].strip()
        if question and answer:
            pairs.append((question, answer))
    return pairs


def collect_triplet(pairs: list[tuple[str, str]]) -> Triplet | None:
    """The first question asked with both hints, with its two answers; None when there is none.

    "First" is the first question whose second variant appears: walking the pairs in order, the
    triplet is complete as soon as a question has been seen with both hints. A question asked twice
    with the same hint before that keeps its later answer, as the public release does.
    """
    precise: dict[str, str] = {}
    informative: dict[str, str] = {}
    precise_prefix, informative_prefix = PRECISE_HINT + "\n", INFORMATIVE_HINT + "\n"
    for question, answer in pairs:
        if question.startswith(precise_prefix):
            text = question[len(precise_prefix) :]
            precise[text] = answer
        elif question.startswith(informative_prefix):
            text = question[len(informative_prefix) :]
            informative[text] = answer
        else:
            continue
        if text in precise and text in informative:
            return Triplet(Q=text, precise_A=precise[text], informative_A=informative[text])
    return None


def parse_verdict(text: str) -> str:
    """The checker's verdict, as the paper reads it: the first word of its continuation, lower-cased.

    Returns "yes", "no" or "open"; "invalid" for anything else. As in the paper, the word must be
    bare: "Yes." is invalid (with greedy decoding of " Yes" the second token is rarely punctuation).
    """
    words = text.strip().split()
    if not words:
        return "invalid"
    word = words[0].lower()
    return word if word in VERDICTS else "invalid"
