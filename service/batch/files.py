"""Files of `segpress batch`: the input's parts and records, the output dataset.

Input is JSONL (one JSON object per line) or Parquet (a file, or a directory
of *.parquet files read in sorted order), with an id field and a text field.
Rows are numbered from 0: the line number in JSONL (blank lines are skipped
but counted), the row position in Parquet.

The input is cut into parts of `part_rows` records. Part i becomes the file
OUTPUT/part-{i:06d}.parquet, written under a hidden temporary name and then
renamed, so a part is either complete or absent: a run killed at any point
leaves only whole parts, and a later run does the missing ones. OUTPUT also
holds `_manifest.json` (what the parts were made with) and `_lock`; names
starting with `_` or `.` are skipped by Parquet readers, so OUTPUT reads as
one dataset: `pyarrow.parquet.read_table(OUTPUT)`.

Duplicate ids: the first row with an id is compressed; later rows with the
same id are skipped (counted, not written), so every id is in the output once.
Ids are strings or integers; an integer id and a string id that read the same
(7 and "7") would be one id in the output, so such an input is refused before
the job starts. A UTF-8 byte order mark at the start of a JSONL file is
skipped.
"""

import fcntl
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

# One output row per compressed (or failed) input record.
SCHEMA = pa.schema([
    ("id", pa.string()),                  # null when the row has no usable id
    ("row", pa.int64()),                  # row number in the input
    ("code", pa.int32()),                 # gRPC status code: 0 OK, 3 INVALID_ARGUMENT, ...
    ("message", pa.string()),             # why it failed; empty when code is 0
    ("text", pa.string()),                # compressed text (text compressors)
    ("tensor", pa.binary()),              # soft tokens, little-endian, row-major
    ("tensor_dtype", pa.string()),        # float32, float16 or bfloat16
    ("tensor_shape", pa.list_(pa.int64())),
    ("original_tokens", pa.int64()),
    ("compressed_tokens", pa.int64()),
    ("segments", pa.int32()),
    ("cache_hits", pa.int32()),
    ("cache_misses", pa.int32()),
])

MANIFEST = "_manifest.json"
_PART = re.compile(r"part-(\d+)\.parquet")


class BatchError(Exception):
    """The job cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class Record:
    """One input row: its id and text, or why it cannot be compressed."""

    row: int
    id: str | None
    text: str | None
    error: str = ""


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of the input; JSONL parts also carry their bytes."""

    index: int
    start: int
    stop: int
    records: int                  # records to compress (duplicates excluded)
    offset: int = 0               # JSONL: byte offset of row `start`
    length: int = 0               # JSONL: bytes of rows start..stop-1
    skip: tuple[int, ...] = ()    # rows whose id appeared earlier in the input


@dataclass
class Plan:
    parts: list[Part]
    duplicates: int
    duplicate_ids: list[str]      # the first few, for the warning


# -- records -----------------------------------------------------------------


def make_record(row: int, id_value, text_value, id_field: str, text_field: str) -> Record:
    """Checks one row's raw id and text values (None: missing)."""
    rid, error = _check_id(id_value, id_field)
    text, text_error = _check_text(text_value, text_field)
    return Record(row, rid, text, error or text_error)


def _check_id(value, field: str) -> tuple[str | None, str]:
    if value is None or value == "":
        return None, f"missing id (field {field!r})"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"id must be a string or an integer, got {type(value).__name__}"
    value = str(value)
    if not _valid_utf8(value):
        return None, "id is not valid UTF-8"
    return value, ""


def _check_text(value, field: str) -> tuple[str | None, str]:
    if value is None:
        return None, f"missing text (field {field!r})"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "text is not valid UTF-8"
    if not isinstance(value, str):
        return None, f"text must be a string, got {type(value).__name__}"
    if not _valid_utf8(value):
        return None, "text is not valid UTF-8"
    return value, ""


def _typed_id(value, field: str):
    """The id as the input has it (str or int), or None when it is not usable."""
    return value if _check_id(value, field)[0] is not None else None


def _valid_utf8(s: str) -> bool:
    """False for strings with lone surrogates (undecodable input bytes)."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -- input -------------------------------------------------------------------


def open_input(path: str, fmt: str, id_field: str, text_field: str):
    """A JsonlInput or ParquetInput for `path`; `fmt` is jsonl, parquet or auto."""
    p = Path(path)
    if not p.exists():
        raise BatchError(f"input {path} does not exist")
    if fmt == "auto":
        fmt = "parquet" if p.is_dir() or p.suffix == ".parquet" else "jsonl"
    cls = ParquetInput if fmt == "parquet" else JsonlInput
    return cls(p, id_field, text_field)


class JsonlInput:
    def __init__(self, path: Path, id_field: str, text_field: str):
        self.path, self.id_field, self.text_field = path, id_field, text_field

    def files(self) -> list[Path]:
        return [self.path]

    def scan(self):
        """(row, id or None, end byte offset) of every record, in order."""
        offset = 0
        with open(self.path, "rb") as f:
            for row, raw in enumerate(f):
                offset += len(raw)
                obj = self._object(row, raw)
                if obj is None:
                    continue
                # Planning needs only the id; the text is checked when its part is read.
                rid = _typed_id(obj.get(self.id_field), self.id_field) if isinstance(obj, dict) else None
                yield row, rid, offset

    def read(self, part: Part) -> list[Record]:
        with open(self.path, "rb") as f:
            f.seek(part.offset)
            lines = f.read(part.length).split(b"\n")
        records = (self._parse(part.start + i, raw) for i, raw in enumerate(lines))
        return [r for r in records if r is not None and r.row not in part.skip]

    def _parse(self, row: int, raw: bytes) -> Record | None:
        obj = self._object(row, raw)
        if obj is None:
            return None
        if isinstance(obj, str):
            return Record(row, None, None, obj)
        return make_record(row, obj.get(self.id_field), obj.get(self.text_field),
                           self.id_field, self.text_field)

    def _object(self, row: int, raw: bytes) -> dict | str | None:
        """The line's JSON object, an error message when it is not one, or
        None for a blank line."""
        if row == 0:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        if not raw.strip():
            return None
        try:
            # surrogateescape: bad bytes become lone surrogates, so a line
            # with undecodable text still yields its id.
            obj = json.loads(raw.decode("utf-8", "surrogateescape"))
        except ValueError as e:
            return f"line {row + 1} is not valid JSON: {e}"
        if not isinstance(obj, dict):
            return f"line {row + 1} is not a JSON object"
        return obj


class ParquetInput:
    def __init__(self, path: Path, id_field: str, text_field: str):
        self.path, self.id_field, self.text_field = path, id_field, text_field
        self.dataset = pads.dataset([str(f) for f in self.files()], format="parquet")
        names = self.dataset.schema.names
        for field, flag in ((id_field, "--id-field"), (text_field, "--text-field")):
            if field not in names:
                raise BatchError(f"{path} has no column {field!r} (columns: "
                                 f"{', '.join(names)}); name the column with {flag}")

    def files(self) -> list[Path]:
        if self.path.is_dir():
            found = sorted(self.path.rglob("*.parquet"))
            if not found:
                raise BatchError(f"no *.parquet files under {self.path}")
            return found
        return [self.path]

    def scan(self):
        row = 0
        for batch in self.dataset.to_batches(columns=[self.id_field]):
            for value in batch.column(0).to_pylist():
                yield row, _typed_id(value, self.id_field), 0
                row += 1

    def read(self, part: Part) -> list[Record]:
        table = self.dataset.take(pa.array(range(part.start, part.stop)),
                                  columns=[self.id_field, self.text_field])
        ids, texts = (table.column(i).to_pylist() for i in range(2))
        return [make_record(part.start + i, rid, text, self.id_field, self.text_field)
                for i, (rid, text) in enumerate(zip(ids, texts))
                if part.start + i not in part.skip]


def plan(source, part_rows: int) -> Plan:
    """Cuts the input into parts of `part_rows` records and finds duplicate ids
    (the first occurrence wins). Deterministic for a given input."""
    seen: dict[str, tuple[object, int]] = {}  # id as text -> (the id, its first row)
    parts: list[Part] = []
    duplicate_ids: list[str] = []
    n_duplicates = 0
    current: list[tuple[int, int]] = []  # (row, end offset) of this part's records
    skip: list[int] = []
    start_row = start_offset = 0  # a part starts where the previous one ends

    def close():
        nonlocal start_row, start_offset, current, skip
        stop, end = current[-1][0] + 1, current[-1][1]
        parts.append(Part(len(parts), start_row, stop, len(current) - len(skip),
                          start_offset, end - start_offset, tuple(skip)))
        start_row, start_offset, current, skip = stop, end, [], []

    for row, rid, end in source.scan():
        current.append((row, end))
        if rid is not None:
            key = str(rid)
            if key in seen and type(seen[key][0]) is not type(rid):
                first, first_row = seen[key]
                raise BatchError(
                    f"row {row} has id {rid!r} and row {first_row} has id {first!r}: an "
                    "integer and a string id that read the same would be one id in the "
                    "output; make the ids all strings or all integers")
            if key in seen:
                n_duplicates += 1
                skip.append(row)
                if len(duplicate_ids) < 5:
                    duplicate_ids.append(key)
            else:
                seen[key] = (rid, row)
        if len(current) == part_rows:
            close()
    if current:
        close()
    return Plan(parts, n_duplicates, duplicate_ids)


def signature(source) -> list:
    """Name, size and modification time of each input file: a changed input
    changes it."""
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in source.files()]


# -- output ------------------------------------------------------------------


class OutputDir:
    """The output dataset: part files, the manifest, a lock against two
    writers at once."""

    def __init__(self, path: str):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise BatchError(f"output {path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / "_lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"another segpress batch is writing to {path}") from None
        for stale in self.path.glob(".*.tmp"):  # left by a killed run
            stale.unlink()

    def close(self) -> None:
        self._lock.close()

    def done(self) -> set[int]:
        """Indices of the parts already written."""
        return {int(m.group(1)) for p in self.path.iterdir() if (m := _PART.fullmatch(p.name))}

    def rows(self) -> int:
        """Rows in all part files."""
        return sum(pq.read_metadata(p).num_rows for p in self.path.glob("part-*.parquet"))

    def read_manifest(self) -> dict | None:
        p = self.path / MANIFEST
        return json.loads(p.read_text()) if p.exists() else None

    def write_manifest(self, manifest: dict) -> None:
        _atomic_write(self.path / MANIFEST,
                      lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n"))


def write_part(out_dir: str, index: int, rows: list[dict]) -> None:
    """Writes part `index` atomically (temporary file, fsync, rename)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    _atomic_write(Path(out_dir) / f"part-{index:06d}.parquet",
                  lambda tmp: pq.write_table(table, tmp))


def _atomic_write(final: Path, write) -> None:
    # A unique temporary name: parts may be written from several hosts.
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(final.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
