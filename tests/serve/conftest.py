"""Serving fixtures: the tiny model's pipeline, and a real uvicorn server on a free loopback port."""

import base64

import pytest

from picovlm.engine.pipeline import Pipeline
from picovlm.serve.api import create_app
from picovlm.serve.config import ServeConfig
from picovlm.serve.protocol import Limits
from tests.serve.helpers import running


@pytest.fixture(scope="session")
def pipe(tiny_run) -> Pipeline:
    return Pipeline.load(tiny_run["model"])


@pytest.fixture(scope="session")
def image_url(tiny_run) -> str:
    """A test image of the tiny dataset as a base64 data URL."""
    data = (tiny_run["data"] / "images" / "test_000000.png").read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(pipe):
    """(base URL, app) of a server for the tiny model, named "tiny", with an API key."""
    cfg = ServeConfig(model_name="tiny", api_key="sekret", max_batch=8, limits=Limits(max_body_bytes=2_000_000))
    app = create_app(pipe, cfg)
    with running(app) as url:
        yield url, app
