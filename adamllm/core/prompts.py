"""Every prompt string, special token and template of the pipeline, in one place.

Training (stage 1), synthesis (stage 2a), the consistency filter (2b) and the post-training
formatter (2c) all render through this module, so the format cannot drift between them. The
strings marked EXACT are those the released synthesizer was trained on: change one character and
it writes worse output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- Llama-3 LLaVA conversation (EXACT) ----------------------------------------------------------
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"

# The tag that stands for the image in data files (seed data, stage-2 input, post-training output).
# At render time it becomes the processor's own image token, which differs between models.
IMAGE_TAG = "<image>"

# --- The three hints (EXACT) ----------------------------------------------------------------------
CAPTION_HINT = "Describe the image."
PRECISE_HINT = "Answer with a precise response."
INFORMATIVE_HINT = "Answer with an informative response."

USER = "user"
ASSISTANT = "assistant"


def header(role: str) -> str:
    """The header that opens a turn of `role`."""
    return f"{START_HEADER}{role}{END_HEADER}\n\n"


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str


def render_conversation(turns: list[Turn], open_role: str | None = None) -> str:
    """Render a Llama-3 LLaVA conversation: BOS, the system turn, each turn closed by EOT.

    Args:
        turns: the finished turns, in order.
        open_role: when given, a last turn of this role is opened and left for the model to write.
    """
    parts = [BOS, header("system"), SYSTEM, EOT]
    for turn in turns:
        parts += [header(turn.role), turn.text, EOT]
    if open_role is not None:
        parts.append(header(open_role))
    return "".join(parts)


def caption_turns(caption: str, image_token: str) -> list[Turn]:
    """The first round of every synthesizer conversation: the image, the caption request, the caption."""
    return [Turn(USER, f"{image_token}\n{CAPTION_HINT}"), Turn(ASSISTANT, caption)]


def synthesizer_prompt(caption: str, image_token: str) -> str:
    """The stage-2a prompt: the caption round, then an open user turn the synthesizer writes."""
    return render_conversation(caption_turns(caption, image_token), open_role=USER)


def training_text(turns: list[Turn], image_token: str) -> str:
    """A stage-1 training sequence: the conversation with the data's image tag replaced, then EOS.

    Its first round renders byte for byte as `synthesizer_prompt` does, so the inference prompt's
    tokens are a prefix of the training sequence's.
    """
    swapped = [Turn(t.role, t.text.replace(IMAGE_TAG, image_token)) for t in turns]
    return render_conversation(swapped) + EOS


def precise_question(question: str) -> str:
    return f"{PRECISE_HINT}\n{question}"


def informative_question(question: str) -> str:
    return f"{INFORMATIVE_HINT}\n{question}"


def substitute(template: str, values: dict[str, str]) -> str:
    """Fill `{name}` placeholders in one pass.

    One pass, so a value that itself holds `{name}` text is never filled again; unknown braces
    (code, LaTeX in answers and in user templates) are left as they are.
    """
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda m: values[m.group(0)[1:-1]], template)


# --- Text that must not be able to rewrite a conversation -----------------------------------------
# Llama-3 special tokens all look like <|name|>; the image tag is matched on its own because a stray
# "<image>" in a caption would add an image placeholder the processor has no image for.
_SPECIAL_TOKEN_TEXT = re.compile(r"<\|[A-Za-z0-9_]{1,64}\|>")


def strip_special_tokens(text: str, image_tokens: tuple[str, ...] = (IMAGE_TAG,)) -> tuple[str, int]:
    """Remove special-token text and image tags from free text (captions, questions, answers).

    We strip rather than reject: such text appears in scraped captions by accident, and the rest of
    the caption is still good data. The count lets callers report how many records were touched.

    Returns:
        The cleaned text and the number of pieces removed.
    """
    # To a fixed point: removing one piece can join its neighbours into a new one
    # ("<|eo<|x|>t_id|>" -> "<|eot_id|>"), which a single pass would let through. Each pass costs the
    # whole text, and a crafted caption nests a piece per level (a 100 KB one took 8 s, a MB hours):
    # past a few passes, one linear scan finishes the job.
    count = 0
    for _ in range(_REGEX_PASSES):
        text, removed = _SPECIAL_TOKEN_TEXT.subn("", text)
        for token in image_tokens:
            removed += text.count(token)
            text = text.replace(token, "")
        if not removed:
            return text, count
        count += removed
    text, removed = strip_in_one_scan(text, image_tokens)
    return text, count + removed


_REGEX_PASSES = 3
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def strip_in_one_scan(text: str, image_tokens: tuple[str, ...]) -> tuple[str, int]:
    """`strip_special_tokens`' fixed point in one pass: characters go onto a stack, and a piece that
    the stack's top completes is popped at once. What lies below the top never changes, so no piece
    can form there later: the result is the fixed point of the repeated passes."""
    kept: list[str] = []
    count = 0
    ends = {token[-1] for token in image_tokens} | {">"}
    for ch in text:
        kept.append(ch)
        if ch not in ends:
            continue
        n = len(kept)
        if ch == ">" and n >= 5 and kept[-2] == "|":
            i = n - 3
            while i >= 0 and n - 3 - i < 64 and kept[i] in _NAME_CHARS:
                i -= 1
            if i >= 1 and i < n - 3 and kept[i] == "|" and kept[i - 1] == "<":
                del kept[i - 1 :]
                count += 1
                continue
        for token in image_tokens:
            if n >= len(token) and kept[-1] == token[-1] and "".join(kept[n - len(token) :]) == token:
                del kept[n - len(token) :]
                count += 1
                break
    return "".join(kept), count


def remove_image_tag(text: str) -> str:
    """A data file's instruction without its image tag (the tag stands at its start or end)."""
    return text.replace(IMAGE_TAG, "").strip()


# --- Stage 2b: the consistency filter ---------------------------------------------------------------
# Placeholders of a filter prompt; user prompt files must hold all three.
FILTER_PLACEHOLDERS = ("{Q}", "{informative_A}", "{precise_A}")
VERDICTS = ("yes", "no", "open")

# The query part is EXACT (spec); the instruction and examples are ours.
FILTER_QUERY = (
    "## Question: {Q}\n## Informative Answer: {informative_A}\n## Precise Answer: {precise_A}\n## Consistent:"
)

FILTER_INSTRUCTION = """\
You check question-answer pairs written about images. Each question comes with two answers: an \
informative answer that explains its reasoning, and a precise answer that states only the result. \
Decide whether the precise answer can be inferred from the informative answer.
- Yes: the informative answer leads to the precise answer; they agree.
- No: the informative answer leads to a different answer, or contradicts the precise answer.
- Open: the question has no single right answer (it is open-ended, asks for a description or a \
caption, or needs background knowledge the image cannot settle), so consistency cannot be judged.
Reply with one word: Yes, No or Open."""

_FILTER_EXAMPLES = [
    (
        "How many apples are on the plate?",
        "Counting from left to right, there is one green apple and two red ones on the plate, so "
        "there are three apples in total.",
        "3",
        "Yes",
    ),
    (
        "Which organ is shown in the scan?",
        "The scan is an axial CT slice through the upper abdomen. The large homogeneous organ on "
        "the left side of the image, under the ribs, is the liver.",
        "Liver",
        "Yes",
    ),
    (
        "What color is the car parked by the fence?",
        "The car next to the wooden fence has a bright red body with black tyres, so its color is red.",
        "Blue",
        "No",
    ),
    (
        "Is the sauce served in a separate bowl?",
        "The sauce is poured directly over the noodles; no bowl other than the main dish is visible.",
        "Yes",
        "No",
    ),
    (
        "Write a short story inspired by this photo.",
        "On a misty morning the fishing boats left the harbour one by one, while gulls circled the "
        "masts and the town slowly woke up behind them.",
        "The boats sail out at dawn.",
        "Open",
    ),
    (
        "What might the patient's symptoms have been before this image was taken?",
        "Patients with a lesion like this one often report headaches, but symptoms vary widely and "
        "the image alone does not tell us which ones this patient had.",
        "Headache",
        "Open",
    ),
]


def _filter_example_block() -> str:
    blocks = []
    for q, informative, precise, verdict in _FILTER_EXAMPLES:
        blocks.append(fill_filter_query(FILTER_QUERY, q, informative, precise) + f" {verdict}")
    return "\n\n".join(blocks)


# The default prompt: instruction, worked examples, then the query for the record at hand.
DEFAULT_FILTER_PROMPT = f"{FILTER_INSTRUCTION}\n\n{{examples}}\n\n{FILTER_QUERY}"


def fill_filter_query(template: str, question: str, informative_a: str, precise_a: str) -> str:
    """Put a triplet into a filter template's three placeholders.

    Not `str.format`: answers hold braces (code, LaTeX) that format would choke on.
    """
    return substitute(template, {"Q": question, "informative_A": informative_a, "precise_A": precise_a})


def default_filter_template() -> str:
    """The default filter prompt with its three placeholders still open."""
    return DEFAULT_FILTER_PROMPT.replace("{examples}", _filter_example_block())


def check_filter_template(template: str) -> None:
    """Raise ValueError naming every placeholder a user's filter prompt lacks."""
    missing = [p for p in FILTER_PLACEHOLDERS if p not in template]
    if missing:
        raise ValueError(
            f"the filter prompt lacks the placeholder(s) {', '.join(missing)}; a filter prompt file must "
            f"hold all of {', '.join(FILTER_PLACEHOLDERS)} (see adamllm/core/prompts.py, FILTER_QUERY)"
        )


def filter_prompt(question: str, informative_a: str, precise_a: str, template: str | None = None) -> str:
    """The stage-2b prompt for one triplet (the default template unless one is given)."""
    return fill_filter_query(template or default_filter_template(), question, informative_a, precise_a)


# --- Stage 2c: the synthetic task for post-training --------------------------------------------------
# Words that mark an answer as already concluding (lower-case, trailing space; spec).
INDICATORS = ("could be ", "so ", "thus ", "therefore ", "final ", "answer ", "result ")


@dataclass(frozen=True)
class TaskTemplate:
    """How a synthetic task is worded: the user turn and the assistant turn.

    Placeholders: `{question}` in `user`; `{answer}` (and `{reasoning}` for chain-of-thought) in
    `assistant`.
    """

    user: str
    assistant: str


# For answers that already conclude by themselves.
QA_TEMPLATES = (
    TaskTemplate("{question}", "{answer}"),
    TaskTemplate("{question}\nAnswer the question using the image.", "{answer}"),
    TaskTemplate("Look at the image and answer: {question}", "{answer}"),
    TaskTemplate("Question: {question}", "{answer}"),
    TaskTemplate("Question: {question}\nAnswer:", "{answer}"),
    TaskTemplate("{question}\nExplain your answer.", "{answer}"),
    TaskTemplate("Based on what you see, {question}", "{answer}"),
    TaskTemplate("Use the visual evidence to respond.\n{question}", "{answer}"),
    TaskTemplate("{question}\nGive a well-supported answer.", "{answer}"),
    TaskTemplate("Here is a question about the picture. {question}", "{answer}"),
    TaskTemplate("Study the image carefully. {question}", "{answer}"),
    TaskTemplate("{question}\nRespond with reference to the image.", "{answer}"),
)

# For an explanation and a separate short answer: reasoning first, then the final answer.
COT_TEMPLATES = (
    TaskTemplate("{question}", "{reasoning}\nSo the answer is: {answer}"),
    TaskTemplate("{question}\nThink step by step, then give the final answer.", "{reasoning}\nFinal answer: {answer}"),
    TaskTemplate(
        "{question}\nReason about the image first, then answer.", "{reasoning}\nTherefore, the answer is {answer}"
    ),
    TaskTemplate(
        "Question: {question}\nShow your reasoning before answering.", "Reasoning: {reasoning}\nAnswer: {answer}"
    ),
    TaskTemplate("{question}\nExplain your reasoning and end with a short answer.", "{reasoning}\nIn short: {answer}"),
    TaskTemplate(
        "Look at the image. {question}\nWork it out before you answer.", "{reasoning}\nThus the answer is {answer}"
    ),
    TaskTemplate("{question}\nDescribe the relevant evidence, then conclude.", "{reasoning}\nConclusion: {answer}"),
    TaskTemplate("Answer the question with a rationale. {question}", "Rationale: {reasoning}\nAnswer: {answer}"),
    TaskTemplate(
        "{question}\nFirst analyse, then answer concisely.", "Analysis: {reasoning}\nConcise answer: {answer}"
    ),
    TaskTemplate(
        "Based on the image, {question}\nLet's think it through.", "{reasoning}\nThe final answer is {answer}"
    ),
    TaskTemplate("{question}\nGive the reasoning, then the result.", "{reasoning}\nResult: {answer}"),
    TaskTemplate("Question about the image: {question}\nExplain, then answer.", "{reasoning}\nHence: {answer}"),
)


def fill_task(template: TaskTemplate, question: str, answer: str, reasoning: str = "") -> tuple[str, str]:
    """Word a task with a template; returns (user text, assistant text)."""
    values = {"question": question, "answer": answer, "reasoning": reasoning}
    return substitute(template.user, values), substitute(template.assistant, values)
