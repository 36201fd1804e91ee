"""The `vqa` task (the demo's score) through the harness: exact match per question type on a
LLaVA-style test file, with per-question predictions, its result file and `score_files`."""

import json
import shutil
from pathlib import Path

import pytest

from picovlm.data.formats import load_samples
from picovlm.data.records import DataError, Sample
from picovlm.eval.clients import PipelineClient
from picovlm.eval.harness import evaluate, load_queries, run_eval, score_files
from picovlm.eval.tasks import VQA
from picovlm.eval.vqa import normalize_answer, questions_from
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
    text_only = Sample([], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(DataError, match="needs an image"):
        questions_from([text_only])


def test_vqa_task_on_tiny_model(tiny_run, tmp_path):
    test_file = tiny_run["data"] / "test.json"
    n = len(questions_from(load_samples(test_file)))
    res = run_eval("vqa", test_file, tmp_path / "vqa.json", model=tiny_run["model"], batch_size=16, progress=False)
    m = res["metrics"]
    assert 0.0 <= m["accuracy"] <= 1.0 and m["n"] == n
    assert sum(r["n"] for r in m["by_type"].values()) == n
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in m["by_type"].values())
    rows = [json.loads(line) for line in Path(res["files"]["predictions"]).read_text().splitlines()]
    assert len(rows) == n
    assert list(rows[0]) == ["id", "type", "question", "answer", "prediction", "correct"]
    assert sum(r["correct"] for r in rows) == round(m["accuracy"] * n)
    # the result file scores the same with no model
    assert {k: v for k, v in score_files("vqa", test_file, res["files"]["official"]).items() if k != "notes"} == m


class ScriptedPipeline:
    """Stands in for a Pipeline behind `PipelineClient`: answers with `answer_for(question)` and
    checks each prompt, image and sampling setting arrives as the demo has always asked them."""

    def __init__(self, questions, answer_for):
        self.expected, self.answer_for, self.calls = list(questions), answer_for, 0

    def generate(self, batch, images, params, media=None):
        self.calls += 1
        assert len(batch) == len(images) and params.max_tokens == 16 and params.temperature == 0
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
    evaluation = evaluate(VQA(), load_queries(VQA(), test_file), PipelineClient(pipe), batch_size=5, progress=False)
    m = evaluation.metrics
    assert pipe.expected == [] and pipe.calls == -(-len(qs) // 5)
    assert m["accuracy"] == accuracy and m["n"] == len(qs)
    assert all(r["accuracy"] == accuracy for r in m["by_type"].values())
    assert [r["correct"] for r in evaluation.predictions] == [accuracy == 1.0] * len(qs)


def test_limit_images_and_result_file(tiny_data, tmp_path):
    qs = questions_from(load_samples(tiny_data / "test.json"))
    moved = tmp_path / "elsewhere" / "test.json"  # the file without its images beside it
    moved.parent.mkdir()
    shutil.copy(tiny_data / "test.json", moved)
    with pytest.raises(DataError, match="image not found"):
        load_queries(VQA(), moved)
    queries = load_queries(VQA(), moved, images=tiny_data, limit=7)
    evaluation = evaluate(VQA(), queries, PipelineClient(ScriptedPipeline(qs, lambda q: q.answer)), progress=False)
    assert evaluation.metrics["n"] == 7 and evaluation.metrics["accuracy"] == 1.0
    results = tmp_path / "results.json"
    results.write_text(json.dumps(evaluation.official[:5] + [{"question_id": qs[5].id, "answer": "zebra"}]))
    scored = score_files("vqa", tiny_data / "test.json", results)
    assert scored["n"] == 6 and scored["accuracy"] == 5 / 6 and scored["notes"][0].startswith("scored 6 of the")
    results.write_text(json.dumps([{"question_id": "nope#0", "answer": "red"}]))
    with pytest.raises(ValueError, match="question_id 'nope#0' is not in"):
        score_files("vqa", tiny_data / "test.json", results)


def test_the_prompt_is_the_question_unless_a_suffix_is_given(tiny_data):
    question = questions_from(load_samples(tiny_data / "test.json"))[0].question
    assert load_queries(VQA(), tiny_data / "test.json")[0].prompt == question
    assert load_queries(VQA(prompt_suffix="\nOne word."), tiny_data / "test.json")[0].prompt == question + "\nOne word."
