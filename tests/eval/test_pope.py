import pytest

from picovlm.eval.pope import parse_yes_no, pope_metrics


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no, there is not.", "no"),
        ("Yes. There is no dog.", "yes"),  # only the first sentence counts
        ("There is not a cat", "no"),
        ("NO", "yes"),  # POPE's rule is case-sensitive: kept for comparable numbers
        ("", "yes"),
    ],
)
def test_parse_yes_no(answer, parsed):
    assert parse_yes_no(answer) == parsed


def test_pope_metrics_worked_example():
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    answers = ["Yes", "yes", "No", "yes", "no", "No."]  # tp=2 fn=1 fp=1 tn=2
    m = pope_metrics(answers, labels)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    assert pope_metrics(["I see a dog"], ["no"])["unparsed"] == 1
    with pytest.raises(ValueError, match="'maybe'"):
        pope_metrics(["yes"], ["maybe"])
