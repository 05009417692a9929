"""Read landing files, any supported format, into uniform raw records.

Every row of every file becomes `(line_no, record, read_error)`: `record` is the row as
a JSON object text (a CSV row is turned into one, keyed by the header), or the row's
text as it was when it could not be read that far. Rows that cannot be read are kept
with a `read_error` code so that validation quarantines them: nothing is dropped here.
Blank lines are not rows.

A file that cannot be read at all (no gzip stream, a truncated one, a Parquet file without
its footer, a CSV header that cannot be parsed) has no rows to keep: the reader raises
`LandingFileError`, and the loader records the file as one row with `unreadable_file`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

CHUNK_BYTES = 32 * 1024 * 1024
RAW_SCHEMA = pa.schema([("line_no", pa.int64()), ("record", pa.string()), ("read_error", pa.string())])

INVALID_UTF8 = "invalid_utf8"
WRONG_FIELD_COUNT = "wrong_field_count"
BAD_CSV = "bad_csv"
#: The `read_error` of the one row that stands for a whole file that cannot be read (line 0).
UNREADABLE_FILE = "unreadable_file"
#: At most this many characters of `LandingFileError.problem`.
PROBLEM_CHARS = 300

csv.field_size_limit(1 << 30)


class LandingFileError(Exception):
    """A landing file that cannot be read at all. Its message names the file and what to do.

    `transient`: an operating-system error (a share or mount failing for a moment) that a
    retry may get past; a corrupt file (bad gzip, truncated Parquet) will fail again.
    `problem`: what is wrong, in a few words, without the file's path or any of its bytes."""

    def __init__(self, message: str, transient: bool = False, problem: str | None = None):
        super().__init__(message)
        self.transient = transient
        self.problem = problem or message


def insert_landing_file(con: duckdb.DuckDBPyConnection, path: Path, insert_sql: str,
                        params: list | None = None) -> int:
    """Insert the file's rows with `insert_sql`, which selects `line_no, record, read_error`
    from `{rows}`; returns how many rows it inserted.

    A plain UTF-8 JSON-lines file is split by DuckDB straight into the target table; every
    other file goes through `read_landing_file` in Arrow chunks.
    """
    params = params or []
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson")) and path.stat().st_size <= FAST_PATH_BYTES and _is_utf8(path):
        try:
            return con.execute(insert_sql.format(rows=f"({_SPLIT_LINES})"), [*params, str(path)]).fetchone()[0]
        except duckdb.IOException as error:
            if not path.exists():
                raise FileNotFoundError(path) from error
            # An existing UTF-8 file that the operating system fails to read. The error has
            # aborted the caller's transaction, so only a retry can get past it.
            raise LandingFileError(f"cannot read landing file {path}: {error}", transient=True) from error
    rows = 0
    for chunk in read_landing_file(path):
        con.register("_chunk", chunk)
        try:
            con.execute(insert_sql.format(rows="_chunk"), params)
        finally:
            con.unregister("_chunk")
        rows += chunk.num_rows
    return rows


def read_landing_file(path: Path) -> Iterator[pa.Table]:
    """Yield the file's rows in chunks of `RAW_SCHEMA` tables, in file order."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            yield from _read_parquet(path)
        elif name.endswith((".csv", ".csv.gz")):
            yield from _read_csv(path)
        else:
            yield from _read_json_lines(path)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error, duckdb.Error, csv.Error) as error:
        if isinstance(error, FileNotFoundError):
            raise
        if not path.exists():  # DuckDB reports a vanished Parquet file as an IOException
            raise FileNotFoundError(path) from error
        raise LandingFileError(
            f"cannot read landing file {path}: {error}. Fix or remove the file, then re-run the partition.",
            transient=isinstance(error, OSError) and not isinstance(error, gzip.BadGzipFile),
            problem=_problem(error, path),
        ) from error


def _problem(error: BaseException, path: Path) -> str:
    """What is wrong with the file, for its quarantine row: no path, none of the file's bytes."""
    text = str(error).strip()
    if isinstance(error, gzip.BadGzipFile):
        # Its "Not a gzipped file (b'..')" repeats the file's first bytes.
        problem = "not gzip" if text.startswith("Not a gzipped file") else f"corrupt gzip: {text}"
    elif isinstance(error, EOFError):
        problem = "truncated: the gzip stream ends before its end marker"
    elif isinstance(error, zlib.error):
        problem = f"corrupt gzip: {text}"
    elif isinstance(error, csv.Error):
        problem = f"CSV header cannot be parsed: {text}"
    elif isinstance(error, duckdb.Error):
        problem = f"not a readable Parquet file (truncated or corrupt): {text}"
    else:
        problem = f"{type(error).__name__}: {text}"
    return problem.replace(str(path), path.name).splitlines()[0][:PROBLEM_CHARS]


def _is_utf8(path: Path) -> bool:
    """Checked before DuckDB reads the file: its error would abort the caller's transaction."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _decode_lines(lines: list[bytes]) -> tuple[list[str], list[str | None]]:
    """Decode a chunk of lines; only when the chunk is not valid UTF-8 is it decoded line by line."""
    blob = b"".join(lines)
    try:
        texts = blob.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        texts, errors = [], []
        for line in lines:
            try:
                texts.append(line.decode("utf-8"))
                errors.append(None)
            except UnicodeDecodeError:
                texts.append(line.decode("utf-8", "backslashreplace"))
                errors.append(INVALID_UTF8)
        return [t.rstrip("\r\n") for t in texts], errors
    if blob.endswith(b"\n"):
        texts.pop()
    return [t.rstrip("\r") for t in texts], [None] * len(texts)


#: Plain JSON-lines files up to this size are split into lines by DuckDB in one pass.
FAST_PATH_BYTES = 512 * 1024 * 1024
BLANK = " \t\r"

# The CASEs keep the rare work (a CRLF ending, a line starting with a blank) off the common path.
_SPLIT_LINES = f"""
SELECT line_no, CASE WHEN suffix(record, chr(13)) THEN rtrim(record, chr(13)) ELSE record END AS record,
       NULL::VARCHAR AS read_error
FROM (SELECT unnest(range(1, len(lines) + 1)) AS line_no, unnest(lines) AS record
      FROM (SELECT string_split(content, chr(10)) AS lines FROM read_text(?)))
WHERE CASE WHEN record = '' THEN false
           WHEN left(record, 1) IN (' ', chr(9), chr(13)) THEN trim(record, '{BLANK}') <> ''
           ELSE true END
"""


def _read_json_lines(path: Path) -> Iterator[pa.Table]:
    line_no = 0
    with _open(path) as handle:
        while lines := handle.readlines(CHUNK_BYTES):
            texts, errors = _decode_lines(lines)
            numbers = range(line_no + 1, line_no + 1 + len(texts))
            line_no += len(texts)
            keep = [i for i, t in enumerate(texts) if t.strip(BLANK)]
            if len(keep) != len(texts):
                numbers = [numbers[i] for i in keep]
                texts = [texts[i] for i in keep]
                errors = [errors[i] for i in keep]
            yield pa.table([pa.array(numbers, pa.int64()), pa.array(texts, pa.string()),
                            pa.array(errors, pa.string())], schema=RAW_SCHEMA)


def _read_csv(path: Path) -> Iterator[pa.Table]:
    """CSV with a header row. Empty cells are absent values. A row with the wrong number
    of fields is kept as its text with `wrong_field_count`."""
    with _open(path) as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
        strict = True
    except UnicodeDecodeError:
        text = data.decode("utf-8", "surrogateescape")
        strict = False
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = _next_row(reader)
    if header is None:
        return
    header = _unique_names([_replace_surrogates(h).strip().lstrip("\ufeff") for h in header])
    numbers, records, errors = [], [], []
    lines: list[str] = []  # the file's lines, split only if a row cannot be parsed
    last_line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            lines = lines or text.split("\n")
            numbers.append(last_line + 1)
            records.append(_replace_surrogates("\n".join(lines[last_line:reader.line_num]).rstrip("\r\n")))
            errors.append(BAD_CSV)
            last_line = reader.line_num
            continue
        start, last_line = last_line + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        error = None
        if not strict and any(_has_surrogates(cell) for cell in row):
            row = [_replace_surrogates(cell) for cell in row]
            error = INVALID_UTF8
        if len(row) != len(header):
            record, error = ",".join(row), error or WRONG_FIELD_COUNT
        else:
            record = json.dumps({k: (v if v != "" else None) for k, v in zip(header, row)}, ensure_ascii=False)
        numbers.append(start)
        records.append(record)
        errors.append(error)
    yield pa.table([pa.array(numbers, pa.int64()), pa.array(records, pa.string()),
                    pa.array(errors, pa.string())], schema=RAW_SCHEMA)


def _read_parquet(path: Path) -> Iterator[pa.Table]:
    con = duckdb.connect()
    try:
        table = con.sql(
            "SELECT (row_number() OVER ())::BIGINT AS line_no, to_json(t)::VARCHAR AS record, "
            "NULL::VARCHAR AS read_error FROM read_parquet($path) AS t",
            params={"path": str(path)},
        ).to_arrow_table()
    finally:
        con.close()
    yield table.cast(RAW_SCHEMA)


def _next_row(reader) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _replace_surrogates(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
