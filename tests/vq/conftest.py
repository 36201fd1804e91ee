from pathlib import Path

import pytest

from tests.vq.helpers import train_tiny_vq


@pytest.fixture(scope="session")
def tiny_vq(tiny_data, tmp_path_factory) -> Path:
    """A tiny `vq` checkpoint trained on `tiny_data`, once per session; do not modify it."""
    return train_tiny_vq(tiny_data, tmp_path_factory.mktemp("tiny_vq"))
