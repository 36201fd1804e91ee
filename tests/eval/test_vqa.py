import json
from pathlib import Path

import pytest

from picovlm.data.formats import Sample, load_samples
from picovlm.engine.pipeline import Pipeline
from picovlm.eval.vqa import evaluate_vqa, normalize_answer, questions_from
from picovlm.text.tokens import IMAGE


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Red", "red"),
        ("red.", "red"),
        ("  Top   LEFT! ", "top left"),
        ("The blue circle", "blue circle"),
        ("an orange square", "orange square"),
        ("theory", "theory"),  # only whole words are articles
        ("Two", "2"),
        ("ten.", "10"),
        ("3", "3"),
        ("Yes, it is.", "yes it is"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_questions_from_splits_turns_with_types():
    sample = Sample(
        images=[Path("a.png")],
        messages=[
            {"role": "user", "content": f"{IMAGE}\nWhat colour is the circle?"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "How many objects are there?"},
            {"role": "assistant", "content": "2"},
        ],
        meta={"id": "s0", "question_types": ["color", "count"]},
    )
    untyped = Sample([Path("b.png")], sample.messages[:2], {"id": "s1"})
    qs = questions_from([sample, untyped])
    assert [(q.question, q.answer, q.qtype, q.id) for q in qs] == [
        ("What colour is the circle?", "red", "color", "s0#0"),
        ("How many objects are there?", "2", "count", "s0#1"),
        ("What colour is the circle?", "red", "all", "s1#0"),
    ]
    assert [q.image for q in qs] == [Path("a.png"), Path("a.png"), Path("b.png")]


def test_evaluate_vqa_on_tiny_model(tiny_run, tmp_path):
    test_file = tiny_run["data"] / "test.json"
    n = len(questions_from(load_samples(test_file)))
    predictions = tmp_path / "predictions.jsonl"
    pipe = Pipeline.load(tiny_run["model"])
    results = evaluate_vqa(pipe, test_file, batch_size=16, predictions=predictions, progress=False)
    assert 0.0 <= results["accuracy"] <= 1.0
    assert results["n"] == n
    assert sum(r["n"] for r in results["by_type"].values()) == n
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["by_type"].values())
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == n
    assert set(rows[0]) == {"id", "type", "question", "answer", "prediction", "correct"}


class ScriptedPipeline:
    """Stands in for a Pipeline: answers with `answer_for(question)` and checks each prompt and image
    arrives in the order of the test file."""

    def __init__(self, questions, answer_for):
        self.expected, self.answer_for, self.calls = list(questions), answer_for, 0

    def generate(self, batch, images, params):
        self.calls += 1
        assert len(batch) == len(images)
        answers = []
        for messages, ims in zip(batch, images, strict=True):
            q = self.expected.pop(0)
            assert messages == [{"role": "user", "content": f"{IMAGE}\n{q.question}"}]
            assert len(ims) == 1 and ims[0].size == (32, 32)
            answers.append(self.answer_for(q))
        return answers


@pytest.mark.parametrize(
    "answer_for, accuracy",
    [
        (lambda q: q.answer, 1.0),
        (lambda q: f"The {q.answer.upper()}.", 1.0),  # normalization forgives case, articles, punctuation
        (lambda q: "not " + q.answer, 0.0),
        (lambda q: "", 0.0),
    ],
)
def test_scoring_with_a_fake_pipeline(tiny_data, answer_for, accuracy):
    test_file = tiny_data / "test.json"
    qs = questions_from(load_samples(test_file))
    pipe = ScriptedPipeline(qs, answer_for)
    results = evaluate_vqa(pipe, test_file, batch_size=5, progress=False)
    assert pipe.expected == [] and pipe.calls == -(-len(qs) // 5)
    assert results["accuracy"] == accuracy and results["n"] == len(qs)
    assert all(r["accuracy"] == accuracy for r in results["by_type"].values())


def test_evaluate_vqa_limit(tiny_data):
    test_file = tiny_data / "test.json"
    qs = questions_from(load_samples(test_file))
    results = evaluate_vqa(ScriptedPipeline(qs, lambda q: q.answer), test_file, limit=7, progress=False)
    assert results["n"] == 7 and results["accuracy"] == 1.0
