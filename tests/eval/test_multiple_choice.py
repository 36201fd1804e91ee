import pytest

from picovlm.eval.multiple_choice import MCItem, circular_variants, parse_option, score_multiple_choice

OPTS = {"A": "red", "B": "red circle", "C": "blue", "D": "3"}


@pytest.mark.parametrize(
    "answer, letter",
    [
        ("B", "B"),
        ("(C) blue", "C"),
        ("A. red", "A"),
        ("The answer is D.", "D"),
        ("It is the red circle", "B"),  # longest option text wins over "red"
        ("blue", "C"),
        ("A or B", None),  # two letters: ambiguous
        ("I am not sure", None),
        ("a red circle", "B"),  # a lowercase "a" is a word, not option A
    ],
)
def test_parse_option(answer, letter):
    assert parse_option(answer, OPTS) == letter


def test_circular_evaluation():
    item = MCItem("q1", "Colour?", {"A": "red", "B": "green", "C": "blue", "D": "pink"}, "C")
    variants = circular_variants(item)
    assert [v.answer for v in variants] == ["C", "B", "A", "D"]
    assert [v.options["A"] for v in variants] == ["red", "green", "blue", "pink"]
    # always "A": right once out of 4 plain, never under circular evaluation
    assert score_multiple_choice(variants, ["A"] * 4)["accuracy"] == 0.25
    assert score_multiple_choice(variants, ["A"] * 4, circular=True)["accuracy"] == 0.0
    assert score_multiple_choice(variants, ["blue"] * 4, circular=True) | {"per_category": None} == {
        "accuracy": 1.0,
        "n": 1,
        "unparsed": 0,
        "circular": True,
        "per_category": None,
    }
