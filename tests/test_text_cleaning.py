"""Normalization and PII masking, in Python and in the SQL twin used for attributes."""

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assets.text_cleaning import clean_text, mask_pii, normalize_text, sql_mask_pii


@pytest.mark.parametrize("text", [
    "write to jane.doe@example.com", "JANE_DOE+shop@mail.example.co.uk", "call 555-123-4567",
    "call (555) 123-4567", "call 555.123.4567", "call +44 20 7946 0958", "call +1 555 123 4567",
    "手机 13800138000", "手机13800138000", "手机 138-0013-8000", "ring 5551234567",
])
def test_contact_details_are_masked(text):
    masked = mask_pii(text)
    assert "[email]" in masked or "[phone]" in masked
    assert "@" not in masked and "4567" not in masked and "8000" not in masked


@pytest.mark.parametrize("text", [
    "bought on 2014-07-22", "costs $1,299.99", "a Shure SM57", "12 strings", "1/4 inch jack",
    "2 x 10 ft cables", "order #A1234", "rated 4.5/5", "model 1959 reissue", "ISO 9001",
])
def test_ordinary_numbers_are_left_alone(text):
    assert mask_pii(text) == text


def test_normalization_decodes_entities_and_cleans_whitespace_and_controls():
    assert normalize_text("Tom &amp; Jerry&#39;s\u00a0amp\x00\t\n  rocks") == "Tom & Jerry's amp rocks"
    assert normalize_text("ＵＳＢ　１２３") == "USB 123"
    assert normalize_text(" \u200b \n") is None
    assert clean_text(None) is None
    assert clean_text("mail me: a@b.io &lt;3") == "mail me: [email] <3"


contact = st.one_of(
    st.emails().map(str),
    st.from_regex(r"\+[0-9]{2} [0-9]{3} [0-9]{3} [0-9]{4}", fullmatch=True),
    st.from_regex(r"[0-9]{3}-[0-9]{3}-[0-9]{4}", fullmatch=True),
    st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
)
words = st.lists(st.sampled_from(["great", "amp", "strings", "$12.99", "2019", "SM57", "x", "ok!"]), max_size=6)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(before=words, value=contact, after=words)
def test_any_contact_in_a_sentence_is_masked_and_sql_agrees(before, value, after):
    text = " ".join([*before, value, *after])
    masked = mask_pii(text)
    assert value not in masked
    with duckdb.connect() as con:
        assert con.execute(f"SELECT {sql_mask_pii('?')}", [text]).fetchone()[0] == masked


def test_json_masking_keeps_valid_json_and_masks_strings_and_phone_like_numbers():
    import json

    from assets.text_cleaning import mask_json

    masked = mask_json('{"note": "mail a@b.io", "tel": 5551234567, "n": [1, "call 555-123-4567"], "id": 4181361}')
    assert json.loads(masked) == {"note": "mail [email]", "tel": "[phone]", "n": [1, "call [phone]"], "id": 4181361}
    assert mask_json('{"colour": "red"}') == '{"colour": "red"}'  # nothing to mask: untouched
    assert mask_json(None) is None
