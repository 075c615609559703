"""The training data: its local array_record cache, and deterministic, resumable batches.

The global batch of step s is a pure function of (seed, s): `storage.BatchOrder` (one file) or
`mixture.MixtureOrder` (a list of sources) says which records, `storage.example_rng` how each is sampled (which negatives, whether it keeps its
thought), so a resumed run sees exactly the batches it would have seen. The cache is memory-mapped,
so it is always on this machine's disk, even when the workdir is a URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import queue
import threading
from typing import Iterator

import jax
import numpy as np
from etils import epath

from o1_jax.data import formatting, mixture, storage
from o1_jax.data.synthetic import write_demo_data
from o1_jax.files import is_remote, local_cache_for


@dataclasses.dataclass
class Batches:
    """The batches of a run: its record sources and the order it reads them in.

    One `data.train` file keeps `storage.BatchOrder` (the order runs have always had); a list of
    sources reads through `mixture.MixtureOrder`, each row built with its own source's settings.
    """

    records: list[storage.RecordSource]  # one per source
    sources: list[mixture.Source]
    order: storage.BatchOrder | mixture.MixtureOrder
    formatter: formatting.Formatter
    seed: int

    @property
    def multi(self) -> bool:
        return isinstance(self.order, mixture.MixtureOrder)

    @property
    def own_group_flags(self) -> bool:
        """Whether batches carry `own_group_only` (some source trains without in-batch negatives)."""
        return not all(s.in_batch_negatives for s in self.sources)

    def rows(self, step: int) -> list[tuple[int, int]]:
        """(source, record) of each row of this process's slice of step `step`."""
        if self.multi:
            return self.order.rows(step)
        return [(0, int(i)) for i in self.order.indices(step)]

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        first = self.order.process_index * self.order.local_batch_size
        examples, own_group = [], []
        for j, (k, i) in enumerate(self.rows(step)):
            src = self.sources[k]
            example = formatting.build_example(self.records[k][i], storage.example_rng(self.seed, step, first + j),
                                               src.group_size, src.thought_dropout)
            example["query"] = src.instruction + example["query"]
            examples.append(example)
            own_group.append(not src.in_batch_negatives)
        batch = self.formatter.collate_train(examples)
        if self.own_group_flags:
            batch["own_group_only"] = np.asarray(own_group, np.int32)  # [L]
        return batch

    def queries_seen(self, step: int) -> dict[str, int]:
        """Queries each source has given the global batches of steps [0, step) (logged; {} for one file)."""
        return self.order.queries_seen(step) if self.multi else {}

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


@dataclasses.dataclass
class PreparedData:
    """The run's records, one `RecordSource` per source, and what identifies them."""

    records: list[storage.RecordSource]
    sources: list[mixture.Source]
    path: pathlib.Path  # the (first) JSONL file: the synthetic task's sits beside its BEIR split
    fingerprint: str  # sha256 a checkpoint records, so a resume on other data is refused
    single: bool  # one file (or the demo task): read in `storage.BatchOrder`'s order


def prepare_data(config, workdir: epath.Path) -> PreparedData:
    """The records of `data.train` (one file or a list of sources), or of the synthetic demo task."""
    d = config.data
    cache = data_cache_dir(config, workdir) / f"process{jax.process_index()}"
    if d.synthetic:
        demo = write_demo_data(cache / "demo", seed=config.seed, num_train=d.synthetic_train,
                               num_test=d.synthetic_test)
        path = demo / "train.jsonl"
        sources = [mixture.Source("demo", str(path), mixture.PROPORTIONAL, d.group_size, d.thought_dropout, True,
                                  d.query_instruction)]
    elif d.train:
        sources = mixture.parse_sources(d)
    else:
        raise ValueError("config.data.train is empty and config.data.synthetic is False: expected a JSONL file "
                         "or a list of sources")
    paths = [pathlib.Path(s.path).expanduser() for s in sources]
    if not mixture.is_multi(d) or d.synthetic:
        records = [storage.ensure_dataset(paths[0], cache / "records", num_shards=d.num_shards)]
        fp = storage.fingerprint(paths[0])["sha256"]
        return PreparedData(records, sources, paths[0], fp, single=True)
    for s, path in zip(sources, paths):
        if not path.is_file():
            raise ValueError(f"config.data.train: source {s.name!r} has path {s.path!r}, which is not a file "
                             "(expected its O1 JSONL records)")
    records = [storage.ensure_dataset(path, cache / "records" / s.name, num_shards=d.num_shards)
               for s, path in zip(sources, paths)]
    # The files and every setting that changes what a step reads: a resume must agree on all of them.
    described = [dict(dataclasses.asdict(s), path=None, sha256=storage.fingerprint(p)["sha256"])
                 for s, p in zip(sources, paths)]
    fp = hashlib.sha256(json.dumps({"batches": d.batches, "sources": described}, sort_keys=True).encode()).hexdigest()
    return PreparedData(records, sources, paths[0], fp, single=False)


def make_batches(config, data: PreparedData, tokenizer) -> Batches:
    d = config.data
    formatter = formatting.Formatter(tokenizer, d.max_query_tokens, d.max_thought_tokens, d.max_doc_tokens)
    if data.single:
        order = storage.BatchOrder(len(data.records[0]), config.train.global_batch_size, seed=config.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count())
    else:
        order = mixture.MixtureOrder(data.sources, [len(r) for r in data.records], config.train.global_batch_size,
                                     seed=config.seed, batches=d.batches, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    return Batches(data.records, data.sources, order, formatter, config.seed)


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
