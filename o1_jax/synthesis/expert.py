"""The expert: an instruct LLM that proposes candidate thoughts for each query.

    expert = LlamaExpert.load("shipped:smollm2-135m-instruct", FewShotPool(records))
    thoughts = expert.propose(records, n=3, rng_seed=0)   # thoughts[i][j]: candidate j of records[i]

Alignment is by construction (the original attached thoughts to the wrong queries whenever there
were more queries than one batch): `plan` lists the prompts with the (record index, first
candidate index) each serves, sorts them by length so batches pad little and cuts fixed-size
batches; `propose` writes every generated text back through its prompt's own pair. Subclasses only
turn a batch of prompts into texts, so the tests' fake expert runs exactly the same bookkeeping.

Prompt (the original's, in the model's chat template): a system message (answer, don't ask for
clarification, don't repeat the query), then a task line, `num_examples` examples
`Query: ...\nResponse: <a positive passage>` and `Query: {q}\nResponse:`. Examples come from
*other* records, seeded by (seed, record id, candidate index), so a resumed run builds the same
prompts; a record's own positives never appear in its prompt, not even as another record's
positive (two SciFact claims can share an abstract).

Two layouts: `fresh_examples=True` gives each candidate its own prompt and examples (the
original's n rounds); `False` (default) gives the n candidates of a record one prompt, which
`LlamaExpert` prefills once and samples n times from the same KV cache (`generate_samples`):
prefill dominates on a CPU, so this is about n times less prompt work.

`OpenAIExpert` (openai_expert.py) sends the same messages to an OpenAI-compatible server instead
(python -m o1_jax.serve, vLLM); at temperature 0 o1_jax.serve gives this module's `LlamaExpert` texts.
"""

from __future__ import annotations

import abc
import dataclasses
import zlib
from typing import Callable, Sequence

import jax
import numpy as np
import transformers

from o1_jax import hf, model_specs
from o1_jax.data.formatting import left_pad, round_up
from o1_jax.data.records import doc_text
from o1_jax.inference.generate import Sampling, generate

SYSTEM_PROMPT = ("You are a helpful assistant. Answer the task directly: do not ask for clarification "
                 "and do not repeat the query.")
TASK_LINE = "Think about a plausible response to address the query."


def _truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return text.strip() if max_words <= 0 or len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def stable_hash(text: str) -> int:
    """A hash of `text` that is the same in every process (Python's `hash` is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


class FewShotPool:
    """Few-shot examples (query -> one of its positive passages) drawn from other records.

    `examples(record, candidate)` is deterministic in (seed, record id, candidate): the same on a
    resumed run. An example is never the record itself and never one of the record's own positive
    passages (compared as `title + " " + text`), whichever record it comes from.
    """

    def __init__(self, records: Sequence[dict], num_examples: int = 3, seed: int = 0, max_words: int = 64):
        if num_examples < 0:
            raise ValueError(f"num_examples={num_examples}: expected >= 0")
        self.num_examples, self.seed, self.max_words = int(num_examples), int(seed), int(max_words)
        self.queries = [r["query"].strip() for r in records]
        self.ids = [str(r["id"]) for r in records]
        self.positives = [[doc_text(d) for d in r["pos"]] for r in records]

    def examples(self, record: dict, candidate: int) -> list[tuple[str, str]]:
        """[(query, passage)] for one candidate prompt of `record`."""
        k, n = self.num_examples, len(self.queries)
        if k == 0 or n == 0:
            return []
        rid = str(record["id"])
        own = {doc_text(d) for d in record["pos"]}
        rng = np.random.default_rng([self.seed, stable_hash(rid), candidate])
        chosen: list[tuple[str, str]] = []
        taken: set[int] = set()

        def take(i: int) -> None:
            if i in taken or self.ids[i] == rid:
                return
            allowed = [p for p in self.positives[i] if p not in own]
            taken.add(i)
            if allowed:
                passage = allowed[int(rng.integers(len(allowed)))]
                chosen.append((self.queries[i], _truncate_words(passage, self.max_words)))

        # Rejection sampling is O(k) for a large pool; a seeded full scan finishes small ones.
        for _ in range(20 * k):
            if len(chosen) == k:
                return chosen
            take(int(rng.integers(n)))
        for i in rng.permutation(n):
            if len(chosen) == k:
                break
            take(int(i))
        return chosen


def build_messages(query: str, examples: Sequence[tuple[str, str]]) -> list[dict]:
    """Chat messages: system instruction, then the task line, the examples and the query."""
    shots = "".join(f"Query: {q}\nResponse: {p}\n\n" for q, p in examples)
    user = f"{TASK_LINE}\n\n{shots}Query: {query.strip()}\nResponse:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Prompts and batches for one `propose` call.

    Prompt u serves record `units[u][0]`, candidates `units[u][1] .. units[u][1] + samples - 1`;
    `batches` lists prompt numbers, prompts sorted by length so a batch pads little.
    """

    units: list[tuple[int, int]]
    samples: int
    prompts: list
    batches: list[list[int]]


class ExpertError(OSError):
    """The expert's server failed or refused for good (after its retries): the run stops with one line and
    resumes on rerun. An OSError, like any other refusal from outside the program (o1_jax.cli)."""


class Expert(abc.ABC):
    """Proposes n candidate thoughts per record; subclasses implement `generate_batch`.

    fresh_examples=True: one prompt per candidate, each with its own few-shot examples (the
    original's n rounds). False: one prompt per record, sampled n times (a real model prefills it
    once). A batch holds about `batch_size` generated rows: `batch_size // samples` prompts
    (at least one); the last batch is not padded here (a subclass pads if it needs fixed shapes).
    """

    def __init__(self, examples: FewShotPool, batch_size: int = 16, fresh_examples: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        self.examples, self.batch_size, self.fresh_examples = examples, int(batch_size), bool(fresh_examples)

    def prompt(self, record: dict, candidate: int) -> list[dict]:
        return build_messages(record["query"], self.examples.examples(record, candidate))

    def encode(self, messages: list[dict]):
        """A prompt as the subclass wants it in `generate_batch` (token ids for a real model)."""
        return messages

    def length(self, encoded) -> int:
        """Sort key for batching: prompts of similar length share a batch and pad little."""
        return sum(len(m["content"]) for m in encoded)

    def prompts_per_batch(self, samples: int) -> int:
        return max(1, self.batch_size // samples)

    def close(self) -> None:
        """Releases what the expert holds outside the process (OpenAIExpert: its HTTP connections)."""

    @abc.abstractmethod
    def generate_batch(self, prompts: list, samples: int, rng_seed: int, batch_index: int) -> list[list[str]]:
        """`samples` texts per (encoded) prompt, in order."""

    def plan(self, records: Sequence[dict], n: int) -> Plan:
        if n < 1:
            raise ValueError(f"n={n}: expected at least one candidate per record")
        samples = 1 if self.fresh_examples else n
        units = [(i, j) for i in range(len(records)) for j in range(0, n, samples)]
        prompts = [self.encode(self.prompt(records[i], j)) for i, j in units]
        lengths = [self.length(p) for p in prompts]
        order = sorted(range(len(units)), key=lambda u: (lengths[u], u))
        k = self.prompts_per_batch(samples)
        return Plan(units, samples, prompts, [order[s:s + k] for s in range(0, len(order), k)])

    def propose(self, records: Sequence[dict], n: int, rng_seed: int,
                on_batch: Callable[[int], None] | None = None) -> list[list[str]]:
        """`n` candidate thoughts per record: `out[i][j]` is candidate j of `records[i]`.

        `on_batch(k)` is called after each generated batch with its k thoughts (for progress)."""
        plan = self.plan(records, n)
        out: list[list[str | None]] = [[None] * n for _ in records]
        for b, batch in enumerate(plan.batches):
            texts = self.generate_batch([plan.prompts[u] for u in batch], plan.samples, rng_seed, b)
            if len(texts) != len(batch) or any(len(group) != plan.samples for group in texts):
                raise RuntimeError(f"{type(self).__name__}.generate_batch returned {[len(g) for g in texts]} "
                                   f"texts for {len(batch)} prompts x {plan.samples} samples")
            for u, group in zip(batch, texts):
                i, first = plan.units[u]
                for s, text in enumerate(group):
                    out[i][first + s] = text
            if on_batch is not None:
                on_batch(len(batch) * plan.samples)
        assert all(t is not None for cands in out for t in cands)
        return out  # type: ignore[return-value]


@dataclasses.dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    bucket: int = 64  # prompt lengths are padded to a multiple of this: few compiled shapes


def generate_samples(model, params, prompt_ids, prompt_mask, rng, sampling, samples: int, *, eos_id: int,
                     pad_id: int) -> dict:
    """`samples` continuations of each left-padded prompt row from one prefill: `tokens [U * samples, N]`
    (row u * samples + s), `lengths [U * samples]` (tokens before `<eos>`)."""
    return generate(model, params, prompt_ids, prompt_mask, rng, sampling, eos_id=eos_id, pad_id=pad_id,
                    num_samples=int(samples))


class LlamaExpert(Expert):
    """A local Llama-family instruct checkpoint run through o1_jax's compiled KV-cache generation.

    Prompts go through the tokenizer's chat template; every batch has the same number of prompt
    rows (empty rows pad the last one) and a prompt width rounded up to `bucket`, so one compile
    per bucket serves the whole run. Batch b samples with `fold_in(key(rng_seed), b)`. With shared
    prompts (fresh_examples=False) each prompt is prefilled once and sampled n times.
    """

    def __init__(self, model, params, tokenizer, examples: FewShotPool, batch_size: int = 16,
                 settings: GenerationSettings | None = None, fresh_examples: bool = False):
        super().__init__(examples, batch_size, fresh_examples)
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.settings = settings or GenerationSettings()
        s = self.settings
        self.sampling = Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
        if tokenizer.eos_token_id is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the expert's tokenizer needs an eos token and a chat template (an instruct model)")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)

    @classmethod
    def load(cls, model: str, examples: FewShotPool, batch_size: int = 16, dtype: str = "float32",
             settings: GenerationSettings | None = None, fresh_examples: bool = False) -> "LlamaExpert":
        path = model_specs.resolve_hf_folder(model, "config.expert.model")
        jax_model, params = hf.load_pretrained(path, dtype=dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        return cls(jax_model, params, tokenizer, examples, batch_size, settings, fresh_examples)

    def prompt_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, messages: list[dict]) -> list[int]:
        # The template already holds the control tokens: no extra BOS.
        return self.tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"]

    def length(self, encoded: list[int]) -> int:
        return len(encoded)

    def collate(self, rows: list[list[int]], num_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded `[num_rows, T]` ids and mask, T a multiple of `bucket`; empty rows pad the batch."""
        num_rows = num_rows or len(rows)
        longest = max(len(r) for r in rows)
        limit = self.model.cfg.max_position_embeddings - self.settings.max_new_tokens
        if longest > limit:
            raise ValueError(f"a prompt has {longest} tokens; with max_new_tokens={self.settings.max_new_tokens} "
                             f"the model allows at most {limit} (lower expert.example_max_words or expert.num_examples)")
        return left_pad(rows, round_up(longest, self.settings.bucket), num_rows, self.pad_id)

    def generate_batch(self, prompts: list[list[int]], samples: int, rng_seed: int,
                       batch_index: int) -> list[list[str]]:
        ids, mask = self.collate(prompts, self.prompts_per_batch(samples))
        rng = jax.random.fold_in(jax.random.key(rng_seed), batch_index)
        out = generate_samples(self.model, self.params, ids, mask, rng, self.sampling, samples,
                               eos_id=self.eos_id, pad_id=self.pad_id)
        tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
        return [[self.tokenizer.decode(tokens[k * samples + s, :lengths[k * samples + s]],
                                       skip_special_tokens=True).strip() for s in range(samples)]
                for k in range(len(prompts))]
