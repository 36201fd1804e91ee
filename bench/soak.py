"""Soak test for `picovlm serve`: concurrent streaming clients for a fixed time, with random disconnects
and a share of hostile requests, against a real server on loopback.

    python bench/soak.py --duration 60 --clients 8

Builds a tiny model with random weights in a temporary folder (a second; a barely trained model's greedy
answers are all empty, these differ from prompt to prompt) unless --model is given, and starts
`picovlm serve` in a subprocess. For --duration seconds, --clients workers send requests one after
another: a good streaming request (greedy or seeded, one of a fixed set of images x questions x lengths)
read to its end or, with probability --disconnect, dropped after a random number of events; or, with
probability --hostile, a hostile one (NaN, seeds torch refuses, lone surrogates, deep nesting, 10 MB
prompts, bad images, ...), which must get its 4xx. Every second the server's RSS and threads and the
latency of /health are sampled.

Then it checks what the load left behind: requests still running or waiting and rows of the decoding
batch once the clients are gone (leaked slots: all must be 0), and every completed answer against the
same request sent alone, one at a time (all must be equal). Prints a table, then one JSON line.
Linux only (RSS from /proc). Bounded: --duration plus the time to finish in-flight requests and the
check, each request under --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from PIL import Image

from picovlm.checkpoint import save_checkpoint
from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.models.vlm import VLM, VLM_PARTS, vlm_checkpoint_config
from picovlm.text.tokenizer import Tokenizer

NAME = "soak"
QUESTIONS = ["What colour is the shape?", "What shape is it?", "How many objects are there?", "Describe the image."]
LENGTHS = (8, 24, 48)
SEEDS = (0, 1, 2)  # sampled requests: temperature 1 with one of these seeds; None: greedy


# ---------------------------------------------------------------------------- the model and the requests


def build_model(out: Path) -> Path:
    """A tiny VLM with random weights, large enough that its greedy answers depend on the prompt."""
    words = "what colour shape is it how many objects are there describe the image red blue a one two".split()
    tok = Tokenizer.train([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 10, vocab_size=300)
    vit = ViTConfig(image_size=32, patch_size=8, n_embd=32, n_layer=2, n_head=2)
    lm = GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=64, mlp_hidden=128)
    torch.manual_seed(0)
    model = VLM(VLMConfig(vision=VisionConfig(vit=vit), projector="pixel_shuffle2", lm=lm), tok.image_id)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    tok_file = out / "tokenizer.json"
    tok.save(tok_file)
    save_checkpoint(out / "model", model, vlm_checkpoint_config(model), VLM_PARTS, {}, tok_file)
    return out / "model"


def png_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_images(n: int) -> list[str]:
    rng = random.Random(0)
    return [png_url(Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))) for _ in range(n)]


@dataclass(frozen=True)
class Good:
    """A good request, by what it asks: the same key must always get the same answer."""

    image: int
    question: int
    max_tokens: int
    seed: int | None

    def body(self, images: list[str]) -> dict:
        content = [{"type": "image_url", "image_url": {"url": images[self.image]}}]
        content.append({"type": "text", "text": QUESTIONS[self.question]})
        sampling = {"temperature": 0} if self.seed is None else {"temperature": 1.0, "seed": self.seed}
        return {
            "model": NAME,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "stream": True,
            **sampling,
        }


def hostile_requests(images: list[str]) -> dict[str, tuple[bytes, int]]:
    """name -> (body, the status it must get)."""
    ok = Good(0, 0, 8, None).body(images) | {"stream": False}

    def with_(**fields) -> bytes:
        return json.dumps({**ok, **fields}).encode()  # Python's json: NaN, Infinity, escaped surrogates

    def user(*parts) -> list[dict]:
        return [{"role": "user", "content": list(parts)}]

    bomb = io.BytesIO()
    Image.new("1", (7000, 7000)).save(bomb, format="PNG")  # 49 Mpx behind a small file
    bomb_url = "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode()
    return {
        "NaN temperature": (with_(temperature=float("nan")), 400),
        "infinite top_p": (with_(top_p=float("inf")), 400),
        "seed 2**64": (with_(seed=2**64), 400),
        "lone surrogate": (with_(messages=user({"type": "text", "text": "hi \ud800"})), 400),
        "nested 100000 deep": (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
        "5000-digit number": (b'{"model": "soak", "seed": ' + b"9" * 5000 + b"}", 400),
        "10 MB prompt": (with_(messages=user({"type": "text", "text": "what is it? " * 850_000})), 400),
        "a million JSON values": (b'{"model": "soak", "messages": [' + b"{}," * 1_000_000 + b"{}]}", 400),
        "truncated JSON": (with_()[:-7], 400),
        "not an image": (
            with_(messages=user({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}})),
            400,
        ),
        "decompression bomb": (with_(messages=user({"type": "image_url", "image_url": {"url": bomb_url}})), 400),
        "unknown model": (with_(model="gpt-4o"), 404),
        "max_tokens past the context": (with_(max_tokens=10**6), 400),
        "messages not a list": (with_(messages={"role": "user"}), 400),
    }


# ---------------------------------------------------------------------------- the load


@dataclass
class Tally:
    """What the clients saw."""

    sent: Counter = field(default_factory=Counter)  # kind -> requests
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> requests
    wrong: list[str] = field(default_factory=list)  # hostile requests that got another status, failures
    answers: dict[Good, list[tuple[str, str]]] = field(default_factory=dict)  # completed: (text, finish reason)
    latencies: list[float] = field(default_factory=list)  # of completed good requests


async def stream_answer(client: httpx.AsyncClient, body: dict, drop_after: int | None) -> tuple[int, str, str | None]:
    """(status, text, finish reason) of a streamed answer; finish None if dropped (after `drop_after`
    events) or if it ended without one (an error event: then the text is the error message)."""
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.text[:200], None
        text, events = "", 0
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            if drop_after is not None and events > drop_after:
                return 200, text, None  # leaving the block closes the connection mid-stream
            obj = json.loads(line[6:])
            if "error" in obj:
                return 200, obj["error"]["message"], None
            choice = obj["choices"][0]
            text += choice["delta"].get("content") or ""
            if choice["finish_reason"] is not None:
                return 200, text, choice["finish_reason"]
    return 200, text, None


async def client_loop(url: str, args, images, hostile, deadline: float, rng: random.Random, tally: Tally) -> None:
    names = sorted(hostile)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout) as client:
        while time.monotonic() < deadline:
            try:
                if rng.random() < args.hostile:
                    name = rng.choice(names)
                    body, expected = hostile[name]
                    tally.sent["hostile"] += 1
                    r = await client.post(
                        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
                    )
                    tally.statuses[("hostile", r.status_code)] += 1
                    if r.status_code != expected or "error" not in r.json():
                        tally.wrong.append(f"{name}: HTTP {r.status_code} (expected {expected}): {r.text[:120]}")
                    continue
                good = Good(
                    rng.randrange(len(images)),
                    rng.randrange(len(QUESTIONS)),
                    rng.choice(LENGTHS),
                    rng.choice((None, *SEEDS)),
                )
                drop = rng.randrange(4) if rng.random() < args.disconnect else None
                kind = "dropped" if drop is not None else "good"
                tally.sent[kind] += 1
                start = time.perf_counter()
                status, text, finish = await stream_answer(client, good.body(images), drop)
                tally.statuses[(kind, status)] += 1
                if kind == "good":
                    if status != 200 or finish is None:
                        tally.wrong.append(f"good request: HTTP {status}, ended without a finish: {text}")
                    else:
                        tally.answers.setdefault(good, []).append((text, finish))
                        tally.latencies.append(time.perf_counter() - start)
            except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
                tally.statuses[("client error", type(e).__name__)] += 1
                tally.wrong.append(f"{type(e).__name__}: {e}")


def proc_status(pid: int) -> tuple[float, int]:
    """(RSS in MB, threads) of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def monitor(url: str, pid: int, deadline: float, samples: list[dict]) -> None:
    """Every second: the server's RSS and threads, /health's latency and what it says. In a thread of its
    own, so that the clients' event loop does not delay it."""
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            health = client.get("/health").json()
            latency = time.perf_counter() - t
            rss, threads = proc_status(pid)
            samples.append({
                "t": round(time.monotonic() - start, 1), "rss_mb": round(rss, 1), "threads": threads,
                "health_ms": round(1000 * latency, 1), "running": health["running"], "waiting": health["waiting"],
            })  # fmt: skip
            time.sleep(max(0.0, 1.0 - latency))


async def load(url: str, pid: int, args, images: list[str]) -> tuple[Tally, list[dict]]:
    tally, samples = Tally(), []
    hostile = hostile_requests(images)
    deadline = time.monotonic() + args.duration
    clients = [client_loop(url, args, images, hostile, deadline, random.Random(i), tally) for i in range(args.clients)]
    await asyncio.gather(asyncio.to_thread(monitor, url, pid, deadline, samples), *clients)
    return tally, samples


async def leftovers(url: str, wait_s: float = 10.0) -> dict:
    """What /health reports once the clients are gone (waiting up to `wait_s` for the last to drain)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        end = time.monotonic() + wait_s
        while True:
            health = (await client.get("/health")).json()
            left = {k: health[k] for k in ("running", "waiting", "rows")}
            if not any(left.values()) or time.monotonic() > end:
                return left
            await asyncio.sleep(0.2)


async def alone(url: str, keys: list[Good], images: list[str], timeout: float) -> dict[Good, tuple[str, str | None]]:
    """Each request sent alone, one at a time."""
    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        for key in keys:
            status, text, finish = await stream_answer(client, key.body(images), None)
            out[key] = (text, finish) if status == 200 else (f"HTTP {status}", None)
    return out


# ---------------------------------------------------------------------------- the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the server did not become ready")


def report(args, tally: Tally, samples: list[dict], left: dict, mismatches: list[str], log: str) -> dict:
    rss = [s["rss_mb"] for s in samples]
    health = [s["health_ms"] for s in samples]
    statuses = {f"{kind} {status}": n for (kind, status), n in sorted(tally.statuses.items(), key=str)}
    completed = sum(len(v) for v in tally.answers.values())
    five_xx = sum(n for (_, status), n in tally.statuses.items() if isinstance(status, int) and status >= 500)
    tracebacks = log.count("Traceback")
    ok = not (tally.wrong or mismatches or five_xx or any(left.values()) or tracebacks)
    print(f"{'t (s)':>6} {'RSS MB':>8} {'threads':>8} {'/health ms':>11} {'running':>8} {'waiting':>8}")
    step = max(1, len(samples) // 12)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print(
            f"{s['t']:>6} {s['rss_mb']:>8} {s['threads']:>8} {s['health_ms']:>11} {s['running']:>8} {s['waiting']:>8}"
        )
    print(
        f"\nrequests: {dict(tally.sent)} ({sum(tally.sent.values())} in {args.duration:.0f} s, {args.clients} clients)"
    )
    for name, n in statuses.items():
        print(f"  {name:<24} {n}")
    print(f"5xx: {five_xx}; wrong answers or statuses: {len(tally.wrong)}; server tracebacks: {tracebacks}")
    print(f"left after the run (leaked slots): {left}")
    print(f"completed answers equal to the same request alone: {completed - len(mismatches)}/{completed} "
          f"({len(tally.answers)} distinct requests)")  # fmt: skip
    for line in (tally.wrong + mismatches)[:10]:
        print("  " + line)
    print(f"RSS: {rss[0]} MB at the start, {max(rss)} MB at most, {rss[-1]} MB at the end; "
          f"/health p50 {statistics.median(health):.1f} ms, max {max(health):.1f} ms")  # fmt: skip
    print("soak: " + ("passed" if ok else "FAILED"))
    return {
        "bench": "soak",
        "duration_s": args.duration,
        "clients": args.clients,
        "hostile_share": args.hostile,
        "disconnect_share": args.disconnect,
        "requests": dict(tally.sent),
        "statuses": statuses,
        "five_xx": five_xx,
        "wrong": len(tally.wrong),
        "server_tracebacks": tracebacks,
        "left_after": left,
        "completed": completed,
        "distinct": len(tally.answers),
        "mismatches": len(mismatches),
        "good_latency_p50_ms": round(1000 * statistics.median(tally.latencies), 1) if tally.latencies else None,
        "rss_mb": {"start": rss[0], "max": max(rss), "end": rss[-1]},
        "rss_timeline_mb": [[s["t"], s["rss_mb"]] for s in samples],
        "threads": {"start": samples[0]["threads"], "end": samples[-1]["threads"]},
        "health_ms": {"p50": statistics.median(health), "max": max(health)},
        "passed": ok,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a checkpoint folder (default: a tiny random model, built here)")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load (default: 60)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    ap.add_argument("--hostile", type=float, default=0.2, help="share of hostile requests (default: 0.2)")
    ap.add_argument("--disconnect", type=float, default=0.2, help="share of good requests dropped mid-stream")
    ap.add_argument("--images", type=int, default=6, help="distinct test images (default: 6)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds for one request (default: 60)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (default: 1)")
    args = ap.parse_args()
    if not (
        1 <= args.clients <= 64 and 1 <= args.duration <= 3600 and 0 <= args.hostile <= 1 and 0 <= args.disconnect <= 1
    ):
        sys.exit("soak: --clients in [1, 64], --duration in [1, 3600] s, --hostile and --disconnect in [0, 1]")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp))
        port, log_file = free_port(), Path(tmp) / "server.log"
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "picovlm", "serve", "--model", str(model), "--port", str(port), "--name", NAME]
        cmd += ["--max-batch", str(args.clients), "--threads", str(args.threads)]
        with open(log_file, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, proc)
            images = test_images(args.images)
            tally, samples = asyncio.run(load(url, proc.pid, args, images))
            left = asyncio.run(leftovers(url))
            keys = sorted(
                tally.answers, key=lambda k: (k.image, k.question, k.max_tokens, k.seed is not None, k.seed or 0)
            )
            reference = asyncio.run(alone(url, keys, images, args.timeout))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        mismatches = [
            f"{key}: {got!r} under load, {reference[key]!r} alone"
            for key in keys
            for got in tally.answers[key]
            if got != reference[key]
        ]
        summary = report(args, tally, samples, left, mismatches, log_file.read_text())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
