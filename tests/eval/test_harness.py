"""The harness end to end on tiny data: eval sets written from scenes, a scripted client, the tiny
trained model (VLM and CLIP), an OpenAI-compatible stub server, and `eval` -> `score` composition."""

import base64
import dataclasses
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from picovlm.cli import main
from picovlm.eval.benchmarks import scene_config_of, write_eval_sets
from picovlm.eval.clients import EndpointClient
from picovlm.eval.harness import run_eval, score_files
from picovlm.eval.tasks import make_task

TASKS = ("vqav2", "gqa", "caption", "pope", "mmstar")


@pytest.fixture(scope="module")
def eval_sets(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_sets")
    write_eval_sets(out, scene_config_of(tiny_data), n_images=6, seed=1)
    return out


def test_pope_questions_use_the_right_article(eval_sets):
    texts = [json.loads(line)["text"] for f in eval_sets.glob("pope_*.jsonl") for line in f.read_text().splitlines()]
    assert texts and all(t.startswith("Is there a") for t in texts)
    for t in texts:
        noun = t.split()[3]  # "Is there a(n) <colour> <shape> in the image?"
        assert t.split()[2] == ("an" if noun[0] in "aeiou" else "a"), t


def gold_answers(task, eval_sets):
    """The right answer to every query of a task, in the order the harness asks them."""
    queries = make_task(task).load(eval_sets, None, None)
    pick = {
        "vqav2": lambda r: r["answers"][0],
        "gqa": lambda r: r["gold"],
        "pope": lambda r: r["label"].capitalize(),
        "mmstar": lambda r: r["options"][r["gold"]],
        "caption": lambda r: r["references"][0],
    }[task]
    return [pick(q.record) for q in queries]


class ScriptedClient:
    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def generate(self, images, prompts, max_tokens):
        assert all(len(ims) == 1 and isinstance(ims[0], Image.Image) for ims in images)
        self.calls.append(len(prompts))
        return [self.answer(p) for p in prompts]


def test_eval_sets_are_in_benchmark_formats(eval_sets):
    qs = json.loads((eval_sets / "vqav2_questions.json").read_text())["questions"]
    anns = json.loads((eval_sets / "vqav2_annotations.json").read_text())["annotations"]
    assert len(qs) == len(anns) > 0 and all(len(a["answers"]) == 10 for a in anns)
    assert {a["answer_type"] for a in anns} <= {"yes/no", "number", "other"}
    caps = json.loads((eval_sets / "captions.json").read_text())
    assert len(caps["images"]) == 6 and len(caps["annotations"]) == 30  # 5 references each
    assert len({c["caption"] for c in caps["annotations"] if c["image_id"] == 1}) == 5
    pope = [json.loads(x) for x in (eval_sets / "pope_random.jsonl").read_text().splitlines()]
    assert {p["label"] for p in pope} == {"yes", "no"} and set(pope[0]) == {"question_id", "image", "text", "label"}
    assert (eval_sets / "mmstar.tsv").read_text().splitlines()[0].split("\t")[:7] == [
        "index",
        "question",
        "A",
        "B",
        "C",
        "D",
        "answer",
    ]
    assert sum(1 for _ in (eval_sets / "zeroshot").rglob("*.png")) == 6


@pytest.mark.parametrize("task", TASKS)
def test_perfect_and_wrong_answers_score_as_expected(task, eval_sets, tmp_path):
    gold = gold_answers(task, eval_sets)

    def right(prompt):
        return gold.pop(0)

    client = ScriptedClient(right)
    res = run_eval(task, eval_sets, tmp_path / f"{task}.json", client=client, batch_size=4, progress=False)
    m = res["metrics"]
    assert client.calls and max(client.calls) <= 4
    if task == "vqav2":
        assert m["overall"] == 100.0 and all(v == 100.0 for v in m["perQuestionType"].values())
    elif task == "gqa":
        assert m["accuracy"] == 100.0
    elif task == "pope":
        assert m["random"]["accuracy"] == 1.0 and m["adversarial"]["f1"] == 1.0
    elif task == "mmstar":
        assert m["accuracy"] == 1.0 and m["unparsed"] == 0
    else:
        assert m["Bleu_1"] > 0.9 and m["CIDEr"] > 1 and m["n"] == 6
    # the official result file scores the same with no model
    files = res["files"]
    ann = {
        "vqav2": "vqav2_annotations.json",
        "gqa": "gqa_questions.json",
        "caption": "captions.json",
        "pope": "pope_random.jsonl",
        "mmstar": "mmstar.tsv",
    }[task]
    rows = json.loads(open(files["official"]).read())
    if task == "pope":  # one result file per setting, as POPE's own evaluation reads it
        rows = [r for r in rows if r["setting"] == "random"]
        (tmp_path / "random.json").write_text(json.dumps(rows))
        files["official"] = tmp_path / "random.json"
    scored = score_files(task, eval_sets / ann, files["official"])
    if task == "pope":
        assert scored["random"] == m["random"]
    elif task != "caption":
        assert {k: v for k, v in scored.items() if k != "notes"} == m
    preds = [json.loads(x) for x in open(files["predictions"]).read().splitlines()]
    assert len(preds) == len(rows) if task != "pope" else len(preds) == 2 * len(rows)
    assert "prediction" in preds[0] and open(files["markdown"]).read().startswith(f"| {task} | value |")

    wrong = run_eval(task, eval_sets, tmp_path / "w.json", client=ScriptedClient(lambda p: "zebra"), progress=False)
    w = wrong["metrics"]
    value = {
        "vqav2": w.get("overall"),
        "gqa": w.get("accuracy"),
        "mmstar": w.get("accuracy"),
        "pope": w.get("random", {}).get("recall"),
        "caption": w.get("Bleu_4"),
    }[task]
    assert value == pytest.approx(0.0, abs=1e-6) or (task == "pope" and w["random"]["yes_ratio"] == 1.0)


def test_limit_and_circular(eval_sets, tmp_path):
    client = ScriptedClient(lambda p: "A")
    res = run_eval("mmstar", eval_sets, tmp_path / "m.json", client=client, limit=3, circular=True, progress=False)
    assert res["metrics"]["n"] == 3 and sum(client.calls) == 12  # 3 questions x 4 rotations
    assert res["metrics"]["accuracy"] == 0.0  # "always A" never survives all rotations


def test_tasks_keep_no_state_between_load_and_score(eval_sets):
    """What scoring needs travels in the queries: a fresh task scores another one's queries the same."""
    for task in TASKS:
        queries = make_task(task).load(eval_sets, None, 4)
        answers = gold_answers(task, eval_sets)[: len(queries)]
        assert make_task(task).score(queries, answers) == make_task(task).score(queries, answers)
        with pytest.raises(dataclasses.FrozenInstanceError):
            make_task(task).anything = 1


def test_options_are_each_tasks_own(eval_sets, tmp_path):
    assert make_task("mmstar", circular=True).circular and make_task("gqa", prompt_suffix="").prompt_suffix == ""
    with pytest.raises(ValueError, match="task 'vqav2' has no option 'circular' \\(its options: prompt_suffix\\)"):
        make_task("vqav2", circular=True)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope")
    with pytest.raises(ValueError, match="has no option 'circular'"):
        run_eval("retrieval", eval_sets, tmp_path / "r.json", model=tmp_path, circular=True)


def test_tiny_model_and_clip_tasks(tiny_run, eval_sets, tmp_path):
    res = run_eval("vqav2", eval_sets, tmp_path / "v.json", model=tiny_run["model"], limit=5, progress=False)
    assert res["metrics"]["n"] == 5 and 0 <= res["metrics"]["overall"] <= 100
    clip = tiny_run["model"].parent.parent / "clip" / "model"
    r = run_eval("retrieval", eval_sets, tmp_path / "r.json", model=clip, progress=False)["metrics"]
    assert r["n_images"] == 6 and r["n_texts"] == 30 and 0 <= r["i2t_R@1"] <= r["i2t_R@5"] <= r["i2t_R@10"] <= 1.0
    z = run_eval("zeroshot", eval_sets, tmp_path / "z.json", model=clip, limit=4, progress=False)["metrics"]
    assert z["n"] == 4 and 0 <= z["top1"] <= z["top5"] <= 1
    with pytest.raises(ValueError, match="not a CLIP model"):
        run_eval("zeroshot", eval_sets, tmp_path / "z.json", model=tiny_run["model"], progress=False)
    with pytest.raises(ValueError, match="--images does not apply"):
        run_eval("zeroshot", eval_sets, tmp_path / "z.json", model=clip, images=eval_sets, progress=False)
    moved = tmp_path / "captions" / "captions.json"  # retrieval honours --images
    moved.parent.mkdir()
    moved.write_text((eval_sets / "captions.json").read_text())
    r2 = run_eval("retrieval", moved, tmp_path / "r2.json", model=clip, images=eval_sets, progress=False)["metrics"]
    assert r2 == r


class StubChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that answers "yes" and records what it got."""

    seen: list = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        StubChat.seen.append(body)
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Yes, there is."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StubChat.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_endpoint_client_against_stub(stub_server, eval_sets, tmp_path):
    res = run_eval("pope", eval_sets, tmp_path / "p.json", endpoint=stub_server, limit=4, progress=False)
    m = res["metrics"]["random"]
    assert m["yes_ratio"] == 1.0 and m["recall"] == 1.0 and m["n"] == 4
    assert len(StubChat.seen) == 8  # 4 per setting, one request each
    body = StubChat.seen[0]
    assert body["max_tokens"] == 8 and body["temperature"] == 0.0
    (image, text) = body["messages"][0]["content"]
    assert image["type"] == "image_url" and text["type"] == "text" and text["text"].startswith("Is there a")
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (32, 32)


def test_endpoint_errors_are_one_line(stub_server):
    with pytest.raises(OSError, match="HTTP 404"):
        EndpointClient(stub_server + "/nowhere").generate([[Image.new("RGB", (4, 4))]], ["hi"], 4)
    with pytest.raises(OSError, match="cannot connect"):
        EndpointClient("http://127.0.0.1:9").generate([[Image.new("RGB", (4, 4))]], ["hi"], 4)


def test_cli_eval_data_eval_and_score(tiny_run, tmp_path, capsys):
    sets = tmp_path / "sets"
    assert main(["eval-data", "--from", str(tiny_run["data"]), "--out", str(sets), "--n", "3"]) == 0
    out = tmp_path / "e" / "vqav2.json"
    args = ["eval", "--task", "vqav2", "--model", str(tiny_run["model"]), "--data", str(sets), "--limit", "4"]
    assert main([*args, "--batch-size", "2", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n"] == 4
    score = ["score", "--task", "vqav2", "--annotations", str(sets / "vqav2_annotations.json")]
    assert (
        main(
            [
                *score,
                "--questions",
                str(sets / "vqav2_questions.json"),
                "--results",
                str(out.with_suffix(".results.json")),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    scored = json.loads(lines[-1])
    assert scored["overall"] == printed["overall"] and lines[0].startswith("note: scored 4 of the")


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["score", "--task", "vqav2", "--annotations", "{sets}/nope.json", "--results", "{sets}/r.json"],
            "nope.json: file not found",
        ),
        (
            ["score", "--task", "caption", "--annotations", "{sets}/captions.json", "--results", "{sets}/bad.json"],
            "bad.json:1: invalid JSON",
        ),
        (
            [
                "score",
                "--task",
                "vqav2",
                "--annotations",
                "{sets}/vqav2_annotations.json",
                "--results",
                "{sets}/stray.json",
            ],
            "question_id 5 is not in",
        ),
        (["eval", "--task", "pope", "--model", "x", "--data", "{sets}/nothing"], "nothing: not found"),
        (["eval", "--task", "retrieval", "--endpoint", "http://x", "--data", "{sets}"], "needs a CLIP checkpoint"),
        (["eval", "--task", "vqav2", "--model", "x"], "needs --data"),
        (["eval", "--task", "vqav2", "--model", "x", "--data", "{sets}", "--circular"], "has no option 'circular'"),
        (["eval", "--model", "x", "--data", "{sets}/vqav2_questions.json"], "expected a JSON list of records"),
    ],
)
def test_cli_errors_are_one_line(eval_sets, tmp_path, capsys, argv, message):
    (eval_sets / "bad.json").write_text("[{")
    (eval_sets / "stray.json").write_text(json.dumps([{"question_id": 5, "answer": "x"}]))
    assert main([a.format(sets=eval_sets) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("picovlm: error:") and message in err and len(err.strip().splitlines()) == 1


def test_caption_task_reads_picovlms_own_caption_files(tiny_data, tmp_path):
    """The demo scores its captions on test_captions.jsonl: references grouped per image, a reference
    given back scores far above a wrong caption, and METEOR can be left out."""
    data = tiny_data / "test_captions.jsonl"
    queries = make_task("caption").load(data, None, None)
    images = {json.loads(line)["image"] for line in data.read_text().splitlines()}
    assert len(queries) == len(images) and all(len(q.reference) >= 1 for q in queries)
    wrong = run_eval("caption", data, tmp_path / "w.json", client=ScriptedClient(lambda p: "?"), meteor=False)
    assert "METEOR" not in wrong["metrics"]
    answers = iter([q.reference[0] for q in queries])
    good = run_eval("caption", data, tmp_path / "g.json", client=ScriptedClient(lambda p: next(answers)), meteor=False)
    assert good["metrics"]["CIDEr"] > 2 > wrong["metrics"]["CIDEr"], (good["metrics"], wrong["metrics"])
