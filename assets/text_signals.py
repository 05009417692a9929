"""`text_signals`: sentiment, keywords and intent for every embedded text.

- **Sentiment** (reviews, review summaries, chat) comes from the published fine-tuned
  `behavior_model`; predictions are reused for texts the same model version already scored.
- **Keywords**: KeyBERT-style. Candidates are the corpus's frequent 1-2 word phrases
  without stop words (English, and Chinese character bigrams); each text's candidates
  are ranked by cosine similarity between the phrase's embedding and the text's. A
  text's keywords are chosen once, when it is first seen (with the same encoder).
- **Intent** (search queries and chat): the label whose prototype (the normalised mean
  of the example phrases in `INTENT_PROTOTYPES`, documented in docs/language-model.md)
  is most similar to the text's embedding.
"""

import re
from collections import Counter

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from assets.automation import AUTOMATION, TORCH_OP_TAGS, WAREHOUSE_POOL
from assets.behavior_model import LABELS, BehaviorModelConfig, predict_logits
from assets.embeddings import TEXT_SOURCES_SQL, text_embeddings
from assets.events import register_functions
from assets.metadata import bar_chart_markdown, markdown_table, query_rows
from assets.stopwords import STOP_WORDS
from resources.encoder import LoadedEncoder, TextEncoder
from resources.model_store import ModelStore
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse, table_exists

SENTIMENT_KINDS = ("review", "review_summary", "chat")
INTENT_KINDS = ("search", "chat")
KEYWORDS_PER_TEXT = 5
MAX_VOCABULARY = 5_000
MIN_DOCUMENT_FREQUENCY = 2

INTENT_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "browse": ("show me electric guitars", "new arrivals", "ideas for a beginner", "what keyboards do you have",
               "best sellers in drums"),
    "compare": ("which is better", "difference between these two models", "compare the two microphones",
                "x versus y", "is this one louder than that one"),
    "purchase": ("I want to buy this", "is it in stock", "add two to my order", "can I order it today",
                 "buy now with discount"),
    "support": ("how do I set this up", "it is not working", "the driver does not install", "need help with settings",
                "where is the manual"),
    "return": ("I want to return it", "refund please", "exchange for another size", "send it back", "it arrived broken"),
    "shipping": ("where is my order", "when will it arrive", "tracking number", "shipping cost", "delivery is late"),
}

_WORD = re.compile(r"[a-z0-9][a-z0-9+\-]*|[\u4e00-\u9fff]+")
#: particles that never belong inside a Chinese keyword
_CHINESE_PARTICLES = set("的了着吗呢吧啊哦嗯和与及或而把被给")


def candidate_phrases(text: str) -> set[str]:
    """Words and adjacent word pairs without stop words; a run of Chinese characters gives its
    character bigrams (Chinese has no spaces), leaving out those holding a function word."""
    phrases: set[str] = set()
    previous: str | None = None
    for token in _WORD.findall(text.lower()):
        if "\u4e00" <= token[0] <= "\u9fff":
            phrases.update(token[i:i + 2] for i in range(len(token) - 1)
                           if not (set(token[i:i + 2]) & _CHINESE_PARTICLES))
            previous = None
            continue
        token = token.strip("+-")
        if len(token) < 2 or token in STOP_WORDS or token.isdigit():
            previous = None
            continue
        phrases.add(token)
        if previous:
            phrases.add(f"{previous} {token}")
        previous = token
    return phrases


def keyword_vocabulary(texts: list[str]) -> list[str]:
    """The `MAX_VOCABULARY` most frequent candidate phrases seen in at least two texts."""
    frequency = Counter(p for text in texts for p in candidate_phrases(text))
    common = [(p, n) for p, n in frequency.items() if n >= MIN_DOCUMENT_FREQUENCY]
    common.sort(key=lambda pair: (-pair[1], pair[0]))
    return [p for p, _ in common[:MAX_VOCABULARY]]


def rank_keywords(texts: list[str], vectors: np.ndarray, vocabulary: list[str], vocabulary_vectors: np.ndarray,
                  top: int = KEYWORDS_PER_TEXT) -> list[list[str]]:
    index = {p: i for i, p in enumerate(vocabulary)}
    ranked = []
    for text, vector in zip(texts, vectors):
        rows = [index[p] for p in candidate_phrases(text) if p in index]
        if not rows:
            ranked.append([])
            continue
        scores = vocabulary_vectors[rows] @ vector
        order = np.argsort(-scores, kind="stable")[:top]
        ranked.append([vocabulary[rows[i]] for i in order])
    return ranked


def intent_prototypes(encoder: LoadedEncoder) -> tuple[list[str], np.ndarray]:
    labels = list(INTENT_PROTOTYPES)
    means = np.vstack([encoder.encode(list(INTENT_PROTOTYPES[label])).mean(axis=0) for label in labels])
    return labels, means / np.linalg.norm(means, axis=1, keepdims=True)


def classify_intents(vectors: np.ndarray, labels: list[str], prototypes: np.ndarray) -> tuple[list[str], np.ndarray]:
    scores = vectors @ prototypes.T
    return [labels[i] for i in scores.argmax(axis=1)], scores.max(axis=1)


def predict_sentiment(folder, texts: list[str], device: TorchDevice, batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """Labels and scores (P(positive) - P(negative)) from a saved behaviour model."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).to(device.torch_device())
    names = [str(model.config.id2label[i]).lower() for i in range(model.config.num_labels)]
    if set(names) != set(LABELS):
        names = list(LABELS)  # saved without names: the training order is LABELS
    logits = predict_logits(model, tokenizer, texts, device.torch_device(), batch_size=batch_size,
                            max_length=BehaviorModelConfig().max_length, precision=device.resolved_precision())
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    scores = probabilities[:, names.index("positive")] - probabilities[:, names.index("negative")]
    return [names[i] for i in probabilities.argmax(axis=1)], scores


def _texts_with_kinds(con: duckdb.DuckDBPyConnection, model_id: str):
    register_functions(con)
    rows = con.execute(f"""
        SELECT e.text_hash, e.text, e.vector, k.kinds
        FROM text_embeddings e
        JOIN (SELECT md5(text) AS text_hash, list(DISTINCT kind ORDER BY kind) AS kinds
              FROM ({TEXT_SOURCES_SQL}) GROUP BY 1) k USING (text_hash)
        WHERE e.model_id = ? ORDER BY e.text_hash""", [model_id]).fetchall()
    return ([r[0] for r in rows], [r[1] for r in rows], np.asarray([r[2] for r in rows], dtype=np.float32),
            [r[3] for r in rows])


def _previous_keywords(con: duckdb.DuckDBPyConnection, encoder_id: str) -> dict[str, list[str]]:
    """Keywords already chosen for texts with the same encoder: a text's keywords are fixed
    when it is first seen, so portraits folded earlier stay equal to a recompute."""
    columns = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = 'text_signals'").fetchall()}
    if "keywords_model" not in columns:
        return {}
    return dict(con.execute("SELECT text_hash, keywords FROM text_signals WHERE keywords_model = ?",
                            [encoder_id]).fetchall())


def _previous_sentiment(con: duckdb.DuckDBPyConnection, version: str) -> dict[str, tuple[str, float]]:
    if not table_exists(con, "text_signals"):
        return {}
    return {h: (label, score) for h, label, score in con.execute(
        "SELECT text_hash, sentiment, sentiment_score FROM text_signals WHERE sentiment_model = ?", [version]).fetchall()}


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="language_model",
    kinds={"torch", "duckdb"},
    owners=["team:portrait"],
    deps=[text_embeddings, "behavior_model"],
    op_tags=TORCH_OP_TAGS,
)
def text_signals(context: dg.AssetExecutionContext, warehouse: Warehouse, device: TorchDevice, encoder: TextEncoder,
                 model_store: ModelStore) -> dg.MaterializeResult:
    """Per text: sentiment from the fine-tuned behaviour model, keywords ranked by embedding
    similarity, and for queries and chat an intent from documented label prototypes."""
    loaded = encoder.load(device)
    with warehouse.connect(read_only=False) as con:
        hashes, texts, vectors, kinds = _texts_with_kinds(con, loaded.model_id)
        model_folder = model_store.latest("behavior_model")
        version = model_folder.name if model_folder else None
        cached = _previous_sentiment(con, version) if version else {}
        known_keywords = _previous_keywords(con, loaded.model_id)
    if not texts:
        context.log.warning("no embedded texts for the current encoder (a shop without texts, or "
                            "text_embeddings not materialized): text_signals is empty")
        vectors = np.zeros((0, loaded.dimension), dtype=np.float32)

    vocabulary = keyword_vocabulary(texts)
    new_texts = [i for i, h in enumerate(hashes) if h not in known_keywords]
    ranked = rank_keywords([texts[i] for i in new_texts], vectors[new_texts], vocabulary,
                           loaded.encode(vocabulary)) if new_texts else []
    keywords = [known_keywords.get(h) for h in hashes]
    for i, chosen in zip(new_texts, ranked):
        keywords[i] = chosen
    labels, prototypes = intent_prototypes(loaded)
    intents, intent_scores = classify_intents(vectors, labels, prototypes)
    wants_intent = [any(k in INTENT_KINDS for k in ks) for ks in kinds]

    sentiment: dict[str, tuple[str, float]] = {}
    if model_folder is None:
        context.log.warning("no published behavior_model: sentiment is left empty; materialize behavior_model")
    else:
        to_score = [i for i, ks in enumerate(kinds) if any(k in SENTIMENT_KINDS for k in ks)]
        fresh = [i for i in to_score if hashes[i] not in cached]
        context.log.info(f"sentiment: {len(to_score) - len(fresh):,} reused, {len(fresh):,} to score with {version}")
        predicted, scores = predict_sentiment(model_folder, [texts[i] for i in fresh], device) if fresh else ([], [])
        sentiment = {hashes[i]: cached[hashes[i]] for i in to_score if hashes[i] in cached}
        sentiment.update({hashes[i]: (label, float(score)) for i, label, score in zip(fresh, predicted, scores)})

    table = pa.table({
        "text_hash": pa.array(hashes, pa.string()),
        "kinds": pa.array(kinds, pa.list_(pa.string())),
        "sentiment": pa.array([sentiment.get(h, (None, None))[0] for h in hashes], pa.string()),
        "sentiment_score": pa.array([sentiment.get(h, (None, None))[1] for h in hashes], pa.float64()),
        "sentiment_model": pa.array([version if h in sentiment else None for h in hashes], pa.string()),
        "keywords": pa.array(keywords, pa.list_(pa.string())),
        "keywords_model": pa.array([loaded.model_id] * len(hashes), pa.string()),
        "intent": pa.array([intent if wanted else None for intent, wanted in zip(intents, wants_intent)], pa.string()),
        "intent_score": pa.array([float(s) if wanted else None for s, wanted in zip(intent_scores, wants_intent)],
                                 pa.float64()),
    })
    with warehouse.transaction() as con:
        con.register("_signals", table)
        con.execute("CREATE OR REPLACE TABLE text_signals AS SELECT * FROM _signals")
        con.unregister("_signals")
    with warehouse.connect() as con:
        sentiment_mix = query_rows(con, "SELECT sentiment, count(*) AS texts FROM text_signals "
                                        "WHERE sentiment IS NOT NULL GROUP BY 1 ORDER BY 1")
        intent_mix = query_rows(con, "SELECT intent, count(*) AS texts FROM text_signals "
                                     "WHERE intent IS NOT NULL GROUP BY 1 ORDER BY 2 DESC")
        sample = query_rows(con, """
            SELECT left(e.text, 70) AS text, s.sentiment, round(s.sentiment_score, 2) AS score,
                   array_to_string(s.keywords, ', ') AS keywords, s.intent
            FROM text_signals s JOIN text_embeddings e USING (text_hash) ORDER BY s.text_hash LIMIT 10""")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(hashes),
        "keyword_vocabulary": len(vocabulary),
        "texts_given_keywords_this_run": len(new_texts),
        "sentiment_model": version or "none published",
        "sentiment_mix": dg.MetadataValue.md(markdown_table(sentiment_mix)),
        "intent_mix": dg.MetadataValue.md(markdown_table(intent_mix)),
        "intent_chart": bar_chart_markdown([r["intent"] for r in intent_mix], [r["texts"] for r in intent_mix],
                                           "Intents of queries and chat"),
        "sample": dg.MetadataValue.md(markdown_table(sample)),
        "model_id": loaded.model_id,
        **device.describe(),
    })
