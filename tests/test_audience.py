"""`portrait audience`: the predicate grammar, what it selects, and what it refuses."""

import duckdb
import pytest

from orchestration.audience import PROFILE_COLUMNS, select_audience, tokenize, validate_predicate
from orchestration.cli import main
from tests.synthetic_profiles import population, write_profiles

HOSTILE = [
    ("nonsense = 1", "unknown column 'nonsense'"),
    ("1=1; DROP TABLE users", "';' at position 4"),
    ("' OR 1=1 --", "unterminated string"),
    ("region = 'north' -- and more", "comments are not allowed"),
    ("region = 'north' /* hidden */", "comments are not allowed"),
    ("user_id IN (SELECT user_id FROM user_profiles)", "unknown column 'SELECT'"),
    ("lower(region) = 'north'", "function calls are not allowed: 'lower'"),
    ("region = upper('north')", "function calls are not allowed: 'upper'"),
    ("region::VARCHAR = 'north'", "unexpected character ':'"),
    ("frequency > 1 UNION SELECT 1", "unexpected 'UNION'"),
    ("events = events + 1", "unexpected character '+'"),
    ("interest IS NULL", "unknown column 'interest'"),
    ("region", "expected a comparison"),
    ("region = 'north' AND", "ends where a column or a value should be"),
    ("(region = 'north'", "expected ')'"),
    ("region = NULL", "IS NULL"),
    ("", "the predicate is empty"),
    ("frequency BETWEEN 1 OR 3", "AND in BETWEEN"),
    ("3x = 1", "malformed number"),
    ('"region" = 1', "unexpected character '\"'"),
]


@pytest.fixture
def planted(home):
    frame, interest, has = population(dimension=16)
    frame.loc[0, "top_category"] = "Kid's Toys"
    path = home / "warehouse.duckdb"
    write_profiles(path, frame, interest, has)
    con = duckdb.connect(str(path))
    con.register("_planted", frame[["user_id", "planted"]])
    con.execute("CREATE TABLE user_segments AS SELECT user_id, 1::INTEGER AS segment_id, planted AS segment FROM _planted")
    con.close()
    return path, frame


def test_valid_predicates_are_rebuilt_with_quoted_qualified_columns():
    condition = validate_predicate("Lifecycle = 'active' and NOT (monetary <= -1.5e2 OR segment in ('a', 'it''s'))")
    assert condition.sql == ("p.\"lifecycle\" = 'active' AND NOT (p.\"monetary\" <= -1.5e2 OR s.\"segment\" IN "
                             "('a', 'it''s'))")
    assert condition.columns == {"lifecycle", "monetary", "segment"} and condition.needs_segments
    assert validate_predicate("region IS NOT NULL").sql == 'p."region" IS NOT NULL'
    assert validate_predicate("age NOT LIKE '1%' AND events NOT BETWEEN 1 AND 5").sql == (
        "p.\"age\" NOT LIKE '1%' AND p.\"events\" NOT BETWEEN 1 AND 5")
    assert not validate_predicate("frequency >= 2").needs_segments
    assert [t.kind for t in tokenize("a<>'x'")] == ["name", "op", "string"]


@pytest.mark.parametrize(("predicate", "message"), HOSTILE)
def test_anything_outside_the_grammar_is_refused_with_the_token_and_the_columns(predicate, message):
    with pytest.raises(ValueError) as raised:
        validate_predicate(predicate)
    text = str(raised.value)
    assert message in text, text
    assert "Valid columns: active_days, age, as_of" in text and "segment" in text


def test_valid_predicates_select_the_right_users(planted):
    path, frame = planted
    ids = frame.set_index("user_id")

    def expected(mask):
        return sorted(ids.index[mask])

    assert select_audience(path, "lifecycle = 'active' AND monetary > 100") == expected(
        (ids.lifecycle == "active") & (ids.monetary > 100))
    assert select_audience(path, "segment = 'browsers'") == expected(ids.planted == "browsers")
    assert select_audience(path, "sentiment IS NULL") == expected(ids.sentiment.isna())
    assert select_audience(path, "sentiment < -0.3 OR region LIKE 'nor%'") == expected(
        (ids.sentiment < -0.3) | ids.region.str.startswith("nor"))
    assert select_audience(path, "top_category IN ('Books', 'Garden') AND NOT frequency BETWEEN 1 AND 3") == expected(
        ids.top_category.isin(["Books", "Garden"]) & ~ids.frequency.between(1, 3))
    assert select_audience(path, "top_category = 'Kid''s Toys'") == [frame.user_id[0]]
    assert select_audience(path, "segment IS NULL") == []
    assert select_audience(path, "region = 'x'' OR ''1''=''1' OR region = 'x'' --'") == []  # quotes stay inside


@pytest.mark.parametrize(("predicate", "message"), HOSTILE[:8])
def test_refused_predicates_leave_the_tables_intact(planted, predicate, message):
    path, frame = planted
    with pytest.raises(ValueError, match="invalid predicate"):
        select_audience(path, predicate)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM user_profiles").fetchone()[0] == len(frame)
        assert con.execute("SELECT count(*) FROM user_segments").fetchone()[0] == len(frame)


def test_cli_writes_the_csv_and_reports_the_count(planted, capsys, tmp_path):
    path, frame = planted
    out = tmp_path / "out" / "audience.csv"
    assert main(["audience", "--where", "segment = 'loyal' AND frequency >= 8", "--out", str(out)]) == 0
    wanted = sorted(frame.user_id[(frame.planted == "loyal") & (frame.frequency >= 8)])
    assert out.read_text().splitlines() == ["user_id", *wanted]
    assert f"{len(wanted):,} users written to" in capsys.readouterr().err
    assert [p.name for p in out.parent.iterdir()] == ["audience.csv"]  # no temporary file left behind

    assert main(["audience", "--where", "region = 'west'"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["user_id", *sorted(frame.user_id[frame.region == "west"])]
    assert captured.err.strip() == f"{(frame.region == 'west').sum()} users"


def test_cli_exits_2_for_a_bad_predicate_or_missing_tables(planted, capsys, tmp_path):
    path, _ = planted
    out = tmp_path / "never.csv"
    assert main(["audience", "--where", "1=1; DROP TABLE user_profiles", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "invalid predicate" in err and "Valid columns:" in err and not out.exists()
    assert main(["audience", "--where", "age > 5"]) == 2  # valid grammar, but a text column against a number
    assert "does not run on user_profiles" in capsys.readouterr().err

    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE user_segments")
    assert main(["audience", "--where", "segment = 'loyal'"]) == 2
    assert "materialize the user_segments asset" in capsys.readouterr().err
    assert main(["audience", "--where", "region = 'west'"]) == 0  # no segment in the predicate: no join needed
    capsys.readouterr()
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE user_profiles")
    assert main(["audience", "--where", "region = 'west'"]) == 2
    assert "materialize the user_profiles asset" in capsys.readouterr().err


def test_the_default_columns_are_the_scalar_columns_of_the_profile(planted):
    path, _ = planted
    from orchestration.audience import profile_columns

    with duckdb.connect(str(path), read_only=True) as con:
        assert profile_columns(con) == list(PROFILE_COLUMNS)
