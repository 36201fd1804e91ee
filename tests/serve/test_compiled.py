"""`picovlm serve --compile`: the scheduler's thread decodes with the compiled step, and requests sent
together get the answers the eager server gives each alone."""

from concurrent.futures import ThreadPoolExecutor

from picovlm.engine.pipeline import Pipeline
from picovlm.serve.api import create_app
from picovlm.serve.config import ServeConfig
from tests.serve.helpers import running
from tests.serve.test_api import chat, image, text, user


def test_a_compiled_server_answers_as_the_eager_one(tiny_run, server, image_url):
    eager_url, _ = server
    payloads = [
        {"model": "tiny", "messages": user(image(image_url), text(q)), "max_tokens": 8, "temperature": 0.0}
        for q in ["what colour?", "what shape?", "how many?", "describe it"]
    ]
    alone = [chat(eager_url, p).json()["choices"][0]["message"]["content"] for p in payloads]
    compiled = Pipeline.load(tiny_run["model"], compile_decode=True)
    app = create_app(compiled, ServeConfig(model_name="tiny", api_key="sekret", max_batch=8))
    with running(app) as url, ThreadPoolExecutor(4) as pool:
        answers = [r.result() for r in [pool.submit(chat, url, p) for p in payloads]]
    assert [r.status_code for r in answers] == [200] * 4
    assert [r.json()["choices"][0]["message"]["content"] for r in answers] == alone
