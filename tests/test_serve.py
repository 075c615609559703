"""`python -m o1_jax.serve`: the OpenAI API over a tiny random model, spoken to with the official client.

Embeddings equal `encode_corpus` / `encode_queries` (with and without thinking), completions equal
`generate`, bad requests get OpenAI's error shape, the key is checked, a failing model call fails only
its request, the batcher merges and streams as documented, and a bounded load loses nothing.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import jax
import numpy as np
import openai
import pytest

from o1_jax import serve
from o1_jax.data import formatting
from o1_jax.inference import server as server_lib
from o1_jax.inference.embedder import O1Embedder
from o1_jax.inference.generate import Sampling, generate
from tests.tiny_models import save_tiny_hf

KEY = "test-key"
MODEL = "tiny-o1"
# A template in the synthetic vocabulary: the word-level tokenizer maps other words to <unk>.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }} . {% endfor %}"
                 "{% if add_generation_prompt %}answer :{% endif %}")
DOCS = ["kamo rizel lives in oslo .", "bane tosul works as a baker in cairo .", "a b c", "",
        "the friend of kamo rizel is bane tosul and lives in berlin , city of chess ."]
QUERIES = ["where does the friend of kamo rizel live ?", "what does the cousin of bane tosul do ?"]


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def assert_same_vectors(got, want):
    """Unit vectors from another batch composition (other padding widths): cosine within 1e-6 of 1."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert cosines(got, want).min() >= 1 - 1e-6


def make_tiny_folder(out) -> str:
    """A tiny random Llama (context 256) with the synthetic tokenizer and a chat template, as an HF folder."""
    return save_tiny_hf(out, chat_template=CHAT_TEMPLATE, max_position_embeddings=256)


def load_tiny(folder) -> O1Embedder:
    return O1Embedder.from_pretrained(folder, batch_size=4, max_thought_tokens=6, max_query_tokens=12,
                                      max_doc_tokens=12, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_folder(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def embedder(tiny_folder):
    return load_tiny(tiny_folder)


@pytest.fixture(scope="module")
def served(embedder):
    app = server_lib.create_app(embedder, server_lib.ServerSettings(model_name=MODEL, api_key=KEY, max_inputs=8))
    with server_lib.BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def post(served, path, body, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(served.url + path, content=data, headers=headers, timeout=120)


# ----------------------------------------------------------------------------- embeddings


def test_documents_are_the_default_and_equal_encode_corpus_in_both_encodings(client, embedder):
    want = embedder.encode_corpus(DOCS)
    plain = client.embeddings.create(input=DOCS, model=MODEL)  # the client asks for base64 and decodes it
    assert [d.index for d in plain.data] == list(range(len(DOCS))) and plain.model == MODEL
    assert_same_vectors([d.embedding for d in plain.data], want)
    floats = client.embeddings.create(input=DOCS, model=MODEL, encoding_format="float")
    np.testing.assert_array_equal([d.embedding for d in floats.data], [d.embedding for d in plain.data])
    raw = client.embeddings.create(input=DOCS, model=MODEL, encoding_format="base64")  # not decoded for us
    vectors = [np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in raw.data]
    np.testing.assert_array_equal(vectors, np.float32([d.embedding for d in floats.data]))
    tokens = embedder.formatter.collate_docs(DOCS)["doc_mask"].sum()
    assert plain.usage.prompt_tokens == plain.usage.total_tokens == tokens


def test_queries_equal_encode_queries_without_and_with_thinking(client, embedder):
    def served(**extra):
        out = client.embeddings.create(input=QUERIES, model=MODEL, extra_body={"input_type": "query", **extra})
        return np.array([d.embedding for d in out.data]), out

    assert_same_vectors(served()[0], embedder.encode_queries(QUERIES))
    assert_same_vectors(served(num_thoughts=1)[0], embedder.encode_queries(QUERIES, num_thoughts=1))  # greedy
    two, out = served(num_thoughts=2, seed=5, return_thoughts=True)  # sampled at think_temperature: alone
    assert_same_vectors(two, embedder.encode_queries(QUERIES, num_thoughts=2, seed=5))
    assert [d.model_extra["thoughts"] for d in out.data] == embedder.think(QUERIES, k=2, seed=5)
    assert out.usage.total_tokens > out.usage.prompt_tokens > 0
    other_seed = served(num_thoughts=2, seed=6)[0]
    assert cosines(other_seed, two).min() < 1 - 1e-3  # the seed is honoured


def test_merged_requests_answer_as_alone_and_a_long_list_streams(served, embedder):
    """Requests that queue while the worker is busy share its next calls; each gets its own vectors."""
    batcher = served.app.state.batcher
    original, busy, release = batcher.run, threading.Event(), threading.Event()

    def blocking_run(key, items):
        if not busy.is_set():
            busy.set()
            release.wait(60)
        return original(key, items)

    batcher.run = blocking_run
    try:
        texts = [[DOCS[i % 5], DOCS[(i + 2) % 5]] for i in range(6)] + [DOCS + DOCS[:3]]  # the last streams (8 > 4)
        results = [None] * len(texts)

        def ask(i):
            results[i] = post(served, "/v1/embeddings", {"input": texts[i], "encoding_format": "float"})

        first = threading.Thread(target=ask, args=(0,))
        first.start()
        assert busy.wait(60)
        others = [threading.Thread(target=ask, args=(i,)) for i in range(1, len(texts))]
        for t in others:
            t.start()
        wait_until(lambda: batcher.waiting() == len(others))
        merged_before = batcher.stats["merged_calls"]
        release.set()
        for t in [first, *others]:
            t.join(60)
    finally:
        batcher.run = original
        release.set()
    assert batcher.stats["merged_calls"] > merged_before
    for asked, response in zip(texts, results):
        assert response.status_code == 200, response.text
        assert_same_vectors([d["embedding"] for d in response.json()["data"]], embedder.encode_corpus(asked))


# ----------------------------------------------------------------------------- completions


def padded(embedder, rows, num_rows=None):
    return formatting.left_pad(rows, formatting.round_up(max(map(len, rows)), 64), num_rows,
                               embedder.formatter.pad_id)


def decode(embedder, out, rows):
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    return [embedder.tokenizer.decode(tokens[r, :lengths[r]], skip_special_tokens=True) for r in range(rows)]


def test_completions_equal_generate_greedy_and_seeded(client, embedder):
    tok, eos, pad = embedder.tokenizer, embedder.tokenizer.eos_token_id, embedder.formatter.pad_id
    prompts = ["where does kamo rizel live ?", "bane tosul works as"]
    ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    greedy = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0, n=2)
    want = generate(embedder.model, embedder.params, *padded(embedder, ids), jax.random.key(0),
                    Sampling(max_new_tokens=5), eos_id=eos, pad_id=pad, num_samples=2)
    assert [c.text for c in greedy.choices] == decode(embedder, want, 4)  # prompt i, sample j at 2 i + j
    assert [c.index for c in greedy.choices] == [0, 1, 2, 3]
    assert greedy.usage.prompt_tokens == sum(len(i) for i in ids)

    hot = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=5, temperature=0.9, top_p=0.8,
                                    n=3, seed=7)
    want = generate(embedder.model, embedder.params, *padded(embedder, ids[:1]), jax.random.key(7),
                    Sampling(max_new_tokens=5, temperature=0.9, top_p=0.8), eos_id=eos, pad_id=pad, num_samples=3)
    assert [c.text for c in hot.choices] == decode(embedder, want, 3)
    assert len({c.text for c in hot.choices}) > 1  # sampled, not greedy

    first_word = greedy.choices[0].text.split()[1]
    stopped = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=5, temperature=0, stop=[first_word])
    assert stopped.choices[0].text == greedy.choices[0].text[:greedy.choices[0].text.find(first_word)]
    assert stopped.choices[0].finish_reason == "stop"


def test_chat_completions_use_the_chat_template(client, embedder):
    messages = [{"role": "system", "content": "answer as a baker"}, {"role": "user", "content": "where is oslo ?"}]
    tok = embedder.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    want = generate(embedder.model, embedder.params, *padded(embedder, [ids]), jax.random.key(0),
                    Sampling(max_new_tokens=6), eos_id=tok.eos_token_id, pad_id=embedder.formatter.pad_id)
    assert out.choices[0].message.content == decode(embedder, want, 1)[0]
    assert out.choices[0].message.role == "assistant" and out.object == "chat.completion"


# ----------------------------------------------------------------------------- errors and keys

BAD_REQUESTS = [  # (path, body, status, param)
    ("/v1/embeddings", {}, 400, "input"),
    ("/v1/embeddings", {"input": 3}, 400, "input"),
    ("/v1/embeddings", {"input": []}, 400, "input"),
    ("/v1/embeddings", {"input": [1, 2]}, 400, "input"),
    ("/v1/embeddings", {"input": ["a", 3]}, 400, "input"),
    ("/v1/embeddings", {"input": ["a"] * 9}, 400, "input"),  # --max_inputs 8
    ("/v1/embeddings", {"input": "a", "input_type": "passage"}, 400, "input_type"),
    ("/v1/embeddings", {"input": "a", "input_type": "query", "num_thoughts": -1}, 400, "num_thoughts"),
    ("/v1/embeddings", {"input": "a", "num_thoughts": 1}, 400, "num_thoughts"),  # a document
    ("/v1/embeddings", {"input": "a", "seed": "x"}, 400, "seed"),
    ("/v1/embeddings", {"input": "a", "return_thoughts": "yes"}, 400, "return_thoughts"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "bits"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 7}, 400, "dimensions"),
    ("/v1/embeddings", {"input": "a", "model": "gpt-4"}, 404, "model"),
    ("/v1/embeddings", b"{not json", 400, None),
    ("/v1/embeddings", b"[1, 2]", 400, None),
    ("/v1/completions", {"prompt": "a", "stream": True}, 400, "stream"),
    ("/v1/completions", {"prompt": "a", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "a", "temperature": 3}, 400, "temperature"),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "a b", "max_tokens": 255}, 400, "prompt"),  # 2 + 255 > the context of 256
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),  # 0 tokens
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages"),
]


@pytest.mark.parametrize("path, body, status, param", BAD_REQUESTS,
                         ids=[f"{i}-{p.rsplit('/', 1)[-1]}" for i, (p, *_) in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_an_openai_error(served, path, body, status, param):
    response = post(served, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_routes_and_the_client_see_errors_too(served, client):
    unknown = httpx.get(served.url + "/v2/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert httpx.get(served.url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"}).status_code == 405
    with pytest.raises(openai.BadRequestError, match="at most 8 per request"):
        client.embeddings.create(input=["a"] * 9, model=MODEL)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(input="a", model="text-embedding-3-small")


def test_an_api_key_is_required_on_every_route_but_health(served, monkeypatch):
    assert httpx.get(served.url + "/health").json() == {"status": "ok", "model": MODEL}
    for key in (None, "wrong"):
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("POST", "/v1/completions"),
                             ("POST", "/v1/chat/completions")]:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.request(method, served.url + path, json={"input": "a"}, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).models.list()
    listed = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0).models.list()
    assert [m.id for m in listed.data] == [MODEL]
    # The command takes the key from --api_key, else from $O1_JAX_API_KEY.
    monkeypatch.setenv(serve.API_KEY_ENV, "from-env")
    assert serve.settings_from(serve.parse(["--model", "m"])).api_key == "from-env"
    assert serve.settings_from(serve.parse(["--model", "m", "--api_key", "flag"])).api_key == "flag"
    monkeypatch.delenv(serve.API_KEY_ENV)
    assert serve.settings_from(serve.parse(["--model", "m"])).api_key is None


def test_over_length_inputs_are_cut_by_default_or_refused(client, embedder):
    long_doc = " ".join(["kamo rizel lives in oslo ."] * 5)  # 30 tokens > max_doc_tokens 12
    served = client.embeddings.create(input=[long_doc], model=MODEL).data[0].embedding
    assert_same_vectors([served], embedder.encode_corpus([long_doc[:len(long_doc) // 2]]))  # both cut at 12
    app = server_lib.create_app(embedder, server_lib.ServerSettings(model_name=MODEL, over_length="refuse"))
    with server_lib.BackgroundServer(app) as strict:
        response = post(strict, "/v1/embeddings", {"input": ["kamo", long_doc]}, key=None)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and "input[1] has 30 tokens" in error["message"]
        query = post(strict, "/v1/embeddings", {"input": [long_doc], "input_type": "query"}, key=None)
        assert query.status_code == 400 and "at most 12 per query" in query.json()["error"]["message"]
        assert post(strict, "/v1/embeddings", {"input": ["kamo rizel"]}, key=None).status_code == 200


def test_a_failing_model_call_is_a_500_for_that_request_only(served, monkeypatch):
    encode = O1Embedder.encode_corpus

    def fragile(self, docs, *args, **kwargs):
        if "explode" in docs:
            raise RuntimeError("simulated device failure")
        return encode(self, docs, *args, **kwargs)

    monkeypatch.setattr(O1Embedder, "encode_corpus", fragile)
    response = post(served, "/v1/embeddings", {"input": ["a", "explode"]})
    assert response.status_code == 500
    assert "simulated device failure" in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "server_error"
    assert post(served, "/v1/embeddings", {"input": ["a"]}).status_code == 200  # still serving


# ----------------------------------------------------------------------------- the batcher on its own


class Recorder:
    """A fake model call: records (key, items), fails on "boom", can hold the worker in its first call."""

    def __init__(self):
        self.calls, self.hold, self.release = [], threading.Event(), threading.Event()

    def __call__(self, key, items):
        self.calls.append((key, list(items)))
        if items == ["hold"]:
            self.hold.set()
            self.release.wait(60)
        if "boom" in items:
            raise ValueError("boom")
        return [f"{key}:{x}" for x in items]


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_batcher_merges_same_keys_streams_long_jobs_and_isolates_a_failure():
    run = Recorder()
    batcher = server_lib.Batcher(run, max_batch_size=4, window_s=0.0)
    batcher.start()
    try:
        first = batcher.submit(server_lib.Job("a", ["hold"]))
        assert run.hold.wait(60)
        jobs = [server_lib.Job("a", [1, 2]), server_lib.Job("b", [3]), server_lib.Job("a", [4, 5, 6, 7, 8, 9]),
                server_lib.Job("a", [10]), server_lib.Job("a", ["boom"]), server_lib.Job("s", [11, 12], alone=True),
                server_lib.Job("w", ["x", "y"], weight=3), server_lib.Job("h", ["z"], weight=9),
                server_lib.Job("a", [13], prepare=lambda items: [x * 100 for x in items]),
                server_lib.Job("a", [14], prepare=lambda items: 1 / 0)]
        futures = [batcher.submit(j) for j in jobs]
        assert batcher.waiting() == len(jobs)
        run.release.set()
        assert first.result(60) == ["a:hold"]
        done = [f.exception(60) or f.result(60) for f in futures]
    finally:
        batcher.stop()
    assert done[:4] == [["a:1", "a:2"], ["b:3"], [f"a:{i}" for i in range(4, 10)], ["a:10"]]
    assert isinstance(done[4], ValueError)  # only the job with "boom" failed
    assert done[5:9] == [["s:11", "s:12"], ["w:x", "w:y"], ["h:z"], ["a:1300"]]
    assert isinstance(done[9], ZeroDivisionError)
    assert run.calls[1:] == [
        ("a", [1, 2, 4, 5]),  # merged; the long job gave 2 items and went to the back of the queue
        ("b", [3]),
        # The job whose prepare failed is left out; "boom" breaks the merged call, so each part runs alone.
        ("a", [10, "boom", 1300]), ("a", [10]), ("a", ["boom"]), ("a", [1300]),
        ("s", [11, 12]),  # alone, whole
        ("w", ["x"]),  # 3 rows an item: one item per call of 4; the job goes to the back
        ("h", ["z"]),  # 9 rows: over the limit, alone
        ("a", [6, 7, 8, 9]), ("w", ["y"]),  # the long job's turn again, then the rest
    ]
    assert batcher.stats["failed_jobs"] == 2 and batcher.stats["merged_calls"] == 1


def test_stopping_the_batcher_fails_waiting_jobs_with_503():
    run = Recorder()
    batcher = server_lib.Batcher(run, max_batch_size=4, window_s=0.0)
    batcher.start()
    held = batcher.submit(server_lib.Job("a", ["hold"]))
    assert run.hold.wait(60)
    waiting = batcher.submit(server_lib.Job("a", [1]))
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    wait_until(lambda: batcher.stopping)
    run.release.set()
    stopper.join(60)
    assert held.result(60) == ["a:hold"]
    assert isinstance(waiting.exception(60), server_lib.APIError) and waiting.exception().status == 503
    with pytest.raises(server_lib.APIError, match="not running"):
        batcher.submit(server_lib.Job("a", [2]))


# ----------------------------------------------------------------------------- load


def test_eight_clients_times_fifty_requests_lose_nothing(served, embedder):
    want = embedder.encode_corpus(DOCS)
    failures, answered = [], [0] * 8

    def client_loop(c):
        api = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        for r in range(50):
            picks = [(c + r + j) % len(DOCS) for j in range(1 + (c + r) % 3)]
            try:
                out = api.embeddings.create(input=[DOCS[i] for i in picks], model=MODEL)
                got = np.array([d.embedding for d in out.data])
                if got.shape != want[picks].shape or cosines(got, want[picks]).min() < 1 - 1e-6:
                    failures.append((c, r, "wrong vectors"))
                answered[c] += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append((c, r, repr(e)))

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "the load did not finish within 60 s"
    assert failures == [] and answered == [50] * 8


# ----------------------------------------------------------------------------- the command


def test_the_command_line_reports_bad_input_in_one_line(capsys, tiny_folder):
    for argv, message in [(["--model", "m", "--max_batch_size", "0"], "--max_batch_size must be >= 1"),
                          (["--model", "m", "--over_length", "cut"], "invalid choice: 'cut'"),
                          (["--port", "1"], "the following arguments are required: --model")]:
        with pytest.raises(SystemExit) as e:
            serve.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert serve.main(["--model", "/no/such/folder", "--port", "0"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve.main(["--model", tiny_folder, "--port", str(taken.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_the_command_serves_a_model_folder(tiny_folder, embedder):
    with socket.socket() as s:  # a free port, released for the command
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen([sys.executable, "-m", "o1_jax.serve", "--model", tiny_folder, "--port", str(port),
                             "--max_batch_size", "4", "--served_model_name", MODEL, "--api_key", KEY],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the server did not come up within 300 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
        out = api.embeddings.create(input=DOCS[:2], model=MODEL)
        assert_same_vectors([d.embedding for d in out.data], embedder.encode_corpus(DOCS[:2]))
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
