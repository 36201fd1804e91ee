"""Load test for `picovlm serve`: N concurrent streaming clients against a server on loopback.

    python bench/serve_load.py --model runs/demo/instruct/model --images data/demo/images --clients 8

Starts the server in a subprocess (so clients and server do not share one interpreter lock), then
sends the same requests twice: one after another (sequential), and from N clients at once
(concurrent). Each request streams, with `stream_options.include_usage` for its token count.
Reports requests/s, completion tokens/s, p50/p99 time to first token and latency, and errors;
the target is concurrent tokens/s >= 3x sequential with zero errors. The last stdout line is one
JSON object.

By default each answer is exactly --max-tokens long (`ignore_eos`, as vLLM's benchmarks do): the demo
model answers in 1-3 tokens, and equal lengths make sequential and concurrent runs comparable.
Everything is bounded: --rounds x --clients requests per phase, --timeout seconds in all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

QUESTIONS = ["What colour is the shape?", "What shape is it?", "How many objects are there?", "Describe the image."]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client: httpx.AsyncClient, payload: dict) -> dict:
    """Stream one completion; time to first content token, latency, completion tokens, or an error."""
    start, first, tokens = time.perf_counter(), None, 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    return {"error": obj["error"]["message"]}
                if obj["choices"] and obj["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter()
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens}


async def run_phase(url: str, payloads: list[dict], clients: int) -> dict:
    """Send `payloads` with `clients` workers (1 = one after another); summarize."""
    queue: asyncio.Queue = asyncio.Queue()
    for p in payloads:
        queue.put_nowait(p)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker():
            while not queue.empty():
                results.append(await one_request(client, queue.get_nowait()))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(1000 * percentile([r["ttft"] for r in ok], 50), 1),
        "ttft_p99_ms": round(1000 * percentile([r["ttft"] for r in ok], 99), 1),
        "latency_p50_ms": round(1000 * percentile([r["latency"] for r in ok], 50), 1),
        "latency_p99_ms": round(1000 * percentile([r["latency"] for r in ok], 99), 1),
        "mean_tokens_per_request": round(statistics.mean([r["tokens"] for r in ok]), 1) if ok else 0,
    }


def payloads(images: list[Path], n: int, max_tokens: int, ignore_eos: bool) -> list[dict]:
    out = []
    for i in range(n):
        data = base64.b64encode(images[i % len(images)].read_bytes()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
            {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
        ]
        out.append(
            {
                "model": "bench",
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": ignore_eos,
            }
        )
    return out


def wait_ready(url: str, proc: subprocess.Popen, deadline: float) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo/instruct/model"))
    ap.add_argument("--images", type=Path, default=Path("data/demo/images"))
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    ap.add_argument("--rounds", type=int, default=2, help="each phase sends rounds x clients requests (default: 2)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-ignore-eos", action="store_true", help="let answers end at <|end|> (short, uneven)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for the whole run")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (default: 1)")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.rounds <= 20:
        sys.exit("bench: --clients must be in [1, 64] and --rounds in [1, 20]")
    images = sorted(args.images.glob("*.png"))[: args.clients]
    if not images:
        sys.exit(f"bench: no .png images in {args.images}")
    if not (args.model / "config.json").is_file():
        sys.exit(f"bench: {args.model}: not a checkpoint folder")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "picovlm", "serve", "--model", str(args.model), "--port", str(port)]
    cmd += ["--name", "bench", "--max-batch", str(args.clients), "--threads", str(args.threads)]
    deadline = time.monotonic() + args.timeout
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc, deadline)
        reqs = payloads(images, args.clients * args.rounds, args.max_tokens, not args.no_ignore_eos)

        async def both() -> tuple[dict, dict]:
            await run_phase(url, reqs[:2], 1)  # warm-up: first-call allocations, lazy imports
            seq = await run_phase(url, reqs, 1)
            con = await run_phase(url, reqs, args.clients)
            return seq, con

        seq, con = asyncio.run(asyncio.wait_for(both(), timeout=max(1.0, deadline - time.monotonic())))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    speedup = con["tokens_per_s"] / seq["tokens_per_s"] if seq["tokens_per_s"] else float("nan")
    for name, r in (("sequential", seq), ("concurrent", con)):
        print(
            f"{name:>10}: {r['requests']} requests, {r['errors']} errors, {r['requests_per_s']} req/s, "
            f"{r['tokens_per_s']} tok/s, TTFT p50/p99 {r['ttft_p50_ms']}/{r['ttft_p99_ms']} ms, "
            f"latency p50/p99 {r['latency_p50_ms']}/{r['latency_p99_ms']} ms"
        )
    target = speedup >= 3 and seq["errors"] == 0 and con["errors"] == 0
    verdict = "met" if target else "NOT met"
    print(f"speedup {speedup:.2f}x with {args.clients} clients (target >= 3x with zero errors: {verdict})")
    summary = {
        "bench": "serve_load",
        "model": str(args.model),
        "max_tokens": args.max_tokens,
        "ignore_eos": not args.no_ignore_eos,
        "server_threads": args.threads,
        "sequential": seq,
        "concurrent": con,
        "speedup": round(speedup, 2),
        "target_met": target,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
