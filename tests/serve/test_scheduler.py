"""The scheduler thread on its own: text pieces, stop strings, queue limits, cancelling."""

import pytest

from picovlm.engine.sampling import SamplingParams
from picovlm.serve.scheduler import QueueFull, Scheduler
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image


@pytest.fixture(scope="module")
def encoded(pipe, tiny_run):
    image = load_image(tiny_run["data"] / "images" / "test_000001.png")
    return pipe.processor.encode_prompt([{"role": "user", "content": f"{IMAGE}\ndescribe the picture"}], [image])


def answer(scheduler, enc, **params):
    handle = scheduler.submit(enc.ids, enc.pixels, SamplingParams(**params), ignore_eos=True)
    events = list(handle.events(timeout=30))
    return "".join(e.text for e in events), events[-1]


def test_stop_strings_cut_the_answer(pipe, encoded):
    scheduler = Scheduler(pipe, max_batch=4).start()
    try:
        full, last = answer(scheduler, encoded, max_tokens=30, temperature=1.0, seed=0)
        assert last.finish_reason == "length" and last.completion_tokens == 30
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        assert stop.strip(), full
        cut, last = answer(scheduler, encoded, max_tokens=30, temperature=1.0, seed=0, stop=("zzz-never", stop))
        assert cut == full[: full.index(stop)] and last.finish_reason == "stop"
        assert last.completion_tokens < 30 and scheduler.running == 0
    finally:
        scheduler.close()


def test_queue_limit_and_cancel_before_admission(pipe, encoded):
    scheduler = Scheduler(pipe, max_batch=1, max_waiting=2)  # not started: everything waits
    first = scheduler.submit(encoded.ids, encoded.pixels, SamplingParams(max_tokens=3))
    second = scheduler.submit(encoded.ids, encoded.pixels, SamplingParams(max_tokens=3))
    with pytest.raises(QueueFull):
        scheduler.submit(encoded.ids, encoded.pixels, SamplingParams(max_tokens=3))
    first.cancel()
    scheduler.start()
    try:
        assert list(second.events(timeout=30))[-1].finish_reason in ("stop", "length")
        assert scheduler.waiting == 0 and scheduler.running == 0
        with pytest.raises(ValueError, match="max_batch"):
            Scheduler(pipe, max_batch=0)
    finally:
        scheduler.close()
    assert scheduler.stats["cancelled"] == 1
