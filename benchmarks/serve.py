"""o1_jax.serve under concurrent load: server-side batching vs one request per model call.

The same model is served twice in this process (uvicorn on a thread, `o1_jax.inference.server`):
"batched" (`--max_batch_size 32`, a 5 ms window: concurrent requests share a model call) and
"one at a time" (`--max_batch_size 1`, no window). `--clients` threads (8) each send requests one
after another over keep-alive HTTP (httpx): `--requests` (50) embedding requests of one document
each (SciFact-like sentences), then `--chat_requests` (4) greedy chat completions of `--chat_tokens`
(16) tokens each (the synthesis expert's kind of request). Every shape a load can merge is compiled
first, then an untimed round warms up; the timed round reports requests/s (all requests over the wall time), the p50 / p95 latency
a client saw, and the mean inputs per model call. Every answer is checked (200, right count).

Clients and server share the process and its cores, as on a machine that runs both.

    python benchmarks/serve.py [--model shipped:smollm2-135m-instruct --clients 8 --requests 50 --json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import SENTENCES, describe_machine, machine, peak_rss_gib, write_json  # benchmarks/machine.py

from o1_jax.inference import server as server_lib
from o1_jax.inference.embedder import O1Embedder

CONFIGS = {"batched": dict(max_batch_size=32, batch_window_ms=5.0),
           "one at a time": dict(max_batch_size=1, batch_window_ms=0.0)}


def load(url: str, clients: int, requests: int, request) -> dict:
    """`clients` threads x `requests` sequential calls of `request(http, url, c, r)`; latencies in seconds."""
    latencies, failures = [], []
    lock = threading.Lock()

    def client(c):
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                start = time.perf_counter()
                try:
                    request(http, url, c, r)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        failures.append(repr(e))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    q = np.percentile(latencies, [50, 95])
    return {"requests": len(latencies), "seconds": wall, "rps": len(latencies) / wall,
            "p50_ms": 1000 * q[0], "p95_ms": 1000 * q[1]}


def embed_one(http, url, c, r):
    response = http.post(url + "/v1/embeddings", json={"input": SENTENCES[(c * 7 + r) % len(SENTENCES)]})
    response.raise_for_status()
    assert len(response.json()["data"]) == 1


def chat_messages(sentence: str) -> list[dict]:
    return [{"role": "user", "content": f"Is this true? {sentence}"}]


def chat_one(tokens):
    def request(http, url, c, r):
        question = SENTENCES[(c * 5 + r) % len(SENTENCES)]
        response = http.post(url + "/v1/chat/completions", json={
            "messages": chat_messages(question), "max_tokens": tokens, "temperature": 0})
        response.raise_for_status()
        assert len(response.json()["choices"]) == 1
    return request


def compile_every_shape(worker: server_lib.ModelWorker, max_rows: int, clients: int, chat_tokens: int) -> None:
    """Runs the server's own model calls at every row count a load can merge (powers of two up to the
    clients) with the shortest and the longest inputs, so no compile lands in a timed round."""
    by_length = sorted(SENTENCES, key=len)
    chat_key = server_lib.GenerateKey(server_lib.Sampling(max_new_tokens=chat_tokens), 1, None)
    rows = 1
    while rows <= min(max_rows, clients):
        for texts in (by_length[:rows], by_length[-rows:]):
            worker.run(server_lib.EmbedKey("document", 0, None), texts)
            worker.run(chat_key, worker.chat_ids([chat_messages(t) for t in texts]))
        rows *= 2


def measure(embedder: O1Embedder, name: str, args) -> list[dict]:
    settings = server_lib.ServerSettings(model_name="bench", **CONFIGS[name])
    rows = []
    with server_lib.BackgroundServer(server_lib.create_app(embedder, settings)) as running:
        stats = running.app.state.batcher.stats
        start = time.perf_counter()
        compile_every_shape(running.app.state.worker, settings.max_batch_size, args.clients, args.chat_tokens)
        print(f"  {name}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
        for workload, requests, request in [("embeddings, 1 document", args.requests, embed_one),
                                            (f"chat, greedy {args.chat_tokens} tokens", args.chat_requests,
                                             chat_one(args.chat_tokens))]:
            load(running.url, args.clients, requests, request)  # untimed: compiles every shape
            calls, items = stats["calls"], stats["items"]
            row = load(running.url, args.clients, requests, request)
            row.update(workload=workload, server=name,
                       inputs_per_call=(stats["items"] - items) / max(stats["calls"] - calls, 1))
            print(f"  {workload} / {name}: {row['rps']:.1f} requests/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p95 {row['p95_ms']:.0f} ms, {row['inputs_per_call']:.2f} inputs per call", flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shipped:smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="embedding requests per client")
    p.add_argument("--chat_requests", type=int, default=4, help="chat requests per client")
    p.add_argument("--chat_tokens", type=int, default=16)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    print(describe_machine(), flush=True)
    loaded = O1Embedder.from_pretrained(args.model, batch_size=32)
    print(f"model {args.model}: {args.clients} clients x {args.requests} embedding + {args.chat_requests} chat "
          "requests each", flush=True)
    rows = []
    for name in CONFIGS:
        embedder = O1Embedder(loaded.model, loaded.params, loaded.tokenizer,
                              batch_size=CONFIGS[name]["max_batch_size"],
                              max_query_tokens=loaded.formatter.max_query_tokens,
                              max_thought_tokens=loaded.max_thought_tokens,
                              max_doc_tokens=loaded.formatter.max_doc_tokens)
        rows += measure(embedder, name, args)
    print("\n| workload | server | requests | requests/s | p50 latency ms | p95 latency ms | inputs per model call |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['workload']} | {r['server']} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {r['inputs_per_call']:.2f} |")
    for workload in dict.fromkeys(r["workload"] for r in rows):
        by = {r["server"]: r for r in rows if r["workload"] == workload}
        print(f"{workload}: batched / one at a time = {by['batched']['rps'] / by['one at a time']['rps']:.2f}x "
              "requests/s")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")
    if args.json:
        write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
