"""Metric writers with ``clu.metric_writers``' interface: TensorBoard event files, JSONL, console.

``clu.metric_writers`` is the JAX ecosystem's writer API, but its package ``__init__`` imports
TensorFlow (clu 0.0.12), which jaxcomp does not install. These classes implement the same
interface (``write_scalars(step, scalars)``, ``write_hparams``, ``flush``, ``close``), so code
written against clu's ``MetricWriter`` works with them and vice versa, and the TensorBoard event
files are written directly (TFRecord framing + ``tensorflow.Event`` protos encoded by hand; the
format is stable and read by any TensorBoard).

``create_default_writer(workdir)`` is the writer ``fit`` uses: ``<workdir>/metrics.jsonl`` +
``<workdir>/tb/events.out.tfevents.*`` (+ console lines when asked), on process 0 only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

Scalars = Mapping[str, Any]


class MetricWriter:
    """The subset of ``clu.metric_writers.MetricWriter`` that jaxcomp uses."""

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        raise NotImplementedError

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


def _floats(scalars: Scalars) -> dict[str, float]:
    vals = jax.device_get(dict(scalars))
    return {k: float(np.asarray(v)) for k, v in vals.items()}


class JsonlWriter(MetricWriter):
    """One JSON object ``{"step": s, **scalars}`` per line, appended to ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a")

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        self._f.write(json.dumps({"step": int(step), **_floats(scalars)}) + "\n")
        self._f.flush()

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        p = self.path.parent / "hparams.json"
        p.write_text(json.dumps(dict(hparams), indent=1, default=repr))

    def close(self) -> None:
        self._f.close()


class ConsoleWriter(MetricWriter):
    """One line per call through ``print_fn`` (``tqdm.write`` while a bar is shown)."""

    def __init__(self, print_fn: Callable[[str], None] = print, prefix: str = ""):
        self.print_fn, self.prefix = print_fn, prefix

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        vals = " ".join(f"{k}={v:.4g}" for k, v in _floats(scalars).items())
        self.print_fn(f"{self.prefix}[step {int(step)}] {vals}")


# --- TensorBoard event files -------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def encode_event(
    wall_time: float, step: int, *, scalars: Mapping[str, float] | None = None, version: str = ""
) -> bytes:
    """A ``tensorflow.Event`` proto: wall_time (1, double), step (2, int64), file_version (3) or
    summary (5) with one ``Summary.Value`` (tag 1, simple_value 2) per scalar."""
    msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step))
    if version:
        msg += _field_bytes(3, version.encode())
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", val))
            for tag, val in scalars.items()
        )
        msg += _field_bytes(5, values)
    return msg


def frame_record(data: bytes) -> bytes:
    """TFRecord framing: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


class TensorBoardWriter(MetricWriter):
    """Scalars to ``<logdir>/events.out.tfevents.<time>.<host>`` (TensorBoard reads it)."""

    def __init__(self, logdir: str | os.PathLike):
        logdir = epath.Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._f = self.path.open("ab")
        self._f.write(frame_record(encode_event(time.time(), 0, version="brain.Event:2")))

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        self._f.write(frame_record(encode_event(time.time(), step, scalars=_floats(scalars))))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _read_varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            val, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


def read_tensorboard_scalars(path: str | os.PathLike) -> list[dict[str, float]]:
    """Decode an event file written by any TensorBoard writer into ``[{"step": s, tag: value}]``
    rows (scalar ``simple_value`` summaries only), checking every record's CRCs."""
    buf = epath.Path(path).read_bytes()
    rows, i = [], 0
    while i < len(buf):
        if i + 12 > len(buf):
            raise ValueError(f"{path}: truncated record header at byte {i}")
        header = buf[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", buf[i + 8 : i + 12])[0] != _masked_crc(header):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        data = buf[i + 12 : i + 12 + n]
        if len(data) != n or i + 16 + n > len(buf):
            raise ValueError(f"{path}: truncated record at byte {i}")
        if struct.unpack("<I", buf[i + 12 + n : i + 16 + n])[0] != _masked_crc(data):
            raise ValueError(f"{path}: bad data CRC at byte {i}")
        i += 16 + n
        step, row = 0, {}
        for num, _, val in _fields(data):
            if num == 2:
                step = val
            elif num == 5:
                for vnum, _, v in _fields(val):
                    if vnum != 1:
                        continue
                    tag, value = None, None
                    for fnum, _, f in _fields(v):
                        if fnum == 1:
                            tag = f.decode()
                        elif fnum == 2:
                            value = struct.unpack("<f", f)[0]
                    if tag is not None and value is not None:
                        row[tag] = value
        if row:
            rows.append({"step": step, **row})
    return rows


class MultiWriter(MetricWriter):
    """Fan out to several writers (as ``clu.metric_writers.MultiWriter``)."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def create_default_writer(
    workdir: str | os.PathLike | None,
    *,
    console: Callable[[str], None] | None = None,
    just_logging: bool = False,
) -> MetricWriter:
    """JSONL (``metrics.jsonl``) + TensorBoard (``tb/``) under ``workdir`` (+ console lines through
    ``console``); on processes other than 0, or with ``just_logging``, only the console."""
    writers: list[MetricWriter] = []
    if workdir is not None and not just_logging and jax.process_index() == 0:
        workdir = epath.Path(workdir)
        writers += [JsonlWriter(workdir / "metrics.jsonl"), TensorBoardWriter(workdir / "tb")]
    if console is not None:
        writers.append(ConsoleWriter(console))
    return MultiWriter(writers)
