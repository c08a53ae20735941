"""Reading model output: synthesizer text into question-answer pairs and a task triplet (stage 2a),
the checker's continuation into a verdict (stage 2b)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from adamllm.core.prompts import ASSISTANT, EOS, EOT, INFORMATIVE_HINT, PRECISE_HINT, USER, VERDICTS, header


@dataclass(frozen=True)
class TurnMarks:
    """How a family's conversation marks its turns: the text that closes every turn, the headers that
    open a user and an assistant turn, and the end-of-text the synthesizer writes after its last turn."""

    turn_end: str
    user_header: str
    assistant_header: str
    end_of_text: str


# The Llama-3 LLaVA conversation of adamllm.core.prompts (the released synthesizer's).
LLAMA3_MARKS = TurnMarks(EOT, header(USER), header(ASSISTANT), EOS)


@dataclass(frozen=True)
class Triplet:
    """One synthetic task: a question with its precise and informative answers."""

    Q: str
    precise_A: str
    informative_A: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_pairs(pred: str, marks: TurnMarks = LLAMA3_MARKS) -> list[tuple[str, str]]:
    """Split the synthesizer's continuation of the open user turn into (question, answer) pairs.

    The output reads `question END H(assistant) answer END H(user) question ...` (END closes a turn,
    H opens one). A last piece without a closing END was cut off by the token limit and is dropped,
    as is any piece that does not split into exactly one non-empty question and one non-empty answer.
    """
    end = marks.turn_end.rstrip()  # ChatML closes a turn with "<|im_end|>\n"; the output is right-stripped
    pred = pred.rstrip()
    if pred.endswith(marks.end_of_text):  # an engine that keeps the stop token's text
        pred = pred[: -len(marks.end_of_text)].rstrip()
    pieces = pred.split(marks.turn_end + marks.user_header)
    if not pred.endswith(end):
        pieces = pieces[:-1]
    pairs = []
    for piece in pieces:
        parts = piece.split(marks.turn_end + marks.assistant_header)
        if len(parts) != 2:
            continue
        question = parts[0].strip()
        answer = parts[1].strip()
        if answer.endswith(end):
            answer = answer[: -len(end)].strip()
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
