"""Training on several datasets in one run: the sources, and which records each step reads.

`config.data.train` is one JSONL file, or a list of sources, each a dict:

    {"path": "msmarco.jsonl",        # required: O1 JSONL records
     "name": "msmarco",              # default: the file's stem; names must differ
     "weight": 2.0,                  # sampling weight > 0 (every source's or none's); default
                                     #   "proportional": each source's share is its size
     "group_size": 8,                # default: data.group_size
     "thought_dropout": 0.1,         # default: data.thought_dropout
     "in_batch_negatives": True,     # False: each query is scored against its own group only
     "instruction": "query: "}       # prepended to each query; default: data.query_instruction

Batches (`data.batches`). "homogeneous" (the default, as the original's
--same_dataset_within_batch): every query of a step comes from one source, drawn with probability
proportional to the weights; the step's records are the next window of that source's own epoch
permutation (`storage.BatchOrder` per source: a source's epochs drop their last partial batch).
"mixed": each step draws how many of its queries come from each source (multinomial over the
weights), and each source hands out the next records of an endless stream of its own
permutations; every source then needs the same group size.

Both are pure functions of (seed, step), so a resumed run reads exactly the batches it would have
read, on any number of processes (process p reads rows [p*L, (p+1)*L) of the global batch).
An epoch is sum(source sizes) // global_batch_size steps (`train.num_epochs` counts these);
with weights other than "proportional", a source is seen more or less than once per epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import numpy as np

from o1_jax.data.storage import BatchOrder
from o1_jax.defaults import BATCHES

PROPORTIONAL = "proportional"
SOURCE_KEYS = ("path", "name", "weight", "group_size", "thought_dropout", "in_batch_negatives", "instruction")
_SOURCE_STREAM = 0x5352  # "SR": tags the seed words of the source draws
_MIXED_STREAM = 0x4D58  # "MX": of a mixed source's permutations
_BLOCK = 4096  # steps whose source draws are made together


@dataclasses.dataclass(frozen=True)
class Source:
    """One training dataset of a run, with every default filled in."""

    name: str
    path: str
    weight: float | str  # a weight > 0 or PROPORTIONAL
    group_size: int
    thought_dropout: float
    in_batch_negatives: bool
    instruction: str


def _entries(train: Any) -> list | None:
    """data.train as a list of source dicts, or None for the single-file form (a str)."""
    if isinstance(train, str):
        return None
    if isinstance(train, (list, tuple)):
        return list(train)
    raise ValueError(f"config.data.train={train!r}: expected a JSONL path or a list of sources (dicts with a 'path')")


def is_multi(data_cfg) -> bool:
    return _entries(data_cfg.train) is not None


def parse_sources(data_cfg) -> list[Source]:
    """The run's sources; a single `data.train` file is one source with the run-wide settings."""
    entries = _entries(data_cfg.train)
    instruction = data_cfg.get("query_instruction", "")
    if entries is None:
        return [Source(pathlib.Path(data_cfg.train).stem or "train", data_cfg.train, PROPORTIONAL,
                       data_cfg.group_size, data_cfg.thought_dropout, True, instruction)]
    if not entries:
        raise ValueError("config.data.train is an empty list: expected at least one source")
    sources = [_source(i, e, data_cfg, instruction) for i, e in enumerate(entries)]
    names = [s.name for s in sources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"config.data.train[{i}]: the name {name!r} is also source {names.index(name)}'s; "
                             "expected a distinct 'name' per source")
    numeric = [s.weight != PROPORTIONAL for s in sources]
    if any(numeric) and not all(numeric):
        i = numeric.index(False)
        raise ValueError(f"config.data.train[{i}] has no number 'weight' but source {numeric.index(True)} has one: "
                         f"expected a weight for every source, or none (each {PROPORTIONAL!r} to its size)")
    if data_cfg.get("batches", "homogeneous") == "mixed" and len({s.group_size for s in sources}) > 1:
        raise ValueError(f"config.data.batches='mixed' with group sizes {[s.group_size for s in sources]}: "
                         "a mixed batch needs one group size for every source (or use 'homogeneous')")
    return sources


def _source(i: int, entry: Any, d, instruction: str) -> Source:
    where = f"config.data.train[{i}]"
    if hasattr(entry, "to_dict"):  # a ConfigDict
        entry = entry.to_dict()
    if not isinstance(entry, dict):
        raise ValueError(f"{where}={entry!r}: expected a dict with at least a 'path'")
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; expected keys among {SOURCE_KEYS}")
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: missing 'path' (expected the JSONL file of its records)")
    name = entry.get("name", pathlib.Path(path).stem)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"{where}.name={name!r}: expected a non-empty name of letters, digits, '-', '_' or '.'")
    weight = entry.get("weight", PROPORTIONAL)
    if weight != PROPORTIONAL and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not weight > 0 or not np.isfinite(weight)):
        raise ValueError(f"{where}.weight={weight!r}: expected a number > 0 or {PROPORTIONAL!r}")
    group_size = entry.get("group_size", d.group_size)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"{where}.group_size={group_size!r}: expected an integer >= 2 (1 positive + negatives)")
    dropout = entry.get("thought_dropout", d.thought_dropout)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"{where}.thought_dropout={dropout!r}: expected a probability in [0, 1]")
    in_batch = entry.get("in_batch_negatives", True)
    if not isinstance(in_batch, bool):
        raise ValueError(f"{where}.in_batch_negatives={in_batch!r}: expected True or False")
    instruction = entry.get("instruction", instruction)
    if not isinstance(instruction, str):
        raise ValueError(f"{where}.instruction={instruction!r}: expected a string ('' for none)")
    return Source(name, path, weight if weight == PROPORTIONAL else float(weight), int(group_size), float(dropout),
                  in_batch, instruction)


def probabilities(sources: Sequence[Source], sizes: Sequence[int]) -> np.ndarray:
    """Each source's share of the queries: its weight over their sum, or (all "proportional") its size
    over the total."""
    raw = np.array([float(n) if s.weight == PROPORTIONAL else float(s.weight) for s, n in zip(sources, sizes)])
    return raw / raw.sum()


class MixtureOrder:
    """Which (source, record) rows each process reads at each global step; see the module docstring."""

    def __init__(self, sources: Sequence[Source], sizes: Sequence[int], global_batch_size: int, seed: int = 0,
                 batches: str = "homogeneous", process_index: int = 0, process_count: int = 1):
        if batches not in BATCHES:
            raise ValueError(f"config.data.batches={batches!r}: expected one of {BATCHES}")
        self.sources, self.sizes = list(sources), [int(n) for n in sizes]
        self.global_batch_size, self.seed, self.batches = int(global_batch_size), int(seed), batches
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.p = probabilities(self.sources, self.sizes)
        if batches == "homogeneous":
            # Per source, its own epochs of whole batches (a source smaller than a batch is refused there).
            self._orders = []
            for k, (s, n) in enumerate(zip(self.sources, self.sizes)):
                try:
                    self._orders.append(BatchOrder(n, self.global_batch_size, seed=self._source_seed(k),
                                                   process_index=process_index, process_count=process_count))
                except ValueError as e:
                    raise ValueError(f"data source {s.name!r} ({s.path}): {e}") from None
        elif self.global_batch_size % self.process_count or not 0 <= process_index < process_count:
            raise ValueError(f"global_batch_size {global_batch_size} must split over process_count "
                             f"{process_count} (process_index {process_index})")
        self._prefix: list[np.ndarray] = []  # per block: queries drawn from each source before it

    @property
    def steps_per_epoch(self) -> int:
        return max(sum(self.sizes) // self.global_batch_size, 1)

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    def _source_seed(self, k: int) -> int:
        return int(np.random.SeedSequence([self.seed, k, _SOURCE_STREAM]).generate_state(1)[0])

    @functools.lru_cache(maxsize=4)
    def _block(self, block: int) -> np.ndarray:
        """[_BLOCK, K] queries each source gives each step of the block."""
        rng = np.random.default_rng([self.seed, block, _SOURCE_STREAM])
        if self.batches == "homogeneous":
            choice = rng.choice(len(self.sources), size=_BLOCK, p=self.p)
            return np.eye(len(self.sources), dtype=np.int64)[choice] * self.global_batch_size
        return rng.multinomial(self.global_batch_size, self.p, size=_BLOCK).astype(np.int64)

    def _before(self, step: int) -> np.ndarray:
        """[K] queries drawn from each source in steps [0, step)."""
        block, offset = divmod(step, _BLOCK)
        while len(self._prefix) <= block:  # each block's start, once
            start = self._prefix[-1] + self._block(len(self._prefix) - 1).sum(0) if self._prefix \
                else np.zeros(len(self.sources), np.int64)
            self._prefix.append(start)
        return self._prefix[block] + self._block(block)[:offset].sum(0)

    def counts(self, step: int) -> np.ndarray:
        """[K] queries each source gives global step `step`."""
        return self._block(step // _BLOCK)[step % _BLOCK]

    def queries_seen(self, step: int) -> dict[str, int]:
        """Queries drawn from each source in steps [0, step), by name (what the loop logs)."""
        return {s.name: int(c) for s, c in zip(self.sources, self._before(step))}

    def global_rows(self, step: int) -> list[tuple[int, int]]:
        """(source, record index) of every row of global step `step`, in source order."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}.")
        counts, before = self.counts(step), self._before(step)
        rows = []
        for k, c in enumerate(counts):
            if not c:
                continue
            if self.batches == "homogeneous":
                records = self._orders[k].global_indices(int(before[k]) // self.global_batch_size)
            else:
                records = self._stream(k, int(before[k]), int(c))
            rows += [(k, int(r)) for r in records]
        return rows

    def rows(self, step: int) -> list[tuple[int, int]]:
        """This process's slice of `global_rows(step)`."""
        local = self.local_batch_size
        return self.global_rows(step)[self.process_index * local:(self.process_index + 1) * local]

    def _stream(self, k: int, start: int, count: int) -> np.ndarray:
        """Records [start, start + count) of source k's endless stream of permutations."""
        n = self.sizes[k]
        out = []
        for position in range(start, start + count):
            epoch, i = divmod(position, n)
            out.append(self._permutation(k, epoch)[i])
        return np.array(out, np.int64)

    @functools.lru_cache(maxsize=16)
    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, k, epoch, _MIXED_STREAM]).permutation(self.sizes[k])
