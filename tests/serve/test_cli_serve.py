"""`picovlm serve`: the flags reach the app (uvicorn itself is replaced by a recorder)."""

import uvicorn
from fastapi.testclient import TestClient

from picovlm.cli import main


def test_serve_builds_the_app(tiny_run, monkeypatch, capsys):
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: started.update(app=app, host=host, port=port))
    monkeypatch.setenv("PICOVLM_API_KEY", "k")
    argv = ["serve", "--model", str(tiny_run["model"]), "--port", "8123", "--name", "tiny", "--max-images", "1"]
    assert main(argv) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    with TestClient(started["app"]) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).json()["data"][0]["id"] == "tiny"
        two = [{"type": "image_url", "image_url": {"url": "data:,"}}] * 2
        r = client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": two}]},
            headers={"Authorization": "Bearer k"},
        )
        assert r.json()["error"]["code"] == "too_many_images"


def test_serve_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("picovlm: error: ") and err.count("\n") == 1
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in ["--model", "--host", "--port", "--api-key", "--allow-image-urls", "--max-batch"])
