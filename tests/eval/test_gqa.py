import pytest

from picovlm.eval.gqa import gqa_exact_match, score_gqa


@pytest.mark.parametrize(
    "pred, gold, ok",
    [("Yes.", "yes", True), (" left ", "left", True), ("the left", "left", False), ("blue", "red", False)],
)
def test_exact_match(pred, gold, ok):
    assert gqa_exact_match(pred, gold) is ok


def test_score_gqa_per_type():
    qs = {
        "1": {"answer": "yes", "types": {"structural": "verify", "semantic": "obj"}},
        "2": {"answer": "red", "types": {"structural": "query", "semantic": "attr"}},
        "3": {"answer": "left", "types": {"structural": "query", "semantic": "rel"}},
    }
    m = score_gqa(qs, {"1": "Yes", "2": "blue", "3": "left."})
    assert m["accuracy"] == 66.67 and m["n"] == 3
    assert m["structural"] == {"query": 50.0, "verify": 100.0}
    assert m["semantic"] == {"attr": 0.0, "obj": 100.0, "rel": 100.0}
    with pytest.raises(ValueError, match="questionId 3"):
        score_gqa(qs, {"1": "yes", "2": "red"})
