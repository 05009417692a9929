"""Text normalization and masking of e-mail addresses and phone numbers.

Every text enters the cleaned tables through `clean_text`, so nothing downstream of
ingestion sees an address or a number a person could be reached at. The patterns are
written in the subset of syntax that Python's `re` and DuckDB's RE2 share, so SQL can
mask JSON attribute values with exactly the same rules.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata

import pyarrow as pa

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"

# the local part takes every character RFC 5322 allows unquoted
EMAIL_PATTERN = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:[A-Za-z]{2,}|xn--[A-Za-z0-9-]+)"
PHONE_PATTERN = "|".join(
    [
        # international, with a leading plus: +44 20 7946 0958, +1 (555) 123-4567
        r"\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}",
        # North American: (555) 123-4567, 555.123.4567
        r"\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b",
        # Chinese mobile: 138-0013-8000, 138 0013 8000
        r"\b1[3-9]\d[ -]\d{4}[ -]\d{4}\b",
        # ten or eleven digits in a row: 5551234567, 13800138000
        r"\b\d{10,11}\b",
    ]
)

# re.ASCII gives `\d` and `\b` the ASCII meaning RE2 gives them, so both mask alike
# (and a number glued to Chinese text, as in "手机13800138000", is still masked).
_EMAIL = re.compile(EMAIL_PATTERN, re.ASCII)
_PHONE = re.compile(PHONE_PATTERN, re.ASCII)
_THREE_DIGITS = re.compile(r"\d{3}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")


def normalize_text(text: str) -> str | None:
    """Decode HTML entities, apply NFKC, drop control characters, collapse whitespace.

    NFKC folds full-width digits and letters (common in Chinese shops) to ASCII, so the
    masks below see them. Returns None for text that is empty once normalized.
    """
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii():  # ASCII is already NFKC
        text = unicodedata.normalize("NFKC", text)
    if not text.isprintable():  # only control and format characters, tabs and newlines fail this
        text = _CONTROL.sub(" ", text)
    text = " ".join(text.split())
    return text or None


def mask_pii(text: str) -> str:
    """Replace e-mail addresses and phone numbers with fixed tokens.

    Each pattern runs only where it can match: an address needs an `@`, every phone
    form has three digits in a row. Most texts have neither, and skip both.
    """
    if "@" in text:
        text = _EMAIL.sub(EMAIL_MASK, text)
    if _THREE_DIGITS.search(text):
        text = _PHONE.sub(PHONE_MASK, text)
    return text


def clean_text(text: str | None) -> str | None:
    if text is None:
        return None
    normalized = normalize_text(text)
    return mask_pii(normalized) if normalized else None


def clean_text_arrow(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`clean_text` over an Arrow column; registered as a vectorized DuckDB function."""
    return pa.array([clean_text(t) for t in texts.to_pylist()], type=pa.string())


def mask_json(text: str | None) -> str | None:
    """`mask_pii` applied to every string inside a JSON document, keeping it valid JSON.

    A number that reads as a phone number (ten or eleven digits) becomes the string
    "[phone]": some exporters write phone numbers as numbers.
    """
    if text is None or ("@" not in text and not _THREE_DIGITS.search(text)):
        return text
    return json.dumps(_mask_value(json.loads(text)), ensure_ascii=False, separators=(",", ":"))


def _mask_value(value):
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_value(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and mask_pii(str(value)) != str(value):
        return PHONE_MASK
    return value


def mask_json_arrow(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`mask_json` over an Arrow column; registered as a vectorized DuckDB function."""
    return pa.array([mask_json(t) for t in texts.to_pylist()], type=pa.string())


def sql_mask_pii(expression: str) -> str:
    """The same masking as `mask_pii`, as a DuckDB SQL expression (for free text, not JSON)."""
    emails = f"regexp_replace({expression}, {_sql_literal(EMAIL_PATTERN)}, '{EMAIL_MASK}', 'g')"
    return f"regexp_replace({emails}, {_sql_literal(PHONE_PATTERN)}, '{PHONE_MASK}', 'g')"


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
