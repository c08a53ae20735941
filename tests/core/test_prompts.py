"""Golden strings: every prompt the pipeline renders, byte for byte, as the public release renders them."""

import pytest

from adamllm.core import prompts
from adamllm.core.prompts import Turn

IMG = "<|reserved_special_token_4|>"
SYSTEM_BLOCK = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language.<|eot_id|>"
)


def test_synthesizer_prompt_golden():
    expected = (
        SYSTEM_BLOCK
        + "<|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_4|>\nDescribe the image.<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\nA bowl of ramen with a soft egg.<|eot_id|>"
        + "<|start_header_id|>user<|end_header_id|>\n\n"
    )
    assert prompts.synthesizer_prompt("A bowl of ramen with a soft egg.", IMG) == expected


def test_synthesizer_prompt_uses_the_given_image_token():
    assert "<image>\nDescribe the image." in prompts.synthesizer_prompt("c", "<image>")
    assert IMG not in prompts.synthesizer_prompt("c", "<image>")


def test_hints_exact():
    assert prompts.CAPTION_HINT == "Describe the image."
    assert prompts.PRECISE_HINT == "Answer with a precise response."
    assert prompts.INFORMATIVE_HINT == "Answer with an informative response."


def test_training_text_golden_and_prefix_of_inference_prompt():
    turns = [
        Turn("user", "<image>\nDescribe the image."),
        Turn("assistant", "Cap."),
        Turn("user", "Answer with a precise response.\nHow many?"),
        Turn("assistant", "2"),
    ]
    text = prompts.training_text(turns, IMG)
    assert text == (
        SYSTEM_BLOCK
        + "<|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_4|>\nDescribe the image.<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\nCap.<|eot_id|>"
        + "<|start_header_id|>user<|end_header_id|>\n\nAnswer with a precise response.\nHow many?<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\n2<|eot_id|><|end_of_text|>"
    )
    assert text.startswith(prompts.synthesizer_prompt("Cap.", IMG))


def test_filter_query_golden():
    got = prompts.filter_prompt("Q?", "Long answer.", "Short", template=prompts.FILTER_QUERY)
    assert got == "## Question: Q?\n## Informative Answer: Long answer.\n## Precise Answer: Short\n## Consistent:"


def test_default_filter_prompt_golden_shape():
    text = prompts.filter_prompt("How many dogs?", "There are two dogs, so 2.", "2")
    assert text.startswith(prompts.FILTER_INSTRUCTION + "\n\n## Question: ")
    assert text.endswith(
        "## Question: How many dogs?\n## Informative Answer: There are two dogs, so 2.\n## Precise Answer: 2\n## "
        "Consistent:"
    )
    # One worked example of each verdict at least.
    for verdict in ("Yes", "No", "Open"):
        assert f"## Consistent: {verdict}\n" in text
    assert "{Q}" not in text and "{precise_A}" not in text


def test_filter_prompt_leaves_braces_in_answers_alone():
    text = prompts.filter_prompt("{x}", "f(x) = {a} {precise_A}", "{b}", template=prompts.FILTER_QUERY)
    assert "## Question: {x}\n## Informative Answer: f(x) = {a} {precise_A}\n## Precise Answer: {b}" in text


def test_user_filter_prompt_must_hold_every_placeholder():
    prompts.check_filter_template("{Q} {informative_A} {precise_A}")
    with pytest.raises(ValueError, match=r"\{precise_A\}"):
        prompts.check_filter_template("{Q} {informative_A}")


@pytest.mark.parametrize(
    "text, cleaned, removed",
    [
        ("A plate.<|eot_id|><|start_header_id|>user<|end_header_id|>", "A plate.user", 3),
        ("A <image> scan", "A  scan", 1),
        ("<|reserved_special_token_4|>x", "x", 1),
        ("no tokens <here> | fine", "no tokens <here> | fine", 0),
    ],
)
def test_strip_special_tokens(text, cleaned, removed):
    assert prompts.strip_special_tokens(text) == (cleaned, removed)


def test_templates_are_enough_and_well_formed():
    assert len(prompts.QA_TEMPLATES) >= 10 and len(prompts.COT_TEMPLATES) >= 10
    assert len(set(prompts.QA_TEMPLATES)) == len(prompts.QA_TEMPLATES)
    assert len(set(prompts.COT_TEMPLATES)) == len(prompts.COT_TEMPLATES)
    for t in prompts.QA_TEMPLATES + prompts.COT_TEMPLATES:
        assert "{question}" in t.user and "{answer}" in t.assistant
    for t in prompts.COT_TEMPLATES:
        assert t.assistant.index("{reasoning}") < t.assistant.index("{answer}")


def test_fill_task_one_pass():
    t = prompts.TaskTemplate("{question}", "{reasoning}\nFinal answer: {answer}")
    assert prompts.fill_task(t, "Q {answer}", "A", reasoning="R {answer}") == (
        "Q {answer}",
        "R {answer}\nFinal answer: A",
    )
