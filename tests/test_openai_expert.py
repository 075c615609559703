"""Synthesis with an HTTP expert: `OpenAIExpert` against o1_jax.serve (the local expert's candidates,
through a server restart) and against scripted fake servers (retries, a run that stops and resumes)."""

import importlib.util
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import pytest

from o1_jax.inference import server as server_lib
from o1_jax.inference.embedder import O1Embedder
from o1_jax.synthesis import committee, expert, pipeline
from o1_jax.synthesis.openai_expert import OpenAIExpert, prompt_seed
from tests.test_serve import MODEL, load_tiny, make_tiny_folder, wait_until
from tests.test_synthesis import ROOT, make_records, read_lines, write_jsonl

GREEDY = expert.GenerationSettings(max_new_tokens=6, temperature=0.0, bucket=64)


# ----------------------------------------------------------------------------- a scripted fake server


class FakeChat:
    """/v1/chat/completions on a thread: `script(number, body)` gives each request's status (200 answers
    with n texts naming the prompt's `tokNN`); `bodies` are the requests in arrival order."""

    def __init__(self, script=lambda number, body: 200):
        self.script, self.bodies, self.lock = script, [], threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    number = len(fake.bodies)
                    fake.bodies.append(body)
                status = fake.script(number, body)
                if status == 200:
                    tok = re.findall(r"tok\d\d", body["messages"][-1]["content"])[-1]
                    time.sleep(0.001 * (int(tok[3:]) % 4))  # answers arrive out of order
                    payload = {"object": "chat.completion", "choices": [
                        {"index": s, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f" {tok} is described by thought {s} "}}
                        for s in reversed(range(body["n"]))]}
                else:
                    payload = {"error": {"message": f"scripted {status}", "type": "x", "param": None, "code": None}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def http_expert(records, url, **kwargs) -> OpenAIExpert:
    pool = expert.FewShotPool(records, num_examples=1, seed=0, max_words=6)
    options = dict(base_url=url, model=MODEL, settings=GREEDY, batch_size=4, max_concurrency=3, max_retries=2,
                   backoff=0.0)
    return OpenAIExpert(pool, **{**options, **kwargs})


# ----------------------------------------------------------------------------- retries


def test_a_429_is_retried_and_a_lasting_500_or_a_401_stops_with_an_error():
    records = make_records(2)
    with FakeChat(lambda number, body: 429 if number == 0 else 200) as fake:
        ex = http_expert(records, fake.url, max_concurrency=1)
        thoughts = ex.propose(records, 2, rng_seed=0)
        assert [len(fake.bodies), ex.retries] == [3, 1]  # two prompts, the first one twice
        assert thoughts == [["tok00 is described by thought 0", "tok00 is described by thought 1"],
                            ["tok01 is described by thought 0", "tok01 is described by thought 1"]]
    with FakeChat(lambda number, body: 500) as fake:
        ex = http_expert(records, fake.url, max_concurrency=1, max_retries=3)
        with pytest.raises(expert.ExpertError, match=r"failed 4 times in a row .*last: HTTP 500: scripted 500"):
            ex.propose(records[:1], 2, rng_seed=0)
        assert len(fake.bodies) == 4 and ex.retries == 3
    with FakeChat(lambda number, body: 401) as fake:
        ex = http_expert(records, fake.url, max_concurrency=1, api_key_hint="the key in $K")
        with pytest.raises(expert.ExpertError, match=r"refused a request \(check the key in \$K\): HTTP 401"):
            ex.propose(records[:1], 2, rng_seed=0)
        assert len(fake.bodies) == 1  # a refusal is not retried
    with socket.socket() as s:  # nothing listens here: connection errors are retried too
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = http_expert(records, f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(expert.ExpertError, match="failed 2 times in a row .*ConnectError"):
        ex.propose(records[:1], 2, rng_seed=0)


def test_a_failing_server_stops_the_run_unwritten_and_a_rerun_resumes_aligned(tmp_path):
    raw = make_records(10)
    inputs = pipeline.read_inputs(write_jsonl(tmp_path / "in.jsonl", raw))
    records = [r for _, r in inputs]
    out = tmp_path / "out.jsonl"
    kw = dict(output=out, num_candidates=2, seed=0, chunk_size=4, progress=False)
    healthy = threading.Event()
    # The first chunk's 4 prompts are answered; then 500 until the server "recovers".
    with FakeChat(lambda number, body: 200 if number < 4 or healthy.is_set() else 500) as fake:
        with pytest.raises(expert.ExpertError, match=r"records q04 \.\. q07 were not written \(4 records are, "
                                                     r"6 are left\): rerun the same command to resume"):
            pipeline.synthesize(inputs, http_expert(records, fake.url), [committee.BM25Member()], **kw)
        assert [o["id"] for o in read_lines(out)] == ["q00", "q01", "q02", "q03"]
        summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
        assert summary["records"] == 4 and summary["incomplete"]["records_left"] == 6
        failed = [b for b in fake.bodies[4:]]

        healthy.set()
        pipeline.synthesize(inputs, http_expert(records, fake.url), [committee.BM25Member()], **kw)
        lines = read_lines(out)
        assert [o["id"] for o in lines] == [r["id"] for r in raw]  # none lost, none twice, in input order
        for o in lines:  # every candidate came back to its own record, whatever the arrival order
            tok = "tok" + o["id"][1:]
            assert o["all_thought"] == [f"{tok} is described by thought {s}" for s in range(2)]
        # The same request bodies (and seeds) after the resume as before the failure.
        resumed = {json.dumps(b, sort_keys=True) for b in fake.bodies[len(failed) + 4:]}
        assert {json.dumps(b, sort_keys=True) for b in failed} <= resumed
    body = fake.bodies[0]
    assert {k: body[k] for k in ("model", "n", "max_tokens", "temperature", "top_p")} == {
        "model": MODEL, "n": 2, "max_tokens": 6, "temperature": 0.0, "top_p": 0.9}
    first_chunk = pipeline.chunk_seed(0, ["q00", "q01", "q02", "q03"])
    assert all(b["seed"] == prompt_seed(first_chunk, b["messages"]) for b in fake.bodies[:4])
    assert len({b["seed"] for b in fake.bodies[:4]}) == 4  # one seed per prompt


def test_the_config_selects_the_http_expert(monkeypatch):
    spec = importlib.util.spec_from_file_location("synth_scifact", ROOT / "configs/synth_scifact.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().expert.kind == "local"
    c = module.get_config("served")
    c.input, c.output = "in.jsonl", "out.jsonl"
    pipeline.check_config(c)
    monkeypatch.setenv("O1_JAX_API_KEY", "secret")
    built = pipeline.build_expert(c, make_records(3))
    assert isinstance(built, OpenAIExpert) and built.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert built.client.headers["authorization"] == "Bearer secret" and built.model == c.expert.model
    built.close()
    for key, value, message in [("kind", "remote", "config.expert.kind='remote'"),
                                ("base_url", "localhost:8000/v1", "config.expert.base_url='localhost:8000/v1'"),
                                ("max_concurrency", 0, "config.expert.max_concurrency"),
                                ("timeout", 0.0, "config.expert.timeout")]:
        bad = c.copy_and_resolve_references()
        bad.expert[key] = value
        with pytest.raises(ValueError, match=re.escape(message)):
            pipeline.check_config(bad)


# ----------------------------------------------------------------------------- against o1_jax.serve


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return load_tiny(make_tiny_folder(tmp_path_factory.mktemp("expert") / "tiny"))


def test_served_greedy_synthesis_equals_the_local_expert_through_a_server_restart(tmp_path, embedder):
    raw = make_records(12)
    inputs = pipeline.read_inputs(write_jsonl(tmp_path / "in.jsonl", raw))
    records = [r for _, r in inputs]
    members = [committee.BM25Member()]
    kw = dict(num_candidates=2, seed=0, chunk_size=6, progress=False)
    pool = expert.FewShotPool(records, num_examples=1, seed=0, max_words=6)
    local = expert.LlamaExpert(embedder.model, embedder.params, embedder.tokenizer, pool, batch_size=4,
                               settings=GREEDY)
    pipeline.synthesize(inputs, local, members, output=tmp_path / "local.jsonl", **kw)

    settings = server_lib.ServerSettings(model_name=MODEL, prompt_bucket=GREEDY.bucket)
    first = server_lib.BackgroundServer(server_lib.create_app(embedder, settings)).start()
    batcher = first.app.state.batcher
    original, calls, held, release = batcher.run, [], threading.Event(), threading.Event()

    def hold_the_second_call(key, items):  # the server is stopped while this call runs
        calls.append(len(items))
        if len(calls) == 2:
            held.set()
            release.wait(120)
        return original(key, items)

    batcher.run = hold_the_second_call
    remote = http_expert(records, first.url + "/v1", max_concurrency=2, max_retries=12, backoff=0.02)
    failure = []

    def synthesize():
        try:
            pipeline.synthesize(inputs, remote, members, output=tmp_path / "served.jsonl", **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failure.append(e)

    run = threading.Thread(target=synthesize)
    run.start()
    second = None
    try:
        assert held.wait(120)
        stopper = threading.Thread(target=first.stop)
        stopper.start()
        wait_until(lambda: refuses_connections(first.port))  # it stopped listening; in-flight work goes on
        release.set()
        stopper.join(120)
        wait_until(lambda: remote.retries >= 1 or not run.is_alive())  # the run met the closed port ...
        second = server_lib.BackgroundServer(server_lib.create_app(embedder, settings), port=first.port).start()
        run.join(120)  # ... and its retries carry it through to the new server
    finally:
        release.set()
        if second is not None:
            second.stop()
    assert not run.is_alive() and failure == [] and remote.retries >= 1
    served, local_lines = read_lines(tmp_path / "served.jsonl"), read_lines(tmp_path / "local.jsonl")
    assert [o["id"] for o in served] == [r["id"] for r in raw]
    assert [o["all_thought"] for o in served] == [o["all_thought"] for o in local_lines]
    assert sum(bool(t) for o in served for t in o["all_thought"]) > 12  # real texts were compared


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


@pytest.mark.slow
def test_served_smollm2_gives_the_local_smollm2_experts_greedy_candidates(tmp_path, smollm2_path):
    """The served model has the O1 tokens added (as O1Embedder loads a plain LLM); the local expert has not."""
    records = make_records(4)
    pool = expert.FewShotPool(records, num_examples=1, seed=0, max_words=12)
    settings = expert.GenerationSettings(max_new_tokens=8, temperature=0.0, bucket=64)
    local = expert.LlamaExpert.load(str(smollm2_path), pool, batch_size=4, settings=settings)
    want = local.propose(records, 2, rng_seed=0)
    served_model = O1Embedder.from_pretrained(smollm2_path, batch_size=4, devices=jax.devices()[:1])
    app = server_lib.create_app(served_model, server_lib.ServerSettings(model_name="smollm2"))
    with server_lib.BackgroundServer(app) as running:
        remote = OpenAIExpert(pool, base_url=running.url + "/v1", model="smollm2", settings=settings, batch_size=4)
        assert remote.propose(records, 2, rng_seed=0) == want
    assert all(t for cands in want for t in cands)
