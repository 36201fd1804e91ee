"""Worked examples derived by hand from the rules of the official VQAv2 evaluation script."""

import pytest

from picovlm.eval.vqav2 import (
    process_digit_article,
    process_punctuation,
    score_vqav2,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hot-dog", "hot dog"),  # a mark touching no space becomes a space
        ("hot - dog", "hot  dog"),  # a mark touching a space is deleted
        ("yes, it is", "yes it is"),
        ("1,000 (approx)", "1000 approx"),  # a digit-comma-digit anywhere: every mark is deleted
        ("2.5", "2.5"),  # a period before a digit stays
        ("end.", "end"),
        ("a.b", "ab"),
        ("don't", "don't"),  # the apostrophe is not in the list
        ("." * 33, "."),  # the script deletes at most 32 periods (re.UNICODE passed as count)
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Dog isnt three", "dog isn't 3"),
        ("none", "0"),
        ("an apple a day", "apple day"),
        ("couldnt've", "couldn't've"),
        ("somebody'd", "somebodyd"),  # the script's table maps this one backwards
        ("Im", "im"),  # its capitalised keys never match: the text is lowercased first
        ("twas", "'twas"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def answers(*pairs):
    """[(answer, count), ...] -> the 10 answer dicts of a VQAv2 annotation."""
    flat = [a for a, n in pairs for _ in range(n)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(flat)]


@pytest.mark.parametrize(
    "prediction, human, expected",
    [
        ("2", answers(("2", 10)), 1.0),
        ("two", answers(("2", 10)), 0.0),  # all humans agree: nothing is normalized
        ("two", answers(("2", 9), ("3", 1)), 1.0),  # they disagree: "two" -> "2"; every subset has >= 8
        ("Red.", answers(("red", 2), ("blue", 8)), 0.6),  # (2 * 1/3 + 8 * 2/3) / 10
        ("yes", answers(("yes", 3), ("no", 7)), 0.9),  # (3 * 2/3 + 7 * 1) / 10
        ("yes", answers(("yes", 1), ("no", 9)), 0.0 * 0.1 + 0.9 * (1 / 3)),  # held-out "yes" leaves none
        ("cat", answers(("dog", 10)), 0.0),
        (" 2\n", answers(("2", 10)), 1.0),  # stripped, newline to space
    ],
)
def test_vqa_accuracy_worked_examples(prediction, human, expected):
    assert vqa_accuracy(prediction, human) == pytest.approx(expected)


def test_score_vqav2_per_type_rounded_percent():
    anns = [
        {
            "question_id": 1,
            "question_type": "what color",
            "answer_type": "other",
            "answers": answers(("red", 2), ("blue", 8)),
        },
        {"question_id": 2, "question_type": "is there", "answer_type": "yes/no", "answers": answers(("yes", 10))},
        {
            "question_id": 3,
            "question_type": "is there",
            "answer_type": "yes/no",
            "answers": answers(("yes", 1), ("no", 9)),
        },
    ]
    m = score_vqav2(anns, {1: "red", 2: "yes", 3: "yes"})
    # per question: 0.6, 1.0, 0.3 -> overall 1.9 / 3
    assert m["overall"] == round(100 * 1.9 / 3, 2) == 63.33
    assert m["perQuestionType"] == {"is there": 65.0, "what color": 60.0}
    assert m["perAnswerType"] == {"other": 60.0, "yes/no": 65.0}
    assert m["per_question"] == {1: 60.0, 2: 100.0, 3: 30.0}
    with pytest.raises(ValueError, match="question_id 3"):
        score_vqav2(anns, {1: "red", 2: "yes"})
