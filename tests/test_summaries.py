"""User summaries: the templates, the optional text generator, and the `user_summaries` asset."""

import math
import re
import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from assets.summaries import humanize_days, merge_generated, message, summarize, user_summaries
from resources.text_generator import TextGenerator, first_paragraph, message_prompt, summary_prompt
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse

CPU = TorchDevice(device="cpu")
AS_OF = datetime(2026, 9, 30, 12, 0)

FULL = {
    "user_id": "u1", "as_of": AS_OF, "first_seen": datetime(2026, 4, 30), "last_seen": datetime(2026, 9, 28),
    "tenure_days": 153.0, "recency_days": 2.2, "active_days": 41, "events": 310,
    "n_view": 200, "n_click": 50, "n_favorite": 5, "n_add_to_cart": 20, "n_purchase": 14, "n_review": 3,
    "n_rating": 3, "n_search": 12, "n_chat": 3, "engagement": 0.8, "frequency": 14, "monetary": 1230.5,
    "purchase_recency_days": 9.6, "lifecycle": "active", "top_category": "Guitars",
    "top_categories": [{"name": "Guitars", "share": 0.62}, {"name": "Strings", "share": 0.2},
                       {"name": "Cables", "share": 0.04}],
    "top_brand": "Fender", "top_brands": [{"name": "Fender", "share": 0.5}, {"name": "Ibanez", "share": 0.3}],
    "top_keywords": ["warm tone", "strings", "tuning", "case"], "sentiment": 0.55, "sentiment_label": "positive",
    "sentiment_trend": 0.3, "top_intent": "compare", "intents": [{"name": "compare", "share": 0.6}],
    "price_index": 1.43, "price_band": "premium", "price_sensitivity": 0.3, "age": "25-34", "gender": "F",
    "region": "Berlin",
}

# Taobao: behaviour only, numeric category ids, no prices, brands, texts or demographics
TAOBAO = {
    "user_id": "t1", "as_of": AS_OF, "tenure_days": 8.4, "recency_days": 0.3, "active_days": 6, "events": 90,
    "n_view": 80, "n_favorite": 3, "n_add_to_cart": 4, "n_purchase": 3, "n_review": 0, "n_search": 0, "n_chat": 0,
    "frequency": 3, "monetary": None, "purchase_recency_days": 1.5, "lifecycle": "new", "top_category": "4756105",
    "top_categories": [{"name": "4756105", "share": 0.7}, {"name": "982926", "share": 0.3}], "top_brand": None,
    "top_brands": None, "top_keywords": None, "sentiment": None, "sentiment_label": None, "sentiment_trend": None,
    "top_intent": None, "intents": None, "price_index": None, "price_band": None, "price_sensitivity": None,
    "age": None, "gender": None, "region": None,
}

# Amazon reviews: reviews and ratings, brands, no prices, no searches or chat
AMAZON = {
    "user_id": "a1", "as_of": AS_OF, "tenure_days": 1200.0, "recency_days": 200.0, "active_days": 9, "events": 18,
    "n_review": 9, "n_rating": 9, "n_purchase": 0, "n_search": 0, "n_chat": 0, "frequency": 0, "monetary": None,
    "purchase_recency_days": None, "lifecycle": "churned", "top_category": "Musical Instruments",
    "top_categories": [{"name": "Musical Instruments", "share": 1.0}], "top_brand": "Shure",
    "top_brands": [{"name": "Shure", "share": 0.6}], "top_keywords": ["microphone"], "sentiment": -0.4,
    "sentiment_label": "negative", "sentiment_trend": -0.2, "top_intent": None, "intents": [],
    "price_index": float("nan"), "price_band": None, "price_sensitivity": float("nan"), "age": "", "gender": None,
    "region": None,
}


def _no_missing_words(text: str) -> None:
    assert not re.search(r"\b(None|nan|NaN|null)\b", text), text
    assert "  " not in text and ".." not in text and " ." not in text, text


# --- templates --------------------------------------------------------------------------

def test_a_full_profile_reads_as_one_paragraph():
    text = summarize(FULL, 0.68, "active · Guitars · premium")
    assert text.startswith("Active customer for 5 months, last seen 2 days ago; 14 purchases worth 1,230.50")
    for part in ("Mostly interested in Guitars (62%) and Strings (20%), favourite brand Fender.",
                 "Buys at premium prices (1.4x the category median).", "Reviews are positive and improving.",
                 "Searches and chats mostly to compare.", "Likely to buy soon (68%).",
                 "Segment: active · Guitars · premium.", "Age 25-34, female, from Berlin.",
                 "Often mentions warm tone, strings and tuning."):
        assert part in text, part
    assert "Cables" not in text  # a 4% share is not worth naming
    _no_missing_words(text)
    with_horizon = summarize({**FULL, "horizon_days": 7}, 0.68, None)
    assert "Likely to buy in the next 7 days (68%)." in with_horizon


def test_a_taobao_profile_says_what_it_has_and_nothing_else():
    text = summarize(TAOBAO, None, None)
    _no_missing_words(text)
    assert text.startswith("New customer, first seen 8 days ago, last seen 7 hours ago; 3 purchases")
    assert "category 4756105 (70%) and category 982926 (30%)" in text
    for absent in ("worth", "brand", "price", "Reviews", "Searches", "Segment", "buy", "Age", "mentions"):
        assert absent not in text, absent
    assert message(TAOBAO) == "Welcome! New in category 4756105: picks for you"


def test_an_amazon_profile_has_brands_and_reviews_but_no_prices():
    text = summarize(AMAZON, 0.05, None)
    _no_missing_words(text)
    assert text.startswith("Churned customer of 3 years, last seen 7 months ago; no purchases yet in 18 events.")
    assert "favourite brand Shure" in text and "Reviews are negative and getting worse." in text
    assert "Unlikely to buy soon (5%)." in text
    assert "price" not in text and "Searches" not in text and "Age" not in text
    assert message(AMAZON) == "Welcome back! New in Musical Instruments: picks for you from Shure"


def test_counts_are_pluralised_and_durations_humanised():
    one = summarize({"frequency": 1, "monetary": 19.9, "purchase_recency_days": 3.0, "tenure_days": 1.0,
                     "recency_days": 1.0, "lifecycle": "active"})
    assert one == "Active customer for 1 day, last seen 1 day ago; 1 purchase worth 19.90."
    assert "2 purchases worth 12,345,678.00, the last 1 hour ago" in summarize(
        {"frequency": 2, "monetary": 12_345_678, "purchase_recency_days": 0.05})
    assert "in 1 event." in summarize({"frequency": 0, "events": 1})
    cases = {0.001: "less than an hour", 0.5: "12 hours", 1.4: "1 day", 45: "45 days", 75: "2 months",
             364: "12 months", 800: "2 years", 3650: "10 years"}
    assert {days: humanize_days(days) for days in cases} == cases


def test_propensity_and_segment_are_optional():
    bare = summarize(FULL, None, None)
    assert "buy" not in bare and "Segment" not in bare
    assert "May buy soon (35%)." in summarize(FULL, 0.35, None)
    assert "in the next day" in summarize({**FULL, "horizon_days": 1}, 0.9, None)
    assert "Segment: loyal." in summarize(FULL, None, "loyal")
    assert summarize(FULL, float("nan"), "") == bare


def test_templates_are_deterministic_and_accept_pandas_style_values():
    assert summarize(FULL, 0.68, "s") == summarize(dict(FULL), 0.68, "s")
    pandas_like = {**FULL, "top_categories": np.array([{"name": "Guitars", "share": np.float64(0.62)}], dtype=object),
                   "top_keywords": np.array(["warm tone"], dtype=object), "monetary": np.float64("nan"),
                   "frequency": np.int64(14), "region": float("nan"), "age": None, "gender": None}
    text = summarize(pandas_like, np.float64(0.68), None)
    _no_missing_words(text)
    assert "14 purchases, the last" in text and "Guitars (62%)" in text and "from" not in text
    assert summarize({}) == "No activity recorded yet."
    assert message({}) == "New arrivals, picked for you"
    assert message(FULL) == "New in Guitars: picks for you from Fender — compare them side by side"


def test_generated_texts_fall_back_to_the_template_where_empty():
    merged, written = merge_generated(["t1", "t2", "t3"], ["g1", "", "  "])
    assert merged == ["g1", "t2", "t3"] and written == [True, False, False]
    assert first_paragraph('  "Loves guitars.\nMore"\n\nsecond paragraph') == "Loves guitars. More"
    assert first_paragraph("Loves guitars.\nMore", one_line=True) == "Loves guitars."
    assert first_paragraph("'quoted'", one_line=True) == "quoted"
    assert "Summary:" in summary_prompt("facts") and message_prompt("facts", "New in X").endswith("Message:")


# --- the generator ----------------------------------------------------------------------

WORDS = ["active customer for five months last seen two days ago", "mostly interested in guitars and strings",
         "reviews are positive and improving", "write a short summary of this customer", "message new picks for you"]


def _tiny_causal_lm(folder: Path, layers: int = 2, mute: bool = False) -> Path:
    """A randomly initialised GPT-2 with a word-level tokenizer trained here (no downloads).
    The tokenizer has an end-of-sequence token but no pad token. `mute` suppresses every
    token except the end of sequence, so the model says nothing."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(WORDS, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>")
    eos = fast.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_head=2, n_embd=32, n_positions=512, vocab_size=len(fast),
                        bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config)
    # every continuation says something (or, muted, nothing): the test does not hang on chance
    model.generation_config.suppress_tokens = [i for i in range(len(fast)) if i != eos] if mute else [eos, 0]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_the_generator_continues_each_prompt_deterministically(tmp_path):
    folder = _tiny_causal_lm(tmp_path / "tiny-lm")
    generator = TextGenerator(model_path=str(folder), max_new_tokens=6, batch_size=2)
    assert generator.enabled and not TextGenerator().enabled
    loaded = generator.load(CPU)
    assert loaded.tokenizer.pad_token == "<eos>" and loaded.tokenizer.padding_side == "left"
    prompts = [summary_prompt("Active customer for five months."), "guitars and strings", "reviews",
               message_prompt("Mostly interested in guitars.", "New in guitars")]
    out = loaded.generate(prompts)
    assert len(out) == 4 and all(isinstance(t, str) and t for t in out)
    assert all(t == t.strip() and "\n" not in t and len(t.split()) <= 6 for t in out)
    assert loaded.generate(prompts) == out  # greedy: the same text every time
    assert loaded.generate(prompts[::-1])[::-1] == out  # left padding: batch neighbours change nothing
    assert loaded.generate([]) == []
    sampled = TextGenerator(model_path=str(folder), max_new_tokens=6, temperature=1.5, seed=3).load(CPU)
    assert sampled.generate(prompts) == sampled.generate(prompts)  # seeded sampling repeats too

    other = _tiny_causal_lm(tmp_path / "other" / "tiny-lm", layers=1)
    assert loaded.model_id.startswith("tiny-lm@") and loaded.model_id == generator.model_id()
    assert TextGenerator(model_path=str(other)).model_id() != loaded.model_id
    with pytest.raises(dg.Failure, match="no config.json"):
        TextGenerator(model_path=str(tmp_path / "missing")).load(CPU)
    with pytest.raises(dg.Failure, match="disabled"):
        TextGenerator().load(CPU)


# --- the asset --------------------------------------------------------------------------

PROFILE_DDL = """
CREATE TABLE user_profiles (
    user_id VARCHAR, as_of TIMESTAMP, first_seen TIMESTAMP, last_seen TIMESTAMP, tenure_days DOUBLE,
    recency_days DOUBLE, active_days BIGINT, events BIGINT, n_view BIGINT, n_click BIGINT, n_favorite BIGINT,
    n_add_to_cart BIGINT, n_purchase BIGINT, n_review BIGINT, n_rating BIGINT, n_search BIGINT, n_chat BIGINT,
    engagement DOUBLE, frequency BIGINT, monetary DOUBLE, purchase_recency_days DOUBLE, lifecycle VARCHAR,
    top_category VARCHAR, top_categories STRUCT(name VARCHAR, share DOUBLE)[], top_brand VARCHAR,
    top_brands STRUCT(name VARCHAR, share DOUBLE)[], top_keywords VARCHAR[], sentiment DOUBLE,
    sentiment_label VARCHAR, sentiment_trend DOUBLE, top_intent VARCHAR, intents STRUCT(name VARCHAR, share DOUBLE)[],
    price_index DOUBLE, price_band VARCHAR, price_sensitivity DOUBLE, age VARCHAR, gender VARCHAR, region VARCHAR,
    interest FLOAT[384]
)"""


def _columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("DESCRIBE user_profiles").fetchall()]


def _warehouse(tmp_path: Path, profiles: list[dict], propensity: bool = True) -> Warehouse:
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    with warehouse.transaction() as con:
        con.execute(PROFILE_DDL)
        columns = _columns(con)
        for profile in profiles:
            row = {**profile, "interest": [0.01] * 384}
            values = [None if isinstance(row.get(c), float) and math.isnan(row[c]) else row.get(c) for c in columns]
            con.execute(f"INSERT INTO user_profiles VALUES ({', '.join('?' * len(columns))})", values)
        if propensity:
            con.execute("CREATE TABLE user_propensity (user_id VARCHAR, propensity DOUBLE, horizon_days INTEGER, "
                        "model_version VARCHAR, as_of TIMESTAMP)")
            con.execute("INSERT INTO user_propensity VALUES ('u1', 0.2, 30, 'v1', '2026-09-01'), "
                        "('u1', 0.68, 7, 'v2', '2026-09-30'), ('u1', 0.9, 30, 'v2', '2026-09-30')")
    return warehouse


def _summaries(warehouse: Warehouse) -> dict[str, tuple]:
    with warehouse.connect(read_only=True) as con:
        rows = con.execute("SELECT user_id, summary, message, source, as_of FROM user_summaries ORDER BY user_id").fetchall()
    return {r[0]: r[1:] for r in rows}


def _materialize(warehouse: Warehouse, generator: TextGenerator, instance) -> dg.ExecuteInProcessResult:
    result = dg.materialize([user_summaries], instance=instance,
                            resources={"warehouse": warehouse, "generator": generator, "device": CPU})
    assert result.success
    return result


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    return result.asset_materializations_for_node("user_summaries")[0].metadata


def test_the_template_path_writes_every_user(tmp_path, instance):
    warehouse = _warehouse(tmp_path, [FULL, TAOBAO, AMAZON])
    result = _materialize(warehouse, TextGenerator(model_path=""), instance)
    rows = _summaries(warehouse)
    assert set(rows) == {"u1", "t1", "a1"}
    assert {r[2] for r in rows.values()} == {"template"}
    assert rows["u1"][0] == summarize({**FULL, "horizon_days": 7}, 0.68, None)  # latest, shortest horizon
    assert "Likely to buy in the next 7 days (68%)." in rows["u1"][0]
    assert rows["t1"][0] == summarize(TAOBAO) and rows["a1"][1] == message(AMAZON)
    assert all(r[3] == AS_OF for r in rows.values())
    metadata = _metadata(result)
    assert metadata["dagster/row_count"].value == 3 and metadata["source"].value == "template"
    assert "Guitars" in metadata["preview"].value

    with warehouse.transaction() as con:  # segments arrive later: the next run picks them up
        con.execute("CREATE TABLE user_segments AS SELECT 'u1' AS user_id, 2 AS segment_id, "
                    "'active · Guitars · premium' AS segment")
    _materialize(warehouse, TextGenerator(), instance)
    assert _summaries(warehouse)["u1"][0].endswith("Segment: active · Guitars · premium.")


def test_a_generator_writes_the_texts_and_names_itself(tmp_path, instance):
    warehouse = _warehouse(tmp_path, [FULL, TAOBAO, AMAZON], propensity=False)
    generator = TextGenerator(model_path=str(_tiny_causal_lm(tmp_path / "tiny-lm")), max_new_tokens=5, batch_size=2)
    model_id = generator.model_id()
    result = _materialize(warehouse, generator, instance)
    rows = _summaries(warehouse)
    assert {r[2] for r in rows.values()} == {model_id}
    assert rows["u1"][0] != summarize(FULL) and all(r[0] and r[1] for r in rows.values())
    metadata = _metadata(result)
    assert metadata["source"].value == model_id and metadata["generated_summaries"].value == 3
    assert metadata["template_fallbacks"].value == 0 and metadata["device"].value == "cpu"

    mute = TextGenerator(model_path=str(_tiny_causal_lm(tmp_path / "mute-lm", mute=True)), max_new_tokens=5)
    result = _materialize(warehouse, mute, instance)
    rows = _summaries(warehouse)  # the model said nothing: the template text stays, and says so
    assert rows["t1"] == (summarize(TAOBAO), message(TAOBAO), "template", AS_OF)
    assert _metadata(result)["template_fallbacks"].value == 3


def test_the_template_path_handles_many_users_in_seconds(tmp_path, instance):
    warehouse = _warehouse(tmp_path, [], propensity=False)
    users = 100_000
    with warehouse.transaction() as con:
        con.execute(f"""
            INSERT INTO user_profiles (user_id, as_of, tenure_days, recency_days, events, n_purchase, n_review, n_search,
                                       frequency, monetary, lifecycle, top_category, top_categories, top_brand,
                                       top_keywords, sentiment_label, top_intent, price_index, price_band)
            SELECT 'u' || lpad(i::VARCHAR, 6, '0'), TIMESTAMP '2026-09-30', i % 900, i % 40, 10 + i % 50, i % 7, i % 3,
                   i % 5, i % 7, CASE WHEN i % 2 = 0 THEN (i % 1000) * 1.5 END,
                   ['new', 'active', 'at_risk', 'churned'][1 + i % 4],
                   'cat' || (i % 20), [{{'name': 'cat' || (i % 20), 'share': 0.6}}, {{'name': 'cat' || (i % 13), 'share': 0.3}}],
                   CASE WHEN i % 3 = 0 THEN 'brand' || (i % 9) END, ['tone', 'strings'], 'positive', 'browse',
                   CASE WHEN i % 2 = 0 THEN 0.5 + (i % 10) / 10 END, CASE WHEN i % 2 = 0 THEN 'mid' END
            FROM range({users}) t(i)""")
    started = time.perf_counter()
    result = _materialize(warehouse, TextGenerator(), instance)
    seconds = time.perf_counter() - started
    assert _metadata(result)["dagster/row_count"].value == users
    with warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT user_id), count(*) FILTER (source = 'template'), "
                           "count(*) FILTER (summary LIKE '%None%' OR summary LIKE '%nan%') "
                           "FROM user_summaries").fetchone() == (users, users, 0)
    assert seconds < 60, seconds
