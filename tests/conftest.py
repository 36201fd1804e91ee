"""Shared fixtures: a tiny trained tokenizer (trained once per test session)."""

import pytest

from picovlm.text.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    words = ["what", "is", "in", "the", "picture", "a", "cat", "on", "mat", "describe", "red", "blue", "yes"]
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 10
    return Tokenizer.train(texts, vocab_size=300)
