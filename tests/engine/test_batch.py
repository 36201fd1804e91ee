"""The decoding engine: a sequence decodes the same tokens as the no-cache reference, whether it runs
alone, is prefilled with others or joins and leaves a busy batch; stop ids, stop strings, max_tokens,
seeds, and the text it yields."""

import copy
from collections.abc import Hashable

import pytest
import torch

from picovlm.engine.batch import DecodeBatch, Sequence, Step
from picovlm.engine.sampling import SamplingParams
from picovlm.models.vlm import VLM
from picovlm.text.tokenizer import Tokenizer
from tests.engine.reference import decode_without_cache

IMG = 2  # <|image|> in the session tokenizer (`tok`), and the test model's image token


def with_stop_ids(tok: Tokenizer, *stop_ids: int) -> Tokenizer:
    """`tok` with these stop ids only (none: a row runs to max_tokens)."""
    tok = copy.copy(tok)
    tok.stop_ids = stop_ids
    return tok


def prompt(model: VLM, text: list[int], n_images: int = 1) -> list[int]:
    return [0, 3] + [IMG] * (model.tokens_per_image * n_images) + text + [4]


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def greedy(n: int = 8, **kwargs) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kwargs)


def run(batch: DecodeBatch, seqs: list[Sequence]) -> dict[Hashable, list[Step]]:
    """Add `seqs` together, then step until every one has ended."""
    batch.add(seqs)
    got: dict[Hashable, list[Step]] = {s.key: [] for s in seqs}
    while len(batch):
        for step in batch.step():
            got[step.key].append(step)
    return got


def tokens(steps: list[Step]) -> list[int]:
    return [s.token for s in steps]


def test_cached_decoding_equals_recompute(model, tok):
    ids = prompt(model, [10, 11, 12])
    (steps,) = run(DecodeBatch(model, with_stop_ids(tok)), [Sequence("a", ids, pixels(1), greedy(10))]).values()
    assert tokens(steps) == decode_without_cache(model, ids, pixels(1), 10)
    assert len(set(tokens(steps))) > 1  # not a degenerate constant output
    assert [s.finished for s in steps] == [None] * 9 + ["length"]
    assert "".join(s.text for s in steps) == tok.decode(tokens(steps))


def test_prompts_added_together_decode_as_alone(model, tok):
    prompts = [prompt(model, [10, 11]), [0, 3, 20, 21, 22, 23, 24, 25, 4], prompt(model, [30], 2)]
    images = [pixels(1, 0), None, pixels(2, 1)]  # left padding, and a text-only row among image rows
    alone = [decode_without_cache(model, p, im, 8) for p, im in zip(prompts, images, strict=True)]
    assert len({tuple(a) for a in alone}) == 3  # the rows really differ
    seqs = [Sequence(i, p, im, greedy()) for i, (p, im) in enumerate(zip(prompts, images, strict=True))]
    got = run(DecodeBatch(model, with_stop_ids(tok)), seqs)
    assert [tokens(got[i]) for i in range(3)] == alone


@pytest.fixture(scope="module")
def compiled(model) -> VLM:
    """The test model with its decode step compiled (`picovlm generate --compile`)."""
    compiled = copy.deepcopy(model)
    compiled.lm.compile_decode()
    return compiled


@pytest.mark.parametrize("which", ["eager", "compiled"])
def test_rows_joining_and_leaving_decode_as_alone(model, tok, which, request):
    """Rows of 1 to 3 and caches rebuilt as they join and leave: the compiled step (one graph for every
    batch size and cache capacity) must decode what the reference does, as the eager one does."""
    decoder = request.getfixturevalue("compiled") if which == "compiled" else model
    specs = [  # (text, images, max_tokens, the step at which it joins)
        ([7, 8, 9], 1, 12, 0),
        ([10], 0, 5, 0),
        ([11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 2, 9, 2),  # longer than the window: shifts the others
        ([21, 22], 1, 7, 6),  # joins after row 1 has left
    ]
    seqs = [
        Sequence(i, prompt(model, text, n), pixels(n, i) if n else None, greedy(m))
        for i, (text, n, m, _) in enumerate(specs)
    ]
    expected = {s.key: decode_without_cache(model, s.ids, s.pixels, s.params.max_tokens) for s in seqs}
    batch, got, step = DecodeBatch(decoder, with_stop_ids(tok)), {s.key: [] for s in seqs}, 0
    while step == 0 or len(batch):
        batch.add([s for s, spec in zip(seqs, specs, strict=True) if spec[3] == step])
        width = batch.window
        # the cache holds what the running answers still need, not the model's whole context
        assert batch.cache.max_len <= width + max(s.params.max_tokens - s.generated for s in batch.rows)
        for out in batch.step():
            got[out.key].append(out.token)
        assert batch.window <= width + 1
        step += 1
    assert got == expected
    assert batch.cache is None and batch.window == 0  # everything freed


def test_stop_ids_end_a_row_and_ignore_stop(model, tok):
    ids = [prompt(model, [10, 11]), prompt(model, [40, 41, 42])]
    ref = [decode_without_cache(model, p, pixels(1, i), 10) for i, p in enumerate(ids)]
    stop = next(t for t in ref[0][2:] if t not in ref[1])  # ends row 0 early, never row 1
    cut = ref[0].index(stop) + 1
    seqs = [Sequence(i, p, pixels(1, i), greedy(10)) for i, p in enumerate(ids)]
    got = run(DecodeBatch(model, with_stop_ids(tok, stop)), seqs)
    assert tokens(got[0]) == ref[0][:cut] and got[0][-1].finished == "stop"  # the stop token comes once
    assert "".join(s.text for s in got[0]) == tok.decode(ref[0][: cut - 1])  # and is not text
    assert tokens(got[1]) == ref[1] and got[1][-1].finished == "length"
    ignoring = Sequence("i", ids[0], pixels(1, 0), greedy(10), ignore_stop=True)  # benchmarks: exactly max_tokens
    (steps,) = run(DecodeBatch(model, with_stop_ids(tok, stop)), [ignoring]).values()
    assert tokens(steps) == ref[0] and steps[-1].finished == "length"


def test_a_stop_string_ends_a_row_before_it(model, tok):
    ids = prompt(model, [7, 8])
    full = tok.decode(decode_without_cache(model, ids, pixels(1), 16))
    start = next(i for i in range(4, len(full) - 1) if full.find(full[i : i + 2]) == i)  # a first occurrence
    stop = full[start : start + 2]
    steps = run(DecodeBatch(model, with_stop_ids(tok)), [Sequence("a", ids, pixels(1), greedy(16, stop=(stop,)))])["a"]
    assert "".join(s.text for s in steps) == full[:start]
    assert steps[-1].finished == "stop" and len(steps) < 16  # the row left as soon as the stop string was decoded


@pytest.mark.parametrize("n", [1, 3])
def test_max_tokens(model, tok, n):
    seqs = [Sequence(0, prompt(model, [10]), pixels(1), greedy(n)), Sequence(1, [0, 3, 4], None, greedy(n))]
    got = run(DecodeBatch(model, with_stop_ids(tok)), seqs)
    assert [len(got[0]), len(got[1])] == [n, n] and got[0][-1].finished == got[1][-1].finished == "length"


def test_never_emits_the_image_token(model, tok):
    with torch.no_grad():
        saved = model.lm.lm_head.weight[IMG].clone()
        model.lm.lm_head.weight[IMG] = model.lm.lm_head.weight[7] * 50  # would win every argmax
    try:
        seqs = [
            Sequence("greedy", prompt(model, [10]), pixels(1), greedy(4)),
            Sequence("sampled", [0, 3, 4], None, SamplingParams(max_tokens=4, temperature=1.0, seed=0)),
        ]
        got = run(DecodeBatch(model, with_stop_ids(tok)), seqs)
    finally:
        with torch.no_grad():
            model.lm.lm_head.weight[IMG] = saved
    assert all(IMG not in tokens(steps) for steps in got.values())


def test_seeded_sampling_is_per_sequence(model, tok):
    """Each sequence draws from its own generator: the same seed gives the same answer, alone or with
    batch mates that sample too, come and go."""
    batch = DecodeBatch(model, with_stop_ids(tok))

    def sampled(seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=10, temperature=1.0, top_k=20, seed=seed)

    def alone(seed: int) -> list[int]:
        return tokens(run(batch, [Sequence("a", prompt(model, [7, 8]), pixels(1), sampled(seed))])["a"])

    assert alone(3) == alone(3) and alone(3) != alone(4)
    a = Sequence("a", prompt(model, [7, 8]), pixels(1), sampled(3))
    b = Sequence("b", prompt(model, [9]), pixels(1, 1), SamplingParams(max_tokens=10, temperature=1.0, seed=4))
    c = Sequence("c", [0, 3, 4], None, SamplingParams(max_tokens=3, temperature=1.0))
    batch.add([a, b])
    got = [batch.step()[0]]
    batch.remove({"b"})  # b's client went away: a goes on unchanged
    batch.add([c])  # and c joins
    assert [s.key for s in batch.rows] == ["a", "c"]
    while len(batch):
        got += [s for s in batch.step() if s.key == "a"]
    assert tokens(got) == alone(3)


def test_every_way_of_sampling_in_one_batch_lands_on_its_own_row(model, tok):
    """Greedy, seeded and unseeded rows (unseeded ones that sample alike draw together) in one batch: with
    top_k=1 or a tiny top_p every draw is the argmax, so each row must get its own greedy answer."""
    prompts = [prompt(model, [10 + i], i % 2) for i in range(5)]
    images = [pixels(1, i) if i % 2 else None for i in range(5)]
    settings = [
        greedy(6),
        SamplingParams(max_tokens=6, temperature=2.0, top_k=1, seed=0),
        SamplingParams(max_tokens=6, temperature=2.0, top_k=1),
        SamplingParams(max_tokens=6, temperature=2.0, top_p=1e-6),
        SamplingParams(max_tokens=6, temperature=2.0, top_k=1),
    ]
    expected = [decode_without_cache(model, p, im, 6) for p, im in zip(prompts, images, strict=True)]
    assert len({tuple(e) for e in expected}) == 5  # the rows really differ
    seqs = [Sequence(i, *row) for i, row in enumerate(zip(prompts, images, settings, strict=True))]
    got = run(DecodeBatch(model, with_stop_ids(tok)), seqs)
    assert [tokens(got[i]) for i in range(5)] == expected


def test_too_long_is_refused(model, tok):
    batch = DecodeBatch(model, tok)
    with pytest.raises(ValueError, match="exceed"):
        batch.add([Sequence("x", [0] * 60, None, SamplingParams(max_tokens=5))])
    assert len(batch) == 0


def test_a_row_whose_decoding_raises_ends_alone(model, tok):
    """Rows whose draw raises (NaN logits in a group of rows that sample alike, a NaN temperature) or whose
    text raises end with "error" in that step; every other row finishes with the answer it gets alone."""
    argmax = SamplingParams(max_tokens=6, temperature=2.0, top_k=1)  # unseeded rows that sample alike: one draw
    good = [
        Sequence("greedy", prompt(model, [10]), pixels(1), greedy(6)),
        Sequence("argmax", prompt(model, [11]), pixels(1, 1), argmax),
        Sequence("seeded", prompt(model, [12]), pixels(1, 2), SamplingParams(max_tokens=6, temperature=1.0, seed=5)),
    ]
    alone = {s.key: tokens(run(DecodeBatch(model, with_stop_ids(tok)), [s])[s.key]) for s in good}
    nan_temperature = SamplingParams(max_tokens=6, temperature=1.0)
    nan_temperature.temperature = float("nan")  # SamplingParams refuses it; set after, as a bug in the engine would
    bad = [
        Sequence("nan logits", prompt(model, [13]), pixels(1, 3), argmax),
        Sequence("nan temperature", [0, 3, 14, 4], None, nan_temperature),
        Sequence("text", prompt(model, [15]), pixels(1, 4), greedy(6)),
    ]
    batch = DecodeBatch(model, with_stop_ids(tok))
    batch.add([good[0], bad[0], good[1], bad[1], good[2], bad[2]])
    with torch.inference_mode():
        batch.logits[1] = float("nan")

    def broken(token: int) -> str:
        raise UnicodeError("no text for this token")

    bad[2].text.push = broken
    got: dict[Hashable, list[Step]] = {s.key: [] for s in good + bad}
    while len(batch):
        for step in batch.step():
            got[step.key].append(step)
    for s in bad:  # each ended in the first step, with its own exception
        assert [st.finished for st in got[s.key]] == ["error"] and isinstance(got[s.key][0].error, Exception)
    assert isinstance(got["text"][0].error, UnicodeError) and got["nan logits"][0].token is None
    assert {key: tokens(got[key]) for key in alone} == alone
    assert all(got[key][-1].finished == "length" for key in alone)
