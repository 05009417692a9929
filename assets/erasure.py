"""Erasure holds: what `portrait forget` and ingestion share, so that an erased user stays erased.

`portrait forget` (orchestration/forget.py) rewrites landing files without a user and records
the erasure in `erasure_audit` under a salted hash of the id. Ingestion reads that table on
every load: a row of an erased user that comes back in a landing file (upstream delivers the
original file again, a backfill, a crash recovery) is not loaded. In `raw_events` it stays as
an empty `erased` row (no record text), so that the counts still reconcile; it is neither
loaded into `events` nor quarantined; and the landing file it came from is rewritten without
it, the way `portrait forget` rewrites files. See docs/privacy.md.

Whether a row belongs to an erased user is decided as `portrait forget` decides it for a
landing row: by its parsed `user_id` (compared as text), and for a row that cannot be parsed
(or whose id is an object or a list) by a whole-token mention of the id.
"""

from __future__ import annotations

import csv
import gzip
import hmac
import io
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from assets.validation import is_object_sql
from resources.home import portrait_home

SALT_FILE = "erasure.salt"
AUDIT_TABLE = "erasure_audit"
#: `read_error` of a raw row whose record was removed at ingestion because its user was erased.
ERASED = "erased"
_ASCII_WORD = "0-9A-Za-z_"


class ErasureHoldError(RuntimeError):
    """Erased users are on record, but their hashes cannot be computed: nothing may be loaded."""


class UserMatcher:
    """Decides whether a landing row or a warehouse record belongs to one user.

    A parsed row belongs to the user when its `user_id` is the id (compared as text,
    since ids may be numbers in JSON and CSV). A row that cannot be parsed belongs to
    the user when it holds the id as a whole token: erasure errs on the side of removing.
    """

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.needle = user_id.encode("utf-8")
        self._token = re.compile(f"(?<![{_ASCII_WORD}]){re.escape(user_id)}(?![{_ASCII_WORD}])")

    def mentions(self, text: str) -> bool:
        return self.user_id in text and self._token.search(text) is not None

    def value(self, value: object) -> bool:
        """A parsed `user_id` value: strings trimmed (ingestion trims them), numbers as text."""
        if value is None or isinstance(value, bool):
            return False
        if isinstance(value, str):
            return value.strip() == self.user_id
        if isinstance(value, int):
            return str(value) == self.user_id
        if isinstance(value, float):
            return (value.is_integer() and str(int(value)) == self.user_id) or repr(value) == self.user_id
        # an object or list in place of an id is quarantined with its text: remove it if it names the user
        return self.mentions(json.dumps(value, ensure_ascii=False, default=str))

    def mask(self, text: str) -> str:
        """`text` with every whole-token occurrence of the id replaced by `[user]`."""
        return self._token.sub("[user]", text)

    def sql_pattern(self) -> str:
        """The whole-token test for DuckDB's regexp_matches (RE2 has no look-behind)."""
        escaped = "".join(c if c.isalnum() or not c.isascii() else f"\\x{{{ord(c):02x}}}" for c in self.user_id)
        return f"(^|[^{_ASCII_WORD}]){escaped}([^{_ASCII_WORD}]|$)"


# --- landing files -------------------------------------------------------------------------------------------------


def count_user_rows(path: Path, matcher: UserMatcher) -> int:
    if path.name.lower().endswith(".parquet"):
        return sum(_parquet_mask(path, matcher))
    return sum(1 for _, belongs in _records(path, matcher) if belongs)


def rewrite_without_user(path: Path, matcher: UserMatcher) -> int:
    """Rewrite `path` without the user's rows, atomically; return how many rows went.

    Kept rows are copied byte for byte (line ends, quoting, even invalid bytes), so
    the only change ingestion sees is the missing rows. The new file is written under a
    `_` name in the same folder, which readers skip, and renamed over the old one.
    """
    if path.name.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        mask = _parquet_mask(path, matcher)
        removed = sum(mask)
        if removed:
            table = pq.read_table(path)
            keep = pa.array([not belongs for belongs in mask], pa.bool_())
            _atomic_replace(path, lambda tmp: pq.write_table(table.filter(keep), tmp) or True)
        return removed
    removed = 0

    def write(tmp: Path) -> bool:
        nonlocal removed
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(tmp, "wb") as out:
            for chunk, belongs in _records(path, matcher):
                if belongs:
                    removed += 1
                else:
                    out.write(chunk)
        return removed > 0  # nothing of the user's left (the file changed since the scan): keep it as it is

    _atomic_replace(path, write)
    return removed


def _records(path: Path, matcher: UserMatcher) -> Iterator[tuple[bytes, bool]]:
    """The file as consecutive byte chunks (one per row, header and blank lines included),
    each with whether it belongs to the user. Joined, the chunks are the file."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        if name.endswith((".csv", ".csv.gz")):
            yield from _csv_records(handle.read(), matcher)
        else:
            for number, line in enumerate(handle):
                yield line, _json_line_belongs(line, matcher, first=number == 0)


def _json_line_belongs(line: bytes, matcher: UserMatcher, first: bool = False) -> bool:
    # Only a line holding the id's bytes, or an escape that could spell it, can belong to the user.
    if matcher.needle not in line and b"\\" not in line:
        return False
    try:
        text = line.decode("utf-8")
        valid_utf8 = True
    except UnicodeDecodeError:
        text = line.decode("utf-8", "replace")
        valid_utf8 = False
    try:
        record = json.loads(text.lstrip("\ufeff") if first else text)
    except ValueError:
        return matcher.mentions(text)
    if not isinstance(record, dict):
        return matcher.mentions(text)
    if matcher.value(record.get("user_id")):
        return True
    # a line that is not valid UTF-8 is quarantined whole, with its text: remove it if it names the user
    return not valid_utf8 and matcher.mentions(text)


def _csv_records(data: bytes, matcher: UserMatcher) -> Iterator[tuple[bytes, bool]]:
    """Rows as the landing reader splits them: the header, then one chunk per record
    (several lines for a quoted field with line breaks, or for a row the parser rejects)."""
    if matcher.needle not in data:  # CSV has no escapes: without the id's bytes no row can be the user's
        yield data, False
        return
    text = data.decode("utf-8", "surrogateescape")  # invalid bytes survive the round trip
    lines = io.StringIO(text, newline="").readlines()  # split exactly as csv.reader reads them
    reader = csv.reader(iter(lines), strict=True)
    last = 0
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:  # bad_csv: the rejected lines are one quarantined row
            chunk = "".join(lines[last:reader.line_num])
            last = reader.line_num
            yield _encode(chunk), header is not None and matcher.mentions(chunk)
            continue
        chunk = "".join(lines[last:reader.line_num])
        last = reader.line_num
        if header is None:
            header = [h.strip().lstrip("\ufeff") for h in row]
            yield _encode(chunk), False
            continue
        if not any(cell.strip() for cell in row):
            belongs = False
        elif len(row) == len(header) and "user_id" in header:
            belongs = matcher.value(row[header.index("user_id")])
        else:  # wrong_field_count: which cell is the id is unknown, so any cell that is the id counts
            belongs = any(matcher.value(cell) for cell in row)
        yield _encode(chunk), belongs
    if last < len(lines):
        yield _encode("".join(lines[last:])), False


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _parquet_mask(path: Path, matcher: UserMatcher) -> list[bool]:
    import pyarrow.parquet as pq

    if "user_id" not in pq.read_schema(path).names:
        return [False] * pq.read_metadata(path).num_rows
    column = pq.read_table(path, columns=["user_id"]).column("user_id")
    return [matcher.value(value) for value in column.to_pylist()]


def _atomic_replace(path: Path, write: Callable[[Path], bool]) -> None:
    """`write` fills a `_` file beside `path` (readers skip such names) and says whether to
    use it; if so it is synced and renamed over `path`, keeping the file's permissions."""
    fd, name = tempfile.mkstemp(prefix="_forget-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if not write(tmp):
            tmp.unlink()
            return
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- the salted hash -----------------------------------------------------------------------------------------------


def user_hash(user_id: str, home: Path | None = None) -> str:
    """HMAC-SHA256 of the id under a secret salt kept in `$PORTRAIT_HOME/erasure.salt`.

    The same user always gets the same hash (a repeated request can be recognised), but
    nobody without the salt file can find the id by hashing candidate ids.
    """
    return _keyed_hash(_salt(home or portrait_home()), user_id)


def _salt(home: Path) -> bytes:
    path = home / SALT_FILE
    home.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _existing_salt(home)
    salt = secrets.token_bytes(32)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(salt.hex() + "\n")
    return salt


def _keyed_hash(salt: bytes, user_id: str) -> str:
    return hmac.new(salt, user_id.encode("utf-8"), "sha256").hexdigest()


def _existing_salt(home: Path) -> bytes:
    """The salt, for ingestion, which must never make a new one: hashes under a new salt match no audit row."""
    path = home / SALT_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        raise ErasureHoldError(
            f"{AUDIT_TABLE} records erased users, but the salt their hashes were made with ({path}) is missing, "
            "so ingestion cannot keep them out. Restore the file from the backup of $PORTRAIT_HOME; nothing "
            "was loaded") from None


# --- ingestion -----------------------------------------------------------------------------------------------------

_ID_PATH = "'$.\"user_id\"'"
_ID_TYPE = f"CASE WHEN {is_object_sql()} THEN json_type(record, {_ID_PATH}) END"
#: The row's `user_id` as validation reads it (a string or a number, trimmed), or NULL.
_ID_TEXT = (f"CASE WHEN {_ID_TYPE} IN ('VARCHAR', 'BIGINT', 'UBIGINT', 'HUGEINT', 'DOUBLE') "
            f"THEN trim(json_extract_string(record, {_ID_PATH})) END")
#: Rows whose user is told by a whole-token mention: unparsed rows, and ids that are objects or lists.
_BY_MENTION = f"coalesce({_ID_TYPE} IN ('OBJECT', 'ARRAY'), NOT {is_object_sql()})"
_WORD = re.compile(f"[{_ASCII_WORD}]+")
_QUOTED = re.compile(r'"([^"\\]{1,200})"')


def erased_hashes(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The `user_hash` of every erased user; empty when nobody was ever erased."""
    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main' "
                         "AND table_catalog = current_database()", [AUDIT_TABLE]).fetchone()[0]
    if not exists:
        return set()
    return {h for (h,) in con.execute(f"SELECT DISTINCT user_hash FROM {AUDIT_TABLE}").fetchall()}


@dataclass
class ErasedRows:
    """Rows of erased users found in a table of raw rows (`source_file`, `record`, `read_error`).

    `ids` are the erased ids found; they are kept in memory only, never logged or stored."""

    ids: list[str] = field(default_factory=list)
    rows_by_file: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_file.values())


def erase_rows(con: duckdb.DuckDBPyConnection, table: str, where: str = "true", params: list | None = None,
               keep_empty_rows: bool = False, home: Path | None = None) -> ErasedRows:
    """Inside the caller's transaction: find the rows of `table` (limited by `where`) that belong to
    erased users and delete them, or, with `keep_empty_rows`, empty them (record '', read_error
    `erased`). Costs one query when nobody was ever erased.

    The hash is keyed, so it cannot be computed in SQL: the distinct ids of the rows (and the
    tokens of rows that cannot be parsed) are hashed here, and the rows matched by those found.
    """
    hashes = erased_hashes(con)
    if not hashes:
        return ErasedRows()
    salt = _existing_salt(home or portrait_home())
    params = params or []
    texts: list[str] = []
    ids: set[str] = set()
    for (text,) in con.execute(f"SELECT DISTINCT id FROM (SELECT {_ID_TEXT} AS id FROM {table} WHERE {where}) "
                               "WHERE id IS NOT NULL", params).fetchall():
        found = {v for v in _id_variants(text) if _keyed_hash(salt, v) in hashes}
        if found:
            texts.append(text)
            ids |= found
    tokens: set[str] = set()
    for (record,) in con.execute(f"SELECT record FROM {table} WHERE ({where}) AND {_BY_MENTION}", params).fetchall():
        tokens.update(_WORD.findall(record), (q.strip() for q in _QUOTED.findall(record)),
                      (cell.strip() for cell in record.split(",")))
    ids |= {t for t in tokens if t and _keyed_hash(salt, t) in hashes}
    if not ids:
        return ErasedRows()
    pattern = "|".join(f"({UserMatcher(i).sql_pattern()})" for i in sorted(ids))
    matches = (f"({where}) AND (coalesce({_ID_TEXT} IN (SELECT unnest(?::VARCHAR[])), false) "
               f"OR ({_BY_MENTION} AND regexp_matches(record, ?)))")
    matched = [*params, texts, pattern]
    rows_by_file = dict(con.execute(f"SELECT source_file, count(*) FROM {table} WHERE {matches} "
                                    "GROUP BY ALL ORDER BY ALL", matched).fetchall())
    if rows_by_file and keep_empty_rows:
        con.execute(f"UPDATE {table} SET record = '', read_error = '{ERASED}' WHERE {matches}", matched)
    elif rows_by_file:
        con.execute(f"DELETE FROM {table} WHERE {matches}", matched)
    return ErasedRows(sorted(ids), rows_by_file)


def _id_variants(text: str) -> set[str]:
    """The ids a parsed id text stands for, as `UserMatcher.value` compares them (42.0 is 42)."""
    variants = {text, text.strip()}
    if "." in text or "e" in text.lower():
        try:
            number = float(text)
        except ValueError:
            return variants
        variants.add(repr(number))
        if number.is_integer():
            variants.add(str(int(number)))
    return variants


@dataclass
class LandingRewrite:
    rows_by_file: dict[str, int] = field(default_factory=dict)  # file -> rows removed
    failed: dict[str, str] = field(default_factory=dict)  # file -> why it could not be rewritten


def rewrite_landing_files(root: Path, erased: ErasedRows) -> LandingRewrite:
    """Rewrite each landing file (path under `root`) that held rows of erased users without
    them, as `portrait forget` does. A file that cannot be rewritten is reported, not raised:
    the warehouse is clean either way, and the next load of the file tries again."""
    done = LandingRewrite()
    for name in erased.rows_by_file:
        path = root / name
        try:
            done.rows_by_file[name] = sum(rewrite_without_user(path, UserMatcher(i)) for i in erased.ids)
        except FileNotFoundError:
            continue  # removed since it was read: nothing of it is left to clean
        except (OSError, EOFError, ValueError) as error:
            done.failed[name] = f"{type(error).__name__}: {error}"
    return done
