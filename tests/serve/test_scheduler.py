"""The scheduler thread on its own: text pieces, stop strings, queue limits, cancelling."""

import pytest

from picovlm.engine.sampling import SamplingParams
from picovlm.serve.scheduler import QueueFull, Scheduler
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image

MESSAGES = [{"role": "user", "content": f"{IMAGE}\ndescribe the picture"}]


@pytest.fixture(scope="module")
def image(tiny_run):
    return load_image(tiny_run["data"] / "images" / "test_000001.png")


@pytest.fixture(scope="module")
def encoded(pipe, image):
    return pipe.processor.encode_prompt(MESSAGES, [image])


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


def test_answers_are_the_pipelines_whatever_shares_the_batch(pipe, encoded, image):
    """The scheduler and the Pipeline run one engine: a seeded request gets the answer Pipeline.generate
    gives for its seed, while other requests decode beside it."""
    params = [SamplingParams(max_tokens=12, temperature=1.0, seed=seed) for seed in range(4)]
    scheduler = Scheduler(pipe, max_batch=4)
    handles = [scheduler.submit(encoded.ids, encoded.pixels, p) for p in params]  # admitted together at start
    scheduler.start()
    try:
        answers = ["".join(e.text for e in h.events(timeout=30)) for h in handles]
    finally:
        scheduler.close()
    assert any(answers) and answers == [pipe.generate([MESSAGES], [[image]], p)[0] for p in params]


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


def test_a_request_that_fails_alone_fails_alone(pipe, encoded, image):
    """Admitted with good requests: one whose sampling raises (a NaN temperature) and one whose prefill
    raises (a seed torch refuses). Those two end with "error"; the others get the answers they get alone."""
    good = [SamplingParams(max_tokens=12, temperature=1.0, seed=seed) for seed in range(3)]
    nan = SamplingParams(max_tokens=12, temperature=1.0)
    nan.temperature = float("nan")  # SamplingParams refuses it (the API answers 400); set after, so sampling raises
    huge_seed = SamplingParams(max_tokens=12, temperature=1.0, seed=2**64)
    scheduler = Scheduler(pipe, max_batch=8)
    handles = [scheduler.submit(encoded.ids, encoded.pixels, p) for p in [good[0], nan, good[1], huge_seed, good[2]]]
    scheduler.start()  # all five are admitted together
    try:
        events = [list(h.events(timeout=30)) for h in handles]
    finally:
        scheduler.close()
    failed = [events[1][-1], events[3][-1]]
    assert [e.finish_reason for e in failed] == ["error", "error"] and all(e.error for e in failed)
    answers = ["".join(e.text for e in events[i]) for i in (0, 2, 4)]
    assert any(answers) and answers == [pipe.generate([MESSAGES], [[image]], p)[0] for p in good]
    assert all(events[i][-1].finish_reason in ("stop", "length") for i in (0, 2, 4))
    assert scheduler.stats["errors"] == 2 and scheduler.stats["completed"] == 3
    assert scheduler.running == 0 and len(scheduler.batch) == 0
