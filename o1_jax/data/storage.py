"""Training records in array_record files read through tensorflow-datasets, and their order.

Storage. A converted dataset is a TFDS dataset folder:
  dataset_info.json, features.json       (tfds.folder_dataset.write_metadata)
  o1_records-train.array_record-0000k-of-0000N   (array_record, group_size:1)
  o1_fingerprint.json                    (sha256 + size of the source JSONL)
Each element is one tf.Example with a single Text feature "record" holding the
record's JSON, serialised with the tfds FeaturesDict itself. It is read back
with `tfds.builder_from_directory(dir).as_data_source("train")`, tfds's
random-access ArrayRecordDataSource. None of this imports TensorFlow (which
must not be installed: it breaks `import scann`). The tfds builder route
(`store_as_tfds_dataset`, `GeneratorBasedBuilder.download_and_prepare`) fails
without it in tfds 4.9.10 (it wants `importlib_resources`, and the ad-hoc builder
tests `isinstance(x, tf.data.Dataset)`), so the shards are written with
array_record's writer directly, as tfds's ArrayRecordFileAdapter writes them,
and the metadata with `tfds.folder_dataset.write_metadata`.

Order. `BatchOrder` gives each process its slice of every global batch as a
pure function of (seed, step), so a resumed run sees the same batches as an
uninterrupted one, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from o1_jax.data.records import RecordError, read_records
from o1_jax.files import staged_folder

DATASET_NAME = "o1_records"
SPLIT = "train"
FEATURE = "record"
FINGERPRINT_FILE = "o1_fingerprint.json"
# Bump when the stored layout changes, so old caches are converted again.
FORMAT_VERSION = 1
_EXAMPLE_STREAM = 0x4F31  # "O1": tags example_rng's seed words


def _features():
    import tensorflow_datasets as tfds  # tfds is slow to import; only storage needs it

    return tfds.features.FeaturesDict({FEATURE: tfds.features.Text()})


def _shard_sizes(n: int, num_shards: int) -> list[int]:
    # Contiguous shards, so element i of the data source is record i.
    base, extra = divmod(n, num_shards)
    return [base + (k < extra) for k in range(num_shards)]


def _write_folder(records: Sequence[dict], folder: pathlib.Path, num_shards: int, fingerprint: dict | None) -> None:
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module

    features = _features()
    sizes = _shard_sizes(len(records), num_shards)
    num_bytes, start = 0, 0
    for k, size in enumerate(sizes):
        path = folder / f"{DATASET_NAME}-{SPLIT}.array_record-{k:05d}-of-{num_shards:05d}"
        # group_size:1 keeps every record individually addressable (random access).
        writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
        try:
            for record in records[start : start + size]:
                example = features.serialize_example({FEATURE: json.dumps(record, ensure_ascii=False)})
                num_bytes += len(example)
                writer.write(example)
        finally:
            writer.close()
        start += size
    split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=sizes, num_bytes=num_bytes)
    # check_data=False: its check reads through tf.data, i.e. TensorFlow.
    tfds.folder_dataset.write_metadata(
        data_dir=folder, features=features, split_infos=[split], check_data=False,
        description="O1 Embedder training records, one JSON string per element.",
    )
    if fingerprint is not None:
        (folder / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=1) + "\n")


def _is_ours(folder: pathlib.Path) -> bool:
    """An empty folder, or one holding a dataset written by write_dataset."""
    if folder.is_dir() and not any(folder.iterdir()):
        return True
    with contextlib.suppress(OSError, ValueError):
        return json.loads((folder / "dataset_info.json").read_text()).get("name") == DATASET_NAME
    return False


def write_dataset(
    records: Iterable[dict], out_dir: str | os.PathLike, num_shards: int = 1, fingerprint: dict | None = None
) -> pathlib.Path:
    """Write records as a TFDS array_record dataset folder, atomically (temp folder, renamed when complete)."""
    records = list(records)
    out = pathlib.Path(out_dir)
    if not records:
        raise RecordError(f"{out}: no records to write (expected at least one).")
    if not 1 <= num_shards <= len(records):
        raise ValueError(f"{out}: num_shards must be between 1 and the number of records ({len(records)}), got {num_shards}.")
    if out.exists() and not _is_ours(out):
        raise RecordError(f"{out}: exists and is not a record folder written by write_dataset (refusing to replace it).")
    with staged_folder(out, may_replace=_is_ours) as tmp:
        _write_folder(records, tmp, num_shards, fingerprint)
    return out


class RecordSource:
    """Random access to stored records: `len(src)`, `src[i]` and `src.__getitems__([i, ...])` give record dicts."""

    def __init__(self, path: pathlib.Path, tfds_source: Any):
        self.path = path
        self.tfds_source = tfds_source  # tfds ArrayRecordDataSource; elements are {"record": bytes}

    def __len__(self) -> int:
        return len(self.tfds_source)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: record index {index} out of range for {n} records.")
        return self._decode(self.tfds_source[i % n])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Several records in one read (what a batch needs)."""
        return [self._decode(e) for e in self.tfds_source.__getitems__([int(i) for i in indices])]

    @staticmethod
    def _decode(element: dict) -> dict:
        return json.loads(element[FEATURE])

    def __repr__(self) -> str:
        return f"RecordSource({str(self.path)!r}, {len(self)} records)"


def open_dataset(out_dir: str | os.PathLike) -> RecordSource:
    """The records of a folder written by `write_dataset`, through `tfds.builder_from_directory(...).as_data_source`."""
    import tensorflow_datasets as tfds

    out = pathlib.Path(out_dir)
    if not (out / "dataset_info.json").is_file():
        raise RecordError(f"{out}: not a converted record folder (expected dataset_info.json from write_dataset).")
    builder = tfds.builder_from_directory(os.fspath(out))
    if SPLIT not in builder.info.splits or FEATURE not in builder.info.features:
        raise RecordError(f"{out}: dataset has no '{SPLIT}' split with a '{FEATURE}' feature (not written by write_dataset).")
    return RecordSource(out, builder.as_data_source(SPLIT))


def fingerprint(jsonl_path: str | os.PathLike) -> dict:
    """What identifies a source JSONL: its size and sha256 (plus the storage format version)."""
    h = hashlib.sha256()
    size = 0
    with open(jsonl_path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size, "format_version": FORMAT_VERSION}


def stored_fingerprint(out_dir: str | os.PathLike) -> dict | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return json.loads((pathlib.Path(out_dir) / FINGERPRINT_FILE).read_text())
    return None


def ensure_dataset(jsonl_path: str | os.PathLike, cache_dir: str | os.PathLike, num_shards: int = 1) -> RecordSource:
    """The records of `jsonl_path`, converted once into `cache_dir/<file stem>` and reused while the JSONL is unchanged.

    The JSONL is validated (read_records) before anything is written. With several
    processes on a shared filesystem, let one convert and the others wait, then open.
    """
    jsonl_path = pathlib.Path(jsonl_path)
    if not jsonl_path.is_file():
        raise RecordError(f"{jsonl_path}: no such file (expected a JSONL file of O1 records).")
    out = pathlib.Path(cache_dir) / jsonl_path.stem
    fp = fingerprint(jsonl_path)
    if stored_fingerprint(out) != fp:
        write_dataset(read_records(jsonl_path), out, num_shards=num_shards, fingerprint=fp)
    return open_dataset(out)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_records)
    perm.flags.writeable = False  # cached and shared: nobody may modify it
    return perm


@dataclasses.dataclass(frozen=True)
class BatchOrder:
    """Which records each process reads at each global step.

    Epoch e is the permutation `default_rng([seed, e]).permutation(num_records)`;
    global step s reads the window [j*G, (j+1)*G) of epoch s // steps_per_epoch
    (j = s % steps_per_epoch, G = global_batch_size; the last num_records % G
    records of each permutation are dropped), and process p takes
    [p*L, (p+1)*L) of that window (L = G / process_count).
    """

    num_records: int
    global_batch_size: int
    seed: int = 0
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {self.global_batch_size}.")
        if self.num_records < self.global_batch_size:
            raise ValueError(
                f"{self.num_records} records are fewer than one global batch of {self.global_batch_size} "
                "(expected num_records >= global_batch_size, since the last partial batch is dropped)."
            )
        if self.process_count < 1 or not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"process_index must be in [0, process_count), got {self.process_index} of {self.process_count}."
            )
        if self.global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by process_count {self.process_count}."
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.global_batch_size

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_indices(self, step: int) -> np.ndarray:
        """Record indices of the whole global batch at `step`."""  # [G]
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}.")
        epoch, j = divmod(int(step), self.steps_per_epoch)
        perm = _epoch_permutation(self.num_records, self.seed, epoch)
        return perm[j * self.global_batch_size : (j + 1) * self.global_batch_size].copy()

    def indices(self, step: int) -> np.ndarray:
        """Record indices of this process's slice of global step `step`."""  # [L]
        local = self.local_batch_size
        return self.global_indices(step)[self.process_index * local : (self.process_index + 1) * local]


def example_rng(seed: int, step: int, global_index: int) -> np.random.Generator:
    """Randomness for one example (negative sampling, thought dropout), the same on every process.

    `global_index` must not depend on the process: the record index, or the
    example's position in the global batch.
    """
    # SeedSequence pads with zeros ([s, e] == [s, e, 0]), so a non-zero last word keeps
    # these streams apart from the epoch permutations' [seed, epoch].
    return np.random.default_rng([int(seed), int(step), int(global_index), _EXAMPLE_STREAM])
