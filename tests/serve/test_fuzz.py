"""A bounded fuzz of the HTTP API by schemathesis, from the server's own /openapi.json, against a real
server on loopback: requests that fit the schema (positive) and requests that break it (negative), for
every route. No answer is a 5xx, and every answer is what the schema says (status, content type, body).

Every check schemathesis has runs but one: that a request fitting the schema is accepted. A schema
cannot say that the last message is the user's (so the test appends a user message where the last is
not, or half the requests would be refused for that alone), nor that the prompt fits the model's
context, so some requests that fit it are refused (400), rightly. The key is sent with every request
(tests/serve/test_api.py checks what comes without it). The examples are derandomized: each run
sends the same requests, so a failure reproduces.
"""

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from picovlm.serve.api import create_app
from picovlm.serve.config import ServeConfig
from picovlm.serve.protocol import Limits
from tests.serve.helpers import running

AUTH = {"Authorization": "Bearer sekret"}
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
RUNS = [  # (method, path, mode, examples): most where there is most to get wrong
    ("POST", "/v1/chat/completions", POSITIVE, 100),
    ("POST", "/v1/chat/completions", NEGATIVE, 80),
    ("GET", "/v1/models/{name}", POSITIVE, 20),
    ("GET", "/v1/models/{name}", NEGATIVE, 20),
    ("GET", "/v1/models", POSITIVE, 5),  # no parameters: nothing to break
    ("GET", "/health", POSITIVE, 5),
]


@pytest.fixture(scope="module")
def served(pipe):
    """(base URL, the schema it serves) of a server for the tiny model with an API key."""
    cfg = ServeConfig(model_name="tiny", api_key="sekret", max_batch=8, limits=Limits(max_body_bytes=1_000_000))
    with running(create_app(pipe, cfg)) as url:
        yield url, schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())


@pytest.mark.parametrize("method, path, mode, examples", RUNS)
def test_no_request_gets_a_5xx(served, method, path, mode, examples):
    url, schema = served
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=schema[path][method].as_strategy(generation_mode=mode, headers=AUTH))
    def check(case):
        if mode == POSITIVE and isinstance(case.body, dict) and case.body["messages"][-1]["role"] != "user":
            case.body["messages"].append({"role": "user", "content": "what colour is it?"})  # see above
        response = case.call(base_url=url, timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()
    print(f"{method} {path} {mode.value}: {dict(sorted(statuses.items()))}")
    assert statuses and max(statuses) < 500
