"""Reading landing files of every format into raw records, keeping what cannot be read."""

import gzip
import json
import zlib

import duckdb
import pytest

from assets.landing_files import LandingFileError, read_landing_file
from tests.ingest_helpers import write


def rows(path):
    out = []
    for table in read_landing_file(path):
        out.extend(zip(table["line_no"].to_pylist(), table["record"].to_pylist(), table["read_error"].to_pylist()))
    return out


def test_json_lines_keep_line_numbers_skip_blanks_and_flag_invalid_utf8(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"a": 1}\r\n\n  \n{"b": "\xff"}\n{"c": "caf\xc3\xa9"}')
    assert rows(path) == [(1, '{"a": 1}', None), (4, '{"b": "\\xff"}', "invalid_utf8"), (5, '{"c": "café"}', None)]


def test_gzip_json_lines(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert [r[0] for r in rows(path)] == [1, 2]


def test_csv_rows_become_json_objects_keyed_by_header(tmp_path):
    path = write(tmp_path / "a.csv", 'user_id,text,text\nu1,"multi\nline",x\nu2,,\nu3\nu4,"bad"quote,z\nu5,ok,y\n')
    got = rows(path)
    assert got[0] == (2, json.dumps({"user_id": "u1", "text": "multi\nline", "text_2": "x"}), None)
    assert got[1] == (4, json.dumps({"user_id": "u2", "text": None, "text_2": None}), None)
    assert got[2] == (5, "u3", "wrong_field_count")
    assert got[3][0] == 6 and got[3][2] == "bad_csv" and "bad" in got[3][1]
    assert got[4][0] == 7 and got[4][2] is None


def test_csv_with_invalid_utf8_keeps_the_row_escaped(tmp_path):
    path = write(tmp_path / "a.csv", b"user_id,x\nu1,\xff\nu2,ok\n")
    got = rows(path)
    assert got[0][0] == 2 and got[0][2] == "invalid_utf8" and "\\xff" in got[0][1]
    assert got[1] == (3, json.dumps({"user_id": "u2", "x": "ok"}), None)


def test_empty_files_have_no_rows(tmp_path):
    assert rows(write(tmp_path / "a.jsonl", "")) == []
    assert rows(write(tmp_path / "a.csv", "")) == []
    assert rows(write(tmp_path / "b.csv", "user_id,ts\n")) == []


def test_parquet_rows_keep_their_types(tmp_path):
    path = tmp_path / "a.parquet"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT 'u1' AS user_id, 4.5 AS rating UNION ALL SELECT 'u2', 3) TO '{path}' (FORMAT parquet)")
    assert [json.loads(r[1]) for r in rows(path)] == [{"user_id": "u1", "rating": 4.5}, {"user_id": "u2", "rating": 3}]


def test_an_unreadable_file_names_itself(tmp_path):
    """The reader raises; the loader turns the error into one `unreadable_file` row whose
    record is `problem`: what is wrong, without the path or any of the file's bytes."""
    path = write(tmp_path / "broken.parquet", b"not parquet at all")
    with pytest.raises(LandingFileError, match="broken.parquet") as raised:
        rows(path)
    assert not raised.value.transient and "Parquet" in raised.value.problem
    gz = write(tmp_path / "broken.jsonl.gz", b"not gzip")
    with pytest.raises(LandingFileError, match="broken.jsonl.gz") as raised:
        rows(gz)
    assert not raised.value.transient and raised.value.problem == "not gzip"
    assert str(tmp_path) not in raised.value.problem


def test_corrupt_deflate_data_is_an_unreadable_file_not_a_crash(tmp_path):
    data = bytearray(gzip.compress(b'{"a": 1}\n' * 200, mtime=0))
    data[10] ^= 0xFF  # the first block's header, right after the gzip header: zlib notices
    path = write(tmp_path / "flipped.jsonl.gz", bytes(data))
    with pytest.raises(LandingFileError, match="flipped.jsonl.gz") as raised:
        rows(path)
    assert isinstance(raised.value.__cause__, zlib.error)
    assert not raised.value.transient and raised.value.problem.startswith("corrupt gzip: Error -3")


def test_a_vanished_file_is_reported_as_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        rows(tmp_path / "gone.jsonl")
