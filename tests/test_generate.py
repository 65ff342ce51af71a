"""Cleaning and validating model output."""

import pytest

from hitokoto.generate import clean_line, sentences_from, usable


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("1. 风会停。", "风会停。"),
        ("2、风会停。", "风会停。"),
        ("(3) 风会停。", "风会停。"),
        ("- 风会停。", "风会停。"),
        ("• 风会停。", "风会停。"),
        ("“风会停。”", "风会停。"),
        ('"Wind stops."', "Wind stops."),
        ("「风会停」", "风会停"),
        ("  风   会停。 ", "风 会停。"),
        ("10) 风会停。", "风会停。"),
        ("一、风会停。", "风会停。"),
    ],
)
def test_clean_line_strips_numbering_bullets_quotes(raw, clean):
    assert clean_line(raw) == clean


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "I'm sorry, but I can't do that.",
        "As an AI language model, I cannot.",
        "抱歉，我不能回答。",
        "作为一个人工智能，我没有观点。",
        "好的，下面是一句话：",
        "长" * 121,
    ],
)
def test_unusable_output_is_rejected(text):
    assert not usable(text, max_length=120)


def test_batch_answer_split_into_clean_lines_with_rejects_counted():
    raw = "1. 第一句话很长。\n\n2. “第二句话。”\n3. 抱歉，我无法继续。\n- 第三句话。"
    assert sentences_from(raw, max_length=120) == (["第一句话很长。", "第二句话。", "第三句话。"], 1)
