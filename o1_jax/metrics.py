"""Training metrics: one line to stdout, one JSON object to `metrics.jsonl`, TensorBoard scalars.

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    writer.write(step, {"loss": 0.5, "lr": 1e-4, ...})
    writer.close()

Only process 0 should log; on the others `enabled=False` makes every call a no-op
and nothing is created on disk.

TensorBoard events are written by the ~100 lines below rather than by tensorboardX
or TensorFlow. TensorFlow cannot be installed (it breaks `import scann`), and
tensorboardX, which does work here, buys nothing for scalars: it adds a background
writer thread (events reach disk every `flush_secs`, not when `write` returns) and
generated `_pb2` modules tied to the protobuf runtime's major version. The format
it would write is small and frozen since 2016: TFRecord framing (length, masked
CRC32C, payload, masked CRC32C) around a `tensorflow.Event` protobuf holding
`Summary.Value.simple_value`s.

Values are reported as given: a `None` (e.g. MFU on CPU, where no peak is known)
is left out of all three outputs rather than replaced by a made-up number.

A remote workdir (a URL such as gs://bucket/run) cannot be appended to: GCS objects are
written whole. There both files are written in a local temporary folder and copied to the
workdir whole by `flush()` (the trainer calls it at each checkpoint) and by `close()`. A
killed run thus leaves the lines up to its last checkpoint, which is where it resumes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import shutil
import socket
import struct
import sys
import tempfile
import time
from typing import Any, Mapping

import numpy as np
from etils import epath
from tqdm import tqdm

from o1_jax.files import is_remote

__all__ = ["MetricWriter", "ProgressBar", "format_value", "mfu", "peak_flops_per_device"]


# ---- values ----


def _to_python(key: str, value: Any) -> int | float | bool:
    """A Python scalar from a Python, numpy or (0-d) jax value; anything else is an error."""
    if isinstance(value, (bool, int, float)):
        return value
    try:
        a = np.asarray(value)  # jax.Array -> host copy; blocks until it is computed
    except Exception as e:  # e.g. a sharded array not fully addressable on this host
        raise TypeError(f"metric {key!r}: cannot read {type(value).__name__} on the host ({e})") from e
    if a.dtype.kind == "V":  # ml_dtypes' bfloat16 and float8 types register as void
        try:
            a = a.astype(np.float32)
        except (TypeError, ValueError):
            pass  # a structured array: rejected below
    if a.ndim != 0 or a.dtype.kind not in "biuf":
        raise TypeError(
            f"metric {key!r} must be a real scalar, got {type(value).__name__} "
            f"with shape {a.shape} and dtype {a.dtype}"
        )
    if a.dtype.kind == "b":
        return bool(a)
    if a.dtype.kind in "iu":
        return int(a)
    if a.dtype.itemsize < 8:
        # The shortest decimal that is this float32 (1e-4, not 9.999999747378752e-05).
        return float(str(a.astype(np.float32)))
    return float(a)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, int | float | bool]:
    out = {}
    for key, value in metrics.items():
        if key in ("step", "time"):
            raise ValueError(f"metric name {key!r} is reserved for the JSONL record itself")
        if value is not None:
            out[key] = _to_python(key, value)
    return out


def format_value(value: int | float | bool) -> str:
    """Compact and readable: `0.5123`, `1.0e-04`, `12345`, `nan`."""
    if isinstance(value, (bool, int)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    mag = abs(value)
    if mag == 0:
        return "0"
    if mag >= 1e4:
        return f"{value:.0f}"  # throughputs: digits beyond the units place are noise
    if mag < 1e-3:
        return f"{value:.1e}"  # learning rates and the like
    return f"{value:.4g}"


# ---- TensorBoard event files ----


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) in pure Python; fast enough for a few hundred bytes per step."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    # TFRecord masks the CRC so that CRCs of data that itself holds CRCs stay well distributed.
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + payload
        + struct.pack("<I", _masked_crc(payload))
    )


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, wire_type: int, body: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + body


def _bytes_field(number: int, body: bytes) -> bytes:
    return _field(number, 2, _varint(len(body)) + body)


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # beyond float32 range: TensorBoard shows +-inf, as TF would
        return struct.pack("<f", math.copysign(math.inf, value))


def _event(wall_time: float, step: int, what: bytes) -> bytes:
    """A serialized `tensorflow.Event`; field numbers from tensorflow/core/util/event.proto.

    `what` is one field of the Event's oneof: a file_version, a summary or a session_log.
    """
    return _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step)) + what


def _file_version() -> bytes:
    return _bytes_field(3, b"brain.Event:2")


def _summary(scalars: Mapping[str, float]) -> bytes:
    # Event.summary (5) = Summary{value (1): [Value{tag (1), simple_value (2)}]}
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, _float32(float(v))))
        for tag, v in scalars.items()
    )
    return _bytes_field(5, values)


def _session_start() -> bytes:
    return _bytes_field(7, _field(1, 0, _varint(1)))  # Event.session_log = SessionLog{status: START}


_file_counter = itertools.count()


class _EventFile:
    """One append-only `events.out.tfevents.*` file; TensorBoard reads every such file in the folder."""

    def __init__(self, logdir: str, purge_step: int | None = None):
        os.makedirs(logdir, exist_ok=True)
        # Time, host, pid and a counter: two writers (a restart, a second run) never share a file.
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                f".{os.getpid()}.{next(_file_counter)}")
        self.path = os.path.join(logdir, name)
        self._f = open(self.path, "ab")
        now = time.time()
        self._append(_event(now, 0, _file_version()))
        if purge_step is not None:
            # TensorBoard drops events at steps >= purge_step from earlier files, so
            # steps logged after the checkpoint a resumed run started from are not drawn twice.
            self._append(_event(now, purge_step, _session_start()))
        self._f.flush()

    def _append(self, payload: bytes) -> None:
        self._f.write(_tfrecord(payload))

    def write(self, step: int, scalars: Mapping[str, float], wall_time: float) -> None:
        if scalars:
            self._append(_event(wall_time, step, _summary(scalars)))
            self._f.flush()

    def close(self) -> None:
        self._f.close()


# ---- the writer ----


class MetricWriter:
    """Writes each step's metrics to stdout, `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/`.

    A second writer on the same workdir (a resumed run) appends to `metrics.jsonl` and
    starts a new event file. Pass `purge_step=<step resumed from>` to have TensorBoard
    hide the earlier run's points from that step on; `metrics.jsonl` keeps everything.
    `workdir` may be a URL (gs://...): see the module docstring.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True,
                 tensorboard: bool = True, purge_step: int | None = None):
        self.enabled = enabled
        self._jsonl = None
        self._events = None
        self._remote = None  # the workdir when it is a URL; the files are written locally and copied there
        if not enabled:
            return
        workdir = os.fspath(workdir)
        if is_remote(workdir):
            self._remote = epath.Path(workdir)
            self._local = tempfile.mkdtemp(prefix="o1_jax_metrics.")
            earlier = self._remote / "metrics.jsonl"
            if earlier.exists():  # a resumed run continues the file, as on a local workdir
                pathlib.Path(self._local, "metrics.jsonl").write_bytes(earlier.read_bytes())
            workdir = self._local
        os.makedirs(workdir, exist_ok=True)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        # Append-only logs, not write-then-rename (CONVENTIONS 8): a killed run must keep
        # every line it wrote. A line cut short by that kill is closed off, so the next
        # record starts on a line of its own.
        torn = os.path.exists(self.jsonl_path) and _ends_without_newline(self.jsonl_path)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        if torn:
            self._jsonl.write("\n")
        if tensorboard:
            self._events = _EventFile(os.path.join(workdir, "tensorboard"), purge_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs `metrics` (Python, numpy or 0-d jax scalars; `None` values are skipped) at `step`."""
        if not self.enabled:
            return
        if self._jsonl is None:
            raise RuntimeError("MetricWriter.write called after close()")
        step = int(step)
        scalars = _scalars(metrics)
        now = time.time()

        line = " | ".join([f"step {step}"] + [f"{k} {format_value(v)}" for k, v in scalars.items()])
        with tqdm.external_write_mode(file=sys.stdout):  # clears and redraws any progress bar
            print(line, flush=True)

        # NaN and inf are written as JSON's common extension (NaN, Infinity), which
        # Python's json reads back: a diverged loss is worth keeping.
        self._jsonl.write(json.dumps({"step": step, "time": now, **scalars}) + "\n")
        self._jsonl.flush()

        if self._events is not None:
            self._events.write(step, scalars, now)

    def flush(self) -> None:
        """Brings a remote workdir's files up to date; local files are flushed at every write already."""
        if self._remote is None or self._jsonl is None:
            return
        for path in [self.jsonl_path] + ([self._events.path] if self._events is not None else []):
            # A whole-object upload: the workdir's copy is the old or the new file, never a part.
            (self._remote / os.path.relpath(path, self._local)).write_bytes(pathlib.Path(path).read_bytes())

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._jsonl is not None:
                self._jsonl.close()
                self._jsonl = None
            if self._events is not None:
                self._events.close()
                self._events = None
        if self._remote is not None:  # copied: the local folder is no longer needed (kept if the copy failed)
            shutil.rmtree(self._local, ignore_errors=True)
            self._remote = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_without_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


# ---- progress bar ----


class ProgressBar:
    """Progress with n/total, rate, ETA and the latest loss: a tqdm bar on a terminal.

    Off a terminal (a log file, a cluster job) a bar's carriage returns would only clutter the
    log. There, with `log_every_s=None` (training: `MetricWriter`'s stdout lines already say
    everything) nothing is printed; with a number of seconds (synthesis, whose only other output
    is the summary at the end) one plain line `desc n/total unit, rate, ETA` goes to stderr at
    most that often, and once more at `close()`.
    """

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, desc: str = "train",
                 unit: str = "step", log_every_s: float | None = None):
        self._total, self._desc, self._unit = total, desc, unit
        self._bar = self._new_bar(initial) if enabled and sys.stderr.isatty() else None
        self._lines = enabled and self._bar is None and log_every_s is not None
        self._log_every_s = log_every_s or 0.0
        self._n = self._start_n = self._logged_n = initial
        self._start = self._last_line = time.monotonic()
        self._loss: str | None = None

    def _new_bar(self, initial: int) -> tqdm:
        return tqdm(
            total=self._total, initial=initial, desc=self._desc, unit=self._unit, file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc} {n}/{total} {bar} [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
        )

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Moves to the absolute `step` and shows `metrics['loss']` if given."""
        step = int(step)
        if metrics is not None and metrics.get("loss") is not None:
            self._loss = f"loss {format_value(_to_python('loss', metrics['loss']))}"
        if step < self._n:  # moved back (a restart from an earlier checkpoint): rates start again
            self._start_n, self._start = step, time.monotonic()
        self._n = step
        if self._bar is not None:
            if step < self._bar.n:
                # A fresh bar, since tqdm's rate and ETA would go negative.
                postfix = self._bar.postfix
                self._bar.close()
                self._bar = self._new_bar(step)
                self._bar.set_postfix_str(postfix or "", refresh=False)
            if self._loss is not None:
                self._bar.set_postfix_str(self._loss, refresh=False)
            self._bar.update(step - self._bar.n)  # tqdm redraws at most every 0.1 s
        elif self._lines and time.monotonic() - self._last_line >= self._log_every_s:
            self._print_line()

    def advance(self, n: int = 1) -> None:
        """Moves `n` forward (a batch of `n` units done)."""
        self.update(self._n + n)

    def _print_line(self) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        done = self._n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self._desc} {self._n}/{self._total} {self._unit}s"]
        if rate > 0:
            left = max(self._total - self._n, 0) / rate
            parts.append(f"{rate:.3g} {self._unit}s/s, {_duration(elapsed)} elapsed, {_duration(left)} left")
        if self._loss is not None:
            parts.append(self._loss)
        print(", ".join(parts), file=sys.stderr, flush=True)
        self._last_line, self._logged_n = now, self._n

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._lines and self._n != self._logged_n:
            self._print_line()
        self._lines = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# ---- model FLOPs utilisation ----

# Dense bf16 peak FLOP/s per chip (per GPU), from the vendors' spec sheets (sparsity
# figures halved). TPU kinds are matched exactly: "TPU v5" (v5p) is a prefix of
# "TPU v5 lite" (v5e).
_TPU_PEAK = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5": 459e12,  # v5p
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
}
# GPU names ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", ...) by substring, first match wins.
_GPU_PEAK = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h200 nvl", 835e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),  # SXM, and GH200
    ("a100", 312e12),
)


def peak_flops_per_device(device_kind: str | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of one device (default: `jax.devices()[0]`); None if unknown, e.g. CPU."""
    if device_kind is None:
        import jax  # here, so the writer itself does not start a JAX backend

        device_kind = jax.devices()[0].device_kind
    kind = device_kind.strip().lower()
    if kind in _TPU_PEAK:
        return _TPU_PEAK[kind]
    for name, peak in _GPU_PEAK:
        if name in kind:
            return peak
    return None


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops_per_device: float | None,
        num_devices: int) -> float | None:
    """Model FLOPs utilisation: achieved over peak FLOP/s of all devices; None when the peak is unknown."""
    if peak_flops_per_device is None:
        return None
    if seconds_per_step <= 0 or num_devices < 1 or peak_flops_per_device <= 0:
        raise ValueError(
            f"mfu needs seconds_per_step > 0, num_devices >= 1 and a positive peak, got "
            f"{seconds_per_step}, {num_devices} and {peak_flops_per_device}"
        )
    return flops_per_step / (seconds_per_step * peak_flops_per_device * num_devices)
