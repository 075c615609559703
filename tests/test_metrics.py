"""MetricWriter (stdout, JSONL, TensorBoard events read back independently), ProgressBar, MFU."""

import io
import json
import os
import struct
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields

from o1_jax import metrics
from o1_jax.metrics import MetricWriter, ProgressBar, format_value, mfu, peak_flops_per_device


# ---- an event-file reader that shares nothing with the writer but the CRC ----


def _event_class():
    """tensorflow.Event (the fields we write), decoded by the protobuf library itself."""
    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="test_event.proto", package="t", syntax="proto2")
    summary = f.message_type.add(name="Summary")
    value = summary.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".t.Summary.Value")
    session_log = f.message_type.add(name="SessionLog")
    session_log.field.add(name="status", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".t.Summary")
    event.field.add(name="session_log", number=7, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".t.SessionLog")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


Event = _event_class()


def _masked(data: bytes) -> int:
    crc = metrics.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
    """Every record of a TFRecord file, both CRCs checked, each parsed as an Event."""
    data = open(path, "rb").read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        payload = data[pos + 12:pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert header_crc == _masked(header), f"bad length CRC at byte {pos}"
        assert payload_crc == _masked(payload), f"bad payload CRC at byte {pos}"
        event = Event.FromString(payload)
        assert len(unknown_fields.UnknownFieldSet(event)) == 0, "a field number we did not expect"
        events.append(event)
        pos += 16 + length
    return events


def event_files(workdir):
    logdir = os.path.join(workdir, "tensorboard")
    return sorted(os.path.join(logdir, n) for n in os.listdir(logdir))


def scalars_of(events):
    """{tag: [(step, value), ...]} over summary events."""
    out = {}
    for e in events:
        if e.HasField("summary"):
            for v in e.summary.value:
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_crc32c_standard_check_value():
    # The CRC-32C check value from the iSCSI spec (RFC 3720) and every CRC catalogue.
    assert metrics.crc32c(b"123456789") == 0xE3069283
    assert metrics.crc32c(b"") == 0


# ---- the writer ----


def test_jsonl_lines_and_values(tmp_path):
    before = time.time()
    with MetricWriter(tmp_path, tensorboard=False) as w:
        w.write(np.int64(10), {"loss": 0.5, "lr": np.float32(1e-4), "accuracy": jnp.float32(0.25),
                               "tokens": np.int32(4096), "mfu": None})
        w.write(jnp.asarray(20), {"loss": jnp.asarray(0.125, jnp.bfloat16)})
    after = time.time()

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["step"] == 10 and type(first["step"]) is int
    assert before <= first["time"] <= second["time"] <= after
    # float32 0.0001 comes out as 1e-4, not 9.999999747378752e-05; None is left out.
    assert {k: v for k, v in first.items() if k != "time"} == {
        "step": 10, "loss": 0.5, "lr": 1e-4, "accuracy": 0.25, "tokens": 4096}
    assert type(first["tokens"]) is int and type(first["accuracy"]) is float
    assert second == {"step": 20, "time": second["time"], "loss": 0.125}
    assert not (tmp_path / "tensorboard").exists()


def test_stdout_line(tmp_path, capsys):
    with MetricWriter(tmp_path, tensorboard=False) as w:
        w.write(120, {"loss": 0.512, "gen_loss": np.float32(1.23456), "lr": 1e-4,
                      "tokens_per_sec": 123456.7, "grad_norm": float("nan"), "steps": 3, "mfu": None})
    assert capsys.readouterr().out == (
        "step 120 | loss 0.512 | gen_loss 1.235 | lr 1.0e-04 | tokens_per_sec 123457 "
        "| grad_norm nan | steps 3\n")


@pytest.mark.parametrize("value, text", [
    (0.0, "0"), (0.5123456, "0.5123"), (2e-5, "2.0e-05"), (-3e-4, "-3.0e-04"), (12.5, "12.5"),
    (45678.9, "45679"), (7, "7"), (True, "True"), (float("inf"), "inf"),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_event_file_read_back(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write(1, {"loss": 2.5, "lr": np.float32(3e-4), "mfu": None})
        w.write(2, {"loss": jnp.float32(1.25), "accuracy": 0.75})
        w.write(3, {"mfu": None})  # nothing to log: no summary event
    (path,) = event_files(tmp_path)
    assert os.path.basename(path).startswith("events.out.tfevents.")  # TensorBoard's pattern
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"  # TensorBoard wants it first
    assert scalars_of(events) == {
        "loss": [(1, 2.5), (2, 1.25)],
        "lr": [(1, pytest.approx(3e-4, rel=1e-7))],
        "accuracy": [(2, 0.75)],
    }
    assert all(abs(e.wall_time - time.time()) < 60 for e in events)


def test_event_values_past_float32_range(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write(5, {"grad_norm": 1e300, "neg": -1e300, "loss": float("nan")})
    got = dict((tag, vals[0][1]) for tag, vals in scalars_of(read_events(event_files(tmp_path)[0])).items())
    assert got["grad_norm"] == np.inf and got["neg"] == -np.inf and np.isnan(got["loss"])


def test_disabled_writer_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    with MetricWriter(workdir, enabled=False) as w:
        w.write(1, {"loss": 1.0})
        w.write(2, {"loss": np.ones(3)})  # not even looked at
    assert not workdir.exists()
    assert capsys.readouterr().out == ""


def test_resume_appends(tmp_path):
    with MetricWriter(tmp_path) as w:
        for step in (10, 20, 30):
            w.write(step, {"loss": float(step)})
    # A restart from the checkpoint at step 20, with the same workdir.
    with MetricWriter(tmp_path, purge_step=20) as w:
        w.write(20, {"loss": 200.0})

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(10, 10.0), (20, 20.0), (30, 30.0), (20, 200.0)]

    first, second = event_files(tmp_path)
    assert scalars_of(read_events(first)) == {"loss": [(10, 10.0), (20, 20.0), (30, 30.0)]}
    events = read_events(second)
    assert events[0].file_version == "brain.Event:2"
    # SessionLog START at step 20: TensorBoard then drops the first run's points from step 20 on.
    assert events[1].HasField("session_log") and events[1].session_log.status == 1
    assert events[1].step == 20
    assert scalars_of(events) == {"loss": [(20, 200.0)]}


def test_resume_after_a_torn_line(tmp_path):
    # A run killed in the middle of a write leaves a line without its newline.
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "time": 0, "loss": 1.0}\n{"step": 2, "ti')
    with MetricWriter(tmp_path, tensorboard=False) as w:
        w.write(2, {"loss": 0.5})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[1] == '{"step": 2, "ti'
    assert json.loads(lines[2])["loss"] == 0.5


def test_jsonl_is_on_disk_before_close(tmp_path):
    w = MetricWriter(tmp_path)
    w.write(1, {"loss": 1.0})
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0
    assert scalars_of(read_events(event_files(tmp_path)[0])) == {"loss": [(1, 1.0)]}
    w.close()
    with pytest.raises(RuntimeError, match="after close"):
        w.write(2, {"loss": 1.0})


@pytest.mark.parametrize("metrics_, error, match", [
    ({"loss": np.ones(3)}, TypeError, r"'loss' must be a real scalar.*shape \(3,\)"),
    ({"name": "abc"}, TypeError, "'name' must be a real scalar"),
    ({"step": 1.0}, ValueError, "'step' is reserved"),
])
def test_bad_metrics_are_named(tmp_path, metrics_, error, match):
    with MetricWriter(tmp_path) as w, pytest.raises(error, match=match):
        w.write(1, metrics_)


# ---- progress bar ----


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_off_a_terminal_is_silent(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with ProgressBar(10) as bar:
        bar.update(3, {"loss": 0.5})
    assert err.getvalue() == ""


def test_progress_bar_off_a_terminal_logs_lines_when_asked(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clock = iter([0.0, 10.0, 40.0, 40.0, 41.0, 41.0])  # start, update, update + line, update, close + line
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock))
    bar = ProgressBar(12, initial=2, desc="synthesize", unit="thought", log_every_s=30.0)
    bar.advance(3)  # t=10: too soon for a line
    assert err.getvalue() == ""
    bar.advance(3)  # t=40: a line, rate from the 6 thoughts done since the start (not the 2 resumed)
    bar.advance(2)  # t=41: too soon again
    bar.close()  # the last state always gets a line
    lines = err.getvalue().splitlines()
    assert lines == ["synthesize 8/12 thoughts, 0.15 thoughts/s, 40 s elapsed, 27 s left",
                     "synthesize 10/12 thoughts, 0.195 thoughts/s, 41 s elapsed, 10 s left"]


def test_progress_bar_on_a_terminal(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with ProgressBar(10, initial=5, enabled=False) as bar:  # disabled: silent even on a terminal
        bar.update(6)
    assert err.getvalue() == ""

    bar = ProgressBar(10, initial=5)
    bar.update(7, {"loss": np.float32(0.25)})
    bar.close()  # draws the final state, whatever tqdm's redraw interval skipped
    out = err.getvalue()
    assert "5/10" in out and "7/10" in out and "loss 0.25" in out
    assert "step/s" in out or "s/step" in out

    err.seek(0)
    err.truncate()
    with ProgressBar(10, initial=5) as bar:
        bar.update(4, {"loss": 0.75})  # back to an earlier checkpoint: no negative rate or ETA
    out = err.getvalue()
    assert "4/10" in out and "loss 0.75" in out and "-" not in out


# ---- MFU ----


def test_mfu_arithmetic():
    # 4 devices of 1e15 FLOP/s for 2 s could do 8e15 FLOPs; the step needed 2e15.
    assert mfu(2e15, 2.0, 1e15, 4) == pytest.approx(0.25)
    assert mfu(2e15, 2.0, None, 4) is None
    for bad in [(2e15, 0.0, 1e15, 4), (2e15, 2.0, 1e15, 0), (2e15, 2.0, 0.0, 4)]:
        with pytest.raises(ValueError, match="mfu needs"):
            mfu(*bad)


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("cpu", None), ("TPU v9 imaginary", None),
])
def test_peak_flops_table(kind, peak):
    assert peak_flops_per_device(kind) == peak


def test_peak_flops_on_this_cpu_is_unknown():
    assert jax.devices()[0].platform == "cpu"  # conftest pins JAX to CPU
    assert peak_flops_per_device() is None
