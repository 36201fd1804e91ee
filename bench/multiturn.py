"""Multi-turn chat against questions asked alone: does the model hold up once its own answers are in the history?

    python bench/multiturn.py --model runs/demo/instruct/model --data data/demo/test.json --images 250

The chat CLI, the web page and the API send the whole conversation. For each test record this asks its
questions in order, one turn at a time, with the model's OWN earlier answers in the history (a real chat,
not teacher forcing), and scores every answer by exact match. The same questions are also asked alone
(image + question, as `picovlm eval` does). Reported: accuracy of the first turn, of the later turns
(turn 2 on), per turn, and of the same questions asked alone; the gap `later - first` is what a user who
keeps chatting notices. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from picovlm.data.formats import load_samples
from picovlm.data.records import Sample, open_image
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.eval.vqa import normalize_answer, questions_from
from picovlm.text.tokens import IMAGE

Chat = list[dict[str, str]]


def turns(sample: Sample) -> list[tuple[str, str]]:
    """(question, reference answer) of each turn, placeholders removed."""
    m = sample.messages
    return [(m[k]["content"].replace(IMAGE, "").strip(), m[k + 1]["content"]) for k in range(0, len(m) - 1, 2)]


def chat_in_order(pipe: Pipeline, samples: list[Sample], batch_size: int, params: SamplingParams) -> dict[int, list]:
    """Right or wrong per turn number (0 = first), every record's turns asked in order with its own answers."""
    chats: list[Chat] = [[] for _ in samples]
    right: dict[int, list[int]] = defaultdict(list)
    for k in range(max(len(turns(s)) for s in samples)):
        live = [i for i, s in enumerate(samples) if len(turns(s)) > k]
        for i in live:
            question = turns(samples[i])[k][0]
            chats[i].append({"role": "user", "content": f"{IMAGE}\n{question}" if k == 0 else question})
        for start in range(0, len(live), batch_size):
            rows = live[start : start + batch_size]
            images = [[open_image(samples[i].images[0])] for i in rows]
            for i, answer in zip(rows, pipe.generate([chats[i] for i in rows], images, params), strict=True):
                chats[i].append({"role": "assistant", "content": answer})
                right[k].append(int(normalize_answer(answer) == normalize_answer(turns(samples[i])[k][1])))
    return right


def asked_alone(pipe: Pipeline, samples: list[Sample], batch_size: int, params: SamplingParams) -> float:
    """Accuracy of the same questions, each asked alone with its image."""
    questions, right = questions_from(samples), 0
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [[{"role": "user", "content": f"{IMAGE}\n{q.question}"}] for q in chunk]
        answers = pipe.generate(prompts, [[open_image(q.image)] for q in chunk], params)
        right += sum(normalize_answer(a) == normalize_answer(q.answer) for q, a in zip(chunk, answers, strict=True))
    return right / len(questions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/instruct/model")
    ap.add_argument("--data", default="data/demo/test.json", help="a LLaVA-style test file of multi-turn records")
    ap.add_argument("--images", type=int, default=250, help="the first N test records (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model)
    samples = load_samples(Path(args.data), on_error="raise")
    samples = samples[: args.images] if args.images else samples
    params = SamplingParams(max_tokens=16)
    right = chat_in_order(pipe, samples, args.batch_size, params)
    later = [x for k, v in right.items() if k > 0 for x in v]
    result = {
        "first_turn": sum(right[0]) / len(right[0]),
        "later_turns": sum(later) / max(1, len(later)),
        "asked_alone": asked_alone(pipe, samples, args.batch_size, params),
        "per_turn": {k + 1: round(sum(v) / len(v), 4) for k, v in sorted(right.items())},
        "n_records": len(samples),
        "n_later": len(later),
    }
    result["later_minus_first"] = result["later_turns"] - result["first_turn"]
    print(f"{'turn':<14}{'accuracy':>9}")
    for k, acc in result["per_turn"].items():
        print(f"{k:<14}{acc:>9.3f}")
    for key in ("first_turn", "later_turns", "asked_alone", "later_minus_first"):
        print(f"{key:<18}{result[key]:>+9.3f}" if key == "later_minus_first" else f"{key:<18}{result[key]:>9.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
