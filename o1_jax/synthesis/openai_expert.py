"""`OpenAIExpert`: the synthesis expert behind an OpenAI-compatible server (`python -m o1_jax.serve`, vLLM, ...).

    expert = OpenAIExpert(pool, base_url="http://127.0.0.1:8000/v1", model="shipped:smollm2-135m-instruct",
                          settings=GenerationSettings(max_new_tokens=128, temperature=0.7, top_p=0.9))

Each prompt of a batch is one `POST {base_url}/chat/completions` with `Expert.prompt`'s messages,
`n` = the prompt's samples, the run's temperature, top_p and max_tokens, and a seed drawn from
(the chunk's rng_seed, the prompt's messages): a rerun asks for the same samples whatever the
batching. Up to `max_concurrency` requests are in flight; every answer goes back to its own prompt
by position, never by arrival order, so the pipeline's alignment holds.

Failures. A connection error, a timeout, 408, 429 or a 5xx is retried `max_retries` times, waiting
`backoff` seconds and doubling (at most 60 s; a Retry-After header is honoured). What still fails,
and any other refusal (4xx: a bad key, an unknown model, a prompt too long), raises `ExpertError`:
the run stops with one line naming the record, and nothing of the chunk in progress is written, so a
rerun of the same command resumes there (o1_jax/synthesis/pipeline.py). A record is never written
without the thoughts its requests failed to bring: an outage must not turn the rest of a corpus
into records without thoughts.

At temperature 0, o1_jax.serve gives `LlamaExpert`'s candidates: it applies the same chat template,
left-pads to the same bucket and generates with the same compiled code (greedy ignores the seed).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import httpx
import numpy as np

from o1_jax.synthesis.expert import Expert, ExpertError, FewShotPool, GenerationSettings, stable_hash

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0


def prompt_seed(rng_seed: int, messages: list[dict]) -> int:
    """A 31-bit seed from the chunk's seed and the prompt's text: the same on every run and batching."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return int(np.random.SeedSequence([rng_seed, stable_hash(text)]).generate_state(1)[0] >> 1)


def _error_text(response: httpx.Response) -> str:
    """The server's own message (OpenAI's error.message), else the start of the body."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"HTTP {response.status_code}: {' '.join(str(message).split())}"


class OpenAIExpert(Expert):
    """An `Expert` whose `generate_batch` asks a server's /chat/completions (see the module docstring).

    `retries` counts the retried requests of this expert's life (for logs and tests).
    """

    def __init__(self, examples: FewShotPool, *, base_url: str, model: str, settings: GenerationSettings | None = None,
                 batch_size: int = 16, fresh_examples: bool = False, api_key: str | None = None,
                 max_concurrency: int = 8, timeout: float = 600.0, max_retries: int = 8, backoff: float = 1.0,
                 api_key_hint: str = "the API key"):
        super().__init__(examples, batch_size, fresh_examples)
        if max_concurrency < 1 or max_retries < 0 or not timeout > 0 or not backoff >= 0:
            raise ValueError(f"max_concurrency={max_concurrency}, max_retries={max_retries}, timeout={timeout}, "
                             f"backoff={backoff}: expected >= 1, >= 0, > 0 and >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.settings = model, settings or GenerationSettings()
        self.max_concurrency, self.max_retries, self.backoff = int(max_concurrency), int(max_retries), float(backoff)
        self.api_key_hint = api_key_hint
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout,
                                   limits=httpx.Limits(max_connections=self.max_concurrency))
        self.retries = 0
        self._lock = threading.Lock()

    def request_body(self, messages: list[dict], samples: int, seed: int) -> dict:
        s = self.settings
        return {"model": self.model, "messages": messages, "n": samples, "max_tokens": s.max_new_tokens,
                "temperature": s.temperature, "top_p": s.top_p, "seed": seed}

    def generate_batch(self, prompts: list[list[dict]], samples: int, rng_seed: int,
                       batch_index: int) -> list[list[str]]:
        del batch_index  # seeds come from the prompts, so batching does not change the samples
        bodies = [self.request_body(m, samples, prompt_seed(rng_seed, m)) for m in prompts]
        pool = concurrent.futures.ThreadPoolExecutor(min(self.max_concurrency, len(bodies)),
                                                     thread_name_prefix="expert-http")
        try:
            futures = [pool.submit(self.complete, body) for body in bodies]
            return [f.result() for f in futures]  # in prompt order; the first failure stops the batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def complete(self, body: dict) -> list[str]:
        """The `n` texts of one chat request (stripped), retrying what may pass on a second try."""
        failure = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
            wait = min(self.backoff * 2 ** attempt, MAX_BACKOFF_S)
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out: the server may come back
                failure = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return self._texts(response, body["n"])
                failure = _error_text(response)
                if response.status_code not in RETRY_STATUSES:
                    hint = f" (check {self.api_key_hint})" if response.status_code in (401, 403) else ""
                    raise ExpertError(f"{self.url} refused a request{hint}: {failure}")
                wait = max(wait, _retry_after(response))
            if attempt < self.max_retries:
                time.sleep(min(wait, MAX_BACKOFF_S))
        raise ExpertError(f"{self.url} failed {self.max_retries + 1} times in a row (max_retries={self.max_retries}); "
                          f"last: {failure}")

    def _texts(self, response: httpx.Response, n: int) -> list[str]:
        try:
            choices = sorted(response.json()["choices"], key=lambda c: c["index"])
            texts = [(c["message"]["content"] or "").strip() for c in choices]
        except (ValueError, KeyError, TypeError) as e:
            raise ExpertError(f"{self.url} answered 200 without OpenAI chat choices "
                              f"({type(e).__name__}: {e})") from None
        if len(texts) != n:
            raise ExpertError(f"{self.url} answered {len(texts)} choices for n={n}")
        return texts

    def close(self) -> None:
        self.client.close()


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("retry-after", 0)), 0.0)
    except ValueError:  # an HTTP date: not worth parsing, the backoff stands
        return 0.0
