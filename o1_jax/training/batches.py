"""The training data: its local array_record cache, and deterministic, resumable batches.

The global batch of step s is a pure function of (seed, s): `storage.BatchOrder` says which
records, `storage.example_rng` how each is sampled (which negatives, whether it keeps its
thought), so a resumed run sees exactly the batches it would have seen. The cache is memory-mapped,
so it is always on this machine's disk, even when the workdir is a URL.
"""

from __future__ import annotations

import dataclasses
import pathlib
import queue
import threading
from typing import Iterator

import jax
import numpy as np
from etils import epath

from o1_jax.data import formatting, storage
from o1_jax.data.synthetic import write_demo_data
from o1_jax.files import is_remote, local_cache_for


@dataclasses.dataclass
class Batches:
    source: storage.RecordSource
    order: storage.BatchOrder
    formatter: formatting.Formatter
    group_size: int
    thought_dropout: float
    seed: int

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        local = self.order.indices(step)
        first = self.order.process_index * self.order.local_batch_size
        records = [self.source[int(i)] for i in local]
        examples = [
            formatting.build_example(
                r, storage.example_rng(self.seed, step, first + j), self.group_size, self.thought_dropout)
            for j, r in enumerate(records)
        ]
        return self.formatter.collate_train(examples)

    def iterate(self, start: int, stop: int, prefetch: int = 2) -> Iterator[tuple[int, dict]]:
        """Batches for steps [start, stop), prepared by a background thread."""
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        done = threading.Event()

        def produce():
            try:
                for s in range(start, stop):
                    if done.is_set():
                        return
                    q.put((s, self.local_batch(s)))
            except BaseException as e:  # surfaced in the consumer
                q.put((None, e))

        threading.Thread(target=produce, daemon=True).start()
        try:
            for _ in range(start, stop):
                s, batch = q.get()
                if s is None:
                    raise batch
                yield s, batch
        finally:
            done.set()


def data_cache_dir(config, workdir: epath.Path) -> pathlib.Path:
    """The local folder for the array_record cache (memory-mapped, so never a URL)."""
    if config.data.cache_dir:
        if is_remote(config.data.cache_dir):
            raise ValueError(f"config.data.cache_dir={config.data.cache_dir!r}: expected a local folder "
                             "(the array_record cache is read by memory-mapped random access)")
        return pathlib.Path(config.data.cache_dir).expanduser()
    if not is_remote(workdir):
        return pathlib.Path(workdir) / "data_cache"
    cache = local_cache_for(workdir, "data")
    if jax.process_index() == 0:
        print(f"data cache: {cache} (local, as the workdir {workdir} is remote; set config.data.cache_dir "
              "to choose another folder)", flush=True)
    return cache


def prepare_data(config, workdir: epath.Path) -> tuple[storage.RecordSource, pathlib.Path]:
    """(the records, the JSONL file they come from): `data.train`, or the synthetic demo task's."""
    d = config.data
    cache = data_cache_dir(config, workdir) / f"process{jax.process_index()}"
    if d.synthetic:
        demo = write_demo_data(cache / "demo", seed=config.seed, num_train=d.synthetic_train,
                               num_test=d.synthetic_test)
        path = demo / "train.jsonl"
    elif d.train:
        path = pathlib.Path(d.train).expanduser()
    else:
        raise ValueError("config.data.train is empty and config.data.synthetic is False: expected a JSONL file")
    return storage.ensure_dataset(path, cache / "records", num_shards=d.num_shards), path


def make_batches(config, source: storage.RecordSource, tokenizer) -> Batches:
    d = config.data
    order = storage.BatchOrder(len(source), config.train.global_batch_size, seed=config.seed,
                               process_index=jax.process_index(), process_count=jax.process_count())
    formatter = formatting.Formatter(tokenizer, d.max_query_tokens, d.max_thought_tokens, d.max_doc_tokens)
    return Batches(source, order, formatter, d.group_size, d.thought_dropout, config.seed)


def check_batch(config, mesh) -> None:
    """The global batch is split over data x fsdp, and into micro-batches or GradCache chunks: all must divide it."""
    b, shards = config.train.global_batch_size, mesh.shape["data"] * mesh.shape["fsdp"]
    k, c = config.train.microbatches, config.train.get("grad_cache_chunks", 1)
    if k > 1 and c > 1:
        raise ValueError(f"config.train.microbatches={k} and config.train.grad_cache_chunks={c}: use one of them "
                         "(GradCache bounds memory and keeps every document a negative for every query)")
    for key, n, part in (("microbatches", k, "micro-batch"), ("grad_cache_chunks", c, "chunk")):
        if n < 1 or b % n:
            raise ValueError(f"config.train.{key}={n} must be >= 1 and divide train.global_batch_size={b}")
        if (b // n) % shards:
            raise ValueError(f"config.train.global_batch_size={b} (per {part} {b // n}) must be divisible by the "
                             f"mesh's data x fsdp = {shards} devices")
