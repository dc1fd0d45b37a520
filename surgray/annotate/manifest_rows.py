"""A manifest file's rows: CSV, JSONL or Parquet, each row a dict or the reason it is bad.

One bad row never fails the file: bytes that are not UTF-8, a broken CSV quote, bad JSON or an
unknown key become that row's reason (`surgray.annotate.manifest` records it as a
`ManifestError`); only an unusable file (unknown format, missing `video_uri` column, a header or
Parquet file that cannot be read) raises `ManifestInvalid`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from surgray.errors import UserError, one_line
from surgray.io.storage import Storage

COLUMNS = ("video_uri", "video_id", "text", "prompts")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8 (surrogateescape)


@dataclass(frozen=True)
class ManifestError:
    row: int | None  # None: found when the video was probed, not in a row
    reason: str
    video_id: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else f"video {self.video_id}"
        return f"{where}: {self.reason}"


class ManifestInvalid(UserError, ValueError):
    """Nothing to annotate: the manifest or prefix is unusable, or no row is valid."""

    def __init__(self, message: str, errors: tuple[ManifestError, ...] = ()):
        shown = "".join(f"\n  {e}" for e in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        super().__init__(message + shown + more)
        self.errors = errors


def _format(uri: str) -> str:
    lower = uri.lower()
    for suffix, kind in (
        (".csv", "csv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
    ):
        if lower.endswith(suffix):
            return kind
    raise ManifestInvalid(f"{uri}: unknown manifest format; use .csv, .jsonl or .parquet")


def _read_bytes(uri: str, *, storage: Storage) -> bytes:
    fs, path = storage.filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ManifestInvalid(f"{uri}: manifest not found") from None


def _check_columns(uri: str, names: list[str]) -> None:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise ManifestInvalid(f"{uri}: unknown columns {unknown} (known: {', '.join(COLUMNS)})")
    if "video_uri" not in names:
        raise ManifestInvalid(f"{uri}: no video_uri column")


def _undecodable(text: str) -> int | None:
    """Offset of the first byte that was not UTF-8 (decoded with surrogateescape), or None."""
    match = _ESCAPED_BYTE.search(text)
    return None if match is None else match.start()


def manifest_rows(uri: str, *, storage: Storage) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, row dict or the reason it could not be read) for each row of the file."""
    kind = _format(uri)
    payload = _read_bytes(uri, storage=storage)
    if kind == "csv":
        yield from _csv_rows(uri, payload)
    elif kind == "jsonl":
        yield from _jsonl_rows(payload)
    else:
        yield from _parquet_rows(uri, payload)


def _csv_rows(uri: str, payload: bytes) -> Iterator[tuple[int, dict[str, Any] | str]]:
    # Bytes that are not UTF-8 survive decoding as lone surrogates, so one bad row is reported
    # as that row instead of failing the whole manifest (quoted cells may span lines).
    text = payload.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        names = [n.strip() for n in reader.fieldnames or []]
    except csv.Error as exc:
        raise ManifestInvalid(f"{uri}: the CSV header cannot be read: {exc}") from None
    if any(_undecodable(n) is not None for n in names):
        raise ManifestInvalid(f"{uri}: the CSV header is not UTF-8 text; save the file as UTF-8")
    _check_columns(uri, names)
    number = 0
    while True:
        number += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield number, f"unreadable CSV: {exc}"
            return  # the reader cannot resynchronise after a broken quote
        if None in row:
            yield number, "more cells than columns"
            continue
        bad = next((k for k, v in row.items() if v and _undecodable(v) is not None), None)
        if bad is not None:
            yield number, f"{bad.strip()}: not UTF-8 text; save the manifest as UTF-8"
            continue
        yield number, {k.strip(): (v if v != "" else None) for k, v in row.items()}


def _jsonl_rows(payload: bytes) -> Iterator[tuple[int, dict[str, Any] | str]]:
    lines = payload.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, f"not UTF-8 text (byte {exc.start}); save the manifest as UTF-8"
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"bad JSON: {exc.msg} at char {exc.pos}"
            continue
        except RecursionError:
            yield number, "bad JSON: nested too deeply"
            continue
        if not isinstance(row, dict):
            yield number, f"expected a JSON object, got {type(row).__name__}"
            continue
        unknown = sorted(set(row) - set(COLUMNS))
        yield number, (f"unknown key {unknown[0][:40]!r}" if unknown else row)


def _parquet_rows(uri: str, payload: bytes) -> Iterator[tuple[int, dict[str, Any] | str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(payload))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestInvalid(f"{uri}: not a readable Parquet file: {one_line(exc, 200)}") from None
    _check_columns(uri, table.column_names)
    try:
        yield from enumerate(table.to_pylist(), start=1)
        return
    except UnicodeDecodeError:
        pass  # Arrow keeps strings unvalidated; find the rows that are not UTF-8 one by one
    for number in range(1, table.num_rows + 1):
        try:
            yield number, table.slice(number - 1, 1).to_pylist()[0]
        except UnicodeDecodeError:
            yield number, "not UTF-8 text; write the manifest's strings as UTF-8"
