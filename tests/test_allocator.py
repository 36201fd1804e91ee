import ctypes
import sys

import pytest

from picovlm import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_sets_both_thresholds(monkeypatch):
    calls = []

    class FakeLibc:
        def __init__(self):
            self.mallopt = self

        def __call__(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert allocator.keep_freed_memory()
    assert calls == [
        (allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD),
        (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD),
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_applies_on_this_glibc():
    assert allocator.keep_freed_memory()  # glibc accepts both values (it refuses what it cannot honour)


def test_without_glibc_it_does_nothing(monkeypatch):
    def no_libc(name):
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory() is False
