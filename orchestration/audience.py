"""`portrait audience`: the users that a predicate over their profile selects.

The predicate is parsed here, never handed to DuckDB as typed. A small tokenizer and a
recursive-descent parser accept only this grammar, and the SQL that runs is rebuilt from
the parsed tokens (columns quoted and qualified, strings re-quoted):

    predicate  := or
    or         := and ( OR and )*
    and        := not ( AND not )*
    not        := NOT not | '(' or ')' | comparison
    comparison := operand ( ( = | != | <> | < | <= | > | >= ) operand
                          | [NOT] IN '(' literal ( ',' literal )* ')'
                          | [NOT] BETWEEN operand AND operand
                          | [NOT] LIKE operand
                          | IS [NOT] NULL )
    operand    := column | literal
    literal    := 'string' (a quote inside doubled: 'it''s') | number (-12, 3.5, 1e3)

Columns are the scalar columns of `user_profiles` plus `segment` (from `user_segments`).
Anything else (another word, a function call, a semicolon, a comment, a subquery, a
cast) is a `ValueError` that names the offending token and lists the valid columns. The
query runs on a read-only connection.
"""

import csv
import io
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb

#: The scalar columns of `user_profiles` (list, struct and vector columns cannot be compared with a literal).
PROFILE_COLUMNS = (
    "user_id", "as_of", "first_seen", "last_seen", "tenure_days", "recency_days", "active_days", "events", "n_view",
    "n_click", "n_favorite", "n_add_to_cart", "n_purchase", "n_review", "n_rating", "n_search", "n_chat", "engagement",
    "frequency", "monetary", "purchase_recency_days", "lifecycle", "top_category", "top_brand", "sentiment",
    "sentiment_label", "sentiment_trend", "top_intent", "price_index", "price_band", "price_sensitivity", "age",
    "gender", "region",
)
SEGMENT_COLUMN = "segment"
KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "LIKE"})
COMPARISONS = ("<=", ">=", "<>", "!=", "=", "<", ">")
NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Token:
    kind: str  # name, keyword, string, number, op, "(", ")", ","
    text: str  # as typed (a string's value without quotes; a keyword upper-cased)
    position: int  # 1-based character position in the predicate


@dataclass(frozen=True)
class Predicate:
    sql: str  # the rebuilt condition, columns as p."name" / s."segment"
    columns: frozenset[str]  # the columns it reads

    @property
    def needs_segments(self) -> bool:
        return SEGMENT_COLUMN in self.columns


class _Invalid(ValueError):
    pass


def _error(problem: str, columns: Iterable[str]) -> ValueError:
    return _Invalid(f"invalid predicate: {problem}. Valid columns: {', '.join(sorted(columns))}")


def tokenize(predicate: str, columns: Iterable[str] = (*PROFILE_COLUMNS, SEGMENT_COLUMN)) -> list[Token]:
    """The predicate's tokens; a character outside the grammar is a ValueError."""
    columns = tuple(columns)
    tokens: list[Token] = []
    i, n = 0, len(predicate)
    while i < n:
        char = predicate[i]
        if char.isspace():
            i += 1
        elif predicate.startswith("--", i) or predicate.startswith("/*", i):
            raise _error(f"comments are not allowed: {predicate[i:i + 2]!r} at position {i + 1}", columns)
        elif char == ";":
            raise _error(f"';' at position {i + 1}: a predicate is one condition, not statements", columns)
        elif char == "'":
            value, j = [], i + 1
            while True:
                if j >= n:
                    raise _error(f"unterminated string starting at position {i + 1}: {predicate[i:i + 20]!r}", columns)
                if predicate[j] == "'":
                    if predicate.startswith("''", j):
                        value.append("'")
                        j += 2
                        continue
                    break
                value.append(predicate[j])
                j += 1
            tokens.append(Token("string", "".join(value), i + 1))
            i = j + 1
        elif (number := NUMBER.match(predicate, i)) and (char != "-" or _sign_allowed(tokens)):
            tokens.append(Token("number", number.group(), i + 1))
            i = number.end()
            if i < n and (predicate[i].isalnum() or predicate[i] in "_."):
                raise _error(f"malformed number at position {number.start() + 1}: "
                             f"{predicate[number.start():i + 1]!r}", columns)
        elif name := NAME.match(predicate, i):
            word = name.group()
            kind = "keyword" if word.upper() in KEYWORDS else "name"
            tokens.append(Token(kind, word.upper() if kind == "keyword" else word, i + 1))
            i = name.end()
        elif char in "(),":
            tokens.append(Token(char, char, i + 1))
            i += 1
        elif op := next((o for o in COMPARISONS if predicate.startswith(o, i)), None):
            tokens.append(Token("op", op, i + 1))
            i += len(op)
        else:
            raise _error(f"unexpected character {char!r} at position {i + 1}", columns)
    return tokens


def _sign_allowed(tokens: list[Token]) -> bool:
    """A '-' starts a negative number only where an operand may start (no arithmetic in the grammar)."""
    return not tokens or tokens[-1].kind in ("op", "keyword", "(", ",")


class _Parser:
    def __init__(self, tokens: list[Token], columns: dict[str, str]):
        self.tokens, self.columns, self.at, self.used = tokens, columns, 0, set()

    def fail(self, problem: str) -> ValueError:
        return _error(problem, self.columns.values())

    def peek(self) -> Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token.kind == "keyword" and token.text == word:
            self.at += 1
            return True
        return False

    def expect(self, kind: str, text: str | None = None, what: str = "") -> Token:
        token = self.peek()
        if token is None or token.kind != kind or (text is not None and token.text != text):
            found = "the end of the predicate" if token is None else f"{token.text!r} at position {token.position}"
            raise self.fail(f"expected {what or text or kind}, found {found}")
        self.at += 1
        return token

    def parse(self) -> str:
        if not self.tokens:
            raise self.fail("the predicate is empty")
        sql = self.disjunction()
        if (token := self.peek()) is not None:
            raise self.fail(f"unexpected {token.text!r} at position {token.position}")
        return sql

    def disjunction(self) -> str:
        parts = [self.conjunction()]
        while self.keyword("OR"):
            parts.append(self.conjunction())
        return " OR ".join(parts)

    def conjunction(self) -> str:
        parts = [self.negation()]
        while self.keyword("AND"):
            parts.append(self.negation())
        return " AND ".join(parts)

    def negation(self) -> str:
        if self.keyword("NOT"):
            return f"NOT {self.negation()}"
        token = self.peek()
        if token is not None and token.kind == "(":
            self.at += 1
            inner = self.disjunction()
            self.expect(")", what="')'")
            return f"({inner})"
        return self.comparison()

    def comparison(self) -> str:
        first = self.peek()
        left = self.operand()
        token = self.peek()
        if token is not None and token.kind == "op":
            self.at += 1
            return f"{left} {token.text} {self.operand()}"
        if self.keyword("IS"):
            negated = self.keyword("NOT")
            self.expect("keyword", "NULL", what="NULL after IS")
            return f"{left} IS {'NOT ' if negated else ''}NULL"
        negated = "NOT " if self.keyword("NOT") else ""
        if self.keyword("IN"):
            self.expect("(", what="'(' after IN")
            items = [self.literal()]
            while (separator := self.peek()) is not None and separator.kind == ",":
                self.at += 1
                items.append(self.literal())
            self.expect(")", what="',' or ')' in the IN list")
            return f"{left} {negated}IN ({', '.join(items)})"
        if self.keyword("BETWEEN"):
            low = self.operand()
            self.expect("keyword", "AND", what="AND in BETWEEN ... AND ...")
            return f"{left} {negated}BETWEEN {low} AND {self.operand()}"
        if self.keyword("LIKE"):
            return f"{left} {negated}LIKE {self.operand()}"
        found = "the end of the predicate" if token is None else f"{token.text!r} at position {token.position}"
        raise self.fail(f"expected a comparison (=, !=, <>, <, <=, >, >=, IN, BETWEEN, LIKE, IS NULL) after "
                        f"{first.text!r}, found {found}")

    def operand(self) -> str:
        token = self.peek()
        if token is not None and token.kind == "name":
            column = self.columns.get(token.text.lower())
            following = self.tokens[self.at + 1] if self.at + 1 < len(self.tokens) else None
            if following is not None and following.kind == "(":
                raise self.fail(f"function calls are not allowed: {token.text!r}( at position {token.position}")
            if column is None:
                raise self.fail(self.unknown(token))
            self.at += 1
            self.used.add(column)
            return f's."{column}"' if column == SEGMENT_COLUMN else f'p."{column}"'
        return self.literal()

    def literal(self) -> str:
        token = self.peek()
        if token is None:
            raise self.fail("the predicate ends where a column or a value should be")
        if token.kind == "string":
            self.at += 1
            return "'" + token.text.replace("'", "''") + "'"
        if token.kind == "number":
            self.at += 1
            return token.text
        if token.kind == "name" and token.text.lower() not in self.columns:
            if self._called():
                raise self.fail(f"function calls are not allowed: {token.text!r}( at position {token.position}")
            raise self.fail(self.unknown(token))
        if token.kind == "keyword" and token.text == "NULL":
            raise self.fail(f"compare with NULL using IS NULL / IS NOT NULL (position {token.position})")
        raise self.fail(f"expected a {'value' if token.kind == 'name' else 'column or a value'}, "
                        f"found {token.text!r} at position {token.position}")

    @staticmethod
    def unknown(token: Token) -> str:
        return (f"unknown column {token.text!r} at position {token.position} (the only keywords are "
                f"{', '.join(sorted(KEYWORDS))})")

    def _called(self) -> bool:
        following = self.tokens[self.at + 1] if self.at + 1 < len(self.tokens) else None
        return following is not None and following.kind == "("


def validate_predicate(predicate: str, columns: Iterable[str] = (*PROFILE_COLUMNS, SEGMENT_COLUMN)) -> Predicate:
    """Parse `predicate` against the grammar above and `columns`; return the SQL to run, or raise ValueError
    naming the offending token and listing the valid columns. Nothing is executed here."""
    allowed = {c.lower(): c for c in columns}
    parser = _Parser(tokenize(predicate, allowed.values()), allowed)
    sql = parser.parse()
    return Predicate(sql=sql, columns=frozenset(parser.used))


# --- the warehouse -----------------------------------------------------------------------------------------------


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def profile_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The scalar columns of `user_profiles` as it stands (lists, structs and vectors left out)."""
    rows = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = "
                       "'user_profiles' ORDER BY ordinal_position").fetchall()
    return [name for name, dtype in rows if "[" not in dtype and not dtype.upper().startswith(("STRUCT", "MAP"))]


def select_audience(warehouse: Path, predicate: str) -> list[str]:
    """The user ids `predicate` selects, ordered; ValueError for an invalid predicate or missing tables."""
    if not Path(warehouse).exists():
        raise ValueError(f"no warehouse at {warehouse}: import a shop and run `portrait run` first")
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        tables = _tables(con)
        if "user_profiles" not in tables:
            raise ValueError(f"table user_profiles not found in {warehouse}: materialize the user_profiles asset first")
        condition = validate_predicate(predicate, [*profile_columns(con), SEGMENT_COLUMN])
        if condition.needs_segments and "user_segments" not in tables:
            raise ValueError(f"the predicate reads `segment` but table user_segments is not in {warehouse}: "
                             "materialize the user_segments asset first")
        join = " LEFT JOIN user_segments s ON s.user_id = p.user_id" if condition.needs_segments else ""
        sql = f"SELECT p.user_id FROM user_profiles p{join} WHERE {condition.sql} ORDER BY p.user_id"
        try:
            return [str(user_id) for (user_id,) in con.execute(sql).fetchall()]
        except duckdb.Error as error:  # e.g. comparing a number column with a word
            raise ValueError(f"the predicate does not run on user_profiles: {str(error).splitlines()[0]}") from None
    finally:
        con.close()


def write_user_ids(user_ids: list[str], out: Path | None = None) -> None:
    """A CSV with the header `user_id`: to `out` atomically (a temporary file renamed over it), else stdout."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["user_id"])
    writer.writerows([user_id] for user_id in user_ids)
    if out is None:
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
