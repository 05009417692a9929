"""`search_index`: personalized product search over the catalogue.

Three stages, each a plain function here (no Dagster, no warehouse needed):

1. **Candidates.** BM25 (`bm25s`, Lucene variant) over each item's catalogue text (title,
   categories, brand, description) gives lexical matches; the cosine between the encoded
   query and the item vectors of `item_embeddings` gives semantic ones. The top
   `candidates` of each list, together, are the candidate pool.
2. **Fusion.** Over the pool both scores are min-max normalized and summed with weights
   `text_weight` and `1 - text_weight`: the plain ranking.
3. **Re-rank.** A user's portrait adds `interest_weight` x cosine(interest vector, item
   vector) + `category_weight` x the user's share of the item's category + `price_weight`
   x price fit (how close the item's price, relative to its category's median, is to the
   user's price index). An unknown user, or none, gets the plain ranking.

The index holds catalogue text only, never anything a user wrote, so it carries no
personal data and needs no erasure; item vectors, titles and portraits are read at query
time from the connection the caller passes (the warehouse or a serving snapshot).
"""

import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import bm25s
import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from bm25s.stopwords import STOPWORDS_EN
from pydantic import Field

from assets.automation import AUTOMATION, WAREHOUSE_POOL
from assets.metadata import markdown_table
from assets.profile_state import matrix
from resources.encoder import LoadedEncoder
from resources.model_store import CARD, ModelStore
from resources.warehouse import Warehouse, table_exists

INDEX_NAME = "search_index"
ITEMS_FILE = "items.parquet"
BM25_FOLDER = "bm25"
RESULT_COLUMNS = ["rank", "item_id", "title", "score", "text_score", "semantic_score", "personal_score", "reason"]
#: Lucene's English stop words: function words only, so product words ("five", "back", "top") stay searchable.
STOP_WORDS = frozenset(STOPWORDS_EN)
_WORD = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_SPLIT = re.compile(f"({_CJK.pattern})")
#: Neutral price fit where the item has no price or the user no price index.
NEUTRAL_PRICE_FIT = 0.5
CLOSE_COSINE = 0.5


@dataclass(frozen=True)
class SearchSettings:
    """How candidates are found and ranked. The defaults were chosen on the demo shop's
    validation searches (bench/search.py), never on the searches it reports."""

    k1: float = 1.2
    b: float = 0.75
    candidates: int = 100
    text_weight: float = 0.5
    interest_weight: float = 0.8
    category_weight: float = 0.1
    price_weight: float = 0.2

    def personal(self) -> bool:
        return any((self.interest_weight, self.category_weight, self.price_weight))


class SearchConfig(dg.Config):
    """The search settings (docs/recommender.md, Search); saved in the index's model card."""

    k1: float = Field(default=SearchSettings.k1, description="BM25 term-frequency saturation")
    b: float = Field(default=SearchSettings.b, description="BM25 length normalization")
    candidates: int = Field(default=SearchSettings.candidates, description="candidates taken from each of BM25 and "
                                                                           "the embedding similarity")
    text_weight: float = Field(default=SearchSettings.text_weight, description="fusion: weight of normalized BM25; "
                                                                               "the embedding similarity gets the rest")
    interest_weight: float = Field(default=SearchSettings.interest_weight, description="re-rank: cosine of the "
                                                                                       "user's interest vector")
    category_weight: float = Field(default=SearchSettings.category_weight, description="re-rank: the user's share of "
                                                                                       "the item's category")
    price_weight: float = Field(default=SearchSettings.price_weight, description="re-rank: price fit to the user's "
                                                                                 "price index")

    def settings(self) -> SearchSettings:
        return SearchSettings(**{f.name: getattr(self, f.name) for f in fields(SearchSettings)})


# --- text -----------------------------------------------------------------------------------------------------


def _stem(token: str) -> str:
    """Plural to singular, so "strings" finds "string": a light rule, not a full stemmer,
    which would merge words a shopper keeps apart (e.g. "organ" and "organic")."""
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if token.endswith(("sses", "ches", "shes", "xes")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def terms(text: str | None) -> list[tuple[str, str]]:
    """(token, the word it came from) pairs: lower-cased words (letters and digits; hyphens and
    punctuation split), singular, without stop words. Han ideographs (Chinese, Japanese kanji)
    count one token each: there are no spaces to split on, and single characters still match
    across word boundaries."""
    if not text:
        return []
    pairs = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        for part in _CJK_SPLIT.split(word):
            if _CJK.fullmatch(part):
                pairs.append((part, part))
            elif part and part not in STOP_WORDS:
                pairs.append((_stem(part), part))
    return pairs


def tokenize(text: str | None) -> list[str]:
    return [token for token, _ in terms(text)]


def query_terms(query: str | None) -> dict[str, str]:
    """The distinct tokens of a query, each with the word the user typed; a missing or blank
    query is an error, not an empty result."""
    if query is None or not str(query).strip():
        raise ValueError("the search query is empty: give at least one word to search for")
    words: dict[str, str] = {}
    for token, word in terms(query):
        words.setdefault(token, word)
    return words


def _texts(value: object) -> list[str]:
    """The strings in a field as pandas hands it over: a string, a list or array of them, or a missing value."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _first_category(categories: object) -> str | None:
    """The first (broadest) category, as portraits count it; None where there is none."""
    if isinstance(categories, (list, tuple, np.ndarray)) and len(categories) and isinstance(categories[0], str):
        return categories[0]
    return None


def document(title: object, categories: object, brand: object, description: object) -> str:
    """An item's catalogue text, the only text the index sees."""
    return " ".join(t for field_ in (title, categories, brand, description) for t in _texts(field_))


# --- ranking --------------------------------------------------------------------------------------------------


def min_max(values: np.ndarray) -> np.ndarray:
    """Scaled into [0, 1] over the finite values; NaN (no score) and a constant list give 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.zeros(len(values))
    if finite.any():
        low, high = values[finite].min(), values[finite].max()
        if high > low:
            out[finite] = (values[finite] - low) / (high - low)
    return out


def fuse(text: np.ndarray, semantic: np.ndarray, text_weight: float) -> np.ndarray:
    """The plain score: a weighted sum of min-max normalized BM25 and cosine over the pool.
    Normalizing makes the two commensurable (BM25 is unbounded, cosine is not); the scores'
    gaps, which reciprocal-rank fusion would throw away, are kept."""
    return text_weight * min_max(text) + (1.0 - text_weight) * min_max(semantic)


def pool(text: np.ndarray, semantic: np.ndarray, depth: int) -> np.ndarray:
    """Row numbers of the top `depth` by BM25 (with a match) and by cosine (with a vector), in index order."""
    chosen = set()
    for scores in (np.where(text > 0, text, -np.inf), np.where(np.isfinite(semantic), semantic, -np.inf)):
        valid = int(np.isfinite(scores).sum())
        if valid:
            top = np.argsort(-scores, kind="stable")[:min(depth, valid)]
            chosen.update(top.tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def price_fit(item_index: np.ndarray, user_index: float | None) -> np.ndarray:
    """min/max of the item's and the user's price index (1 = the same relative price); neutral where unknown."""
    item_index = np.asarray(item_index, dtype=np.float64)
    out = np.full(len(item_index), NEUTRAL_PRICE_FIT)
    if user_index is None or not np.isfinite(user_index) or user_index <= 0:
        return out
    known = np.isfinite(item_index) & (item_index > 0)
    out[known] = np.minimum(item_index[known], user_index) / np.maximum(item_index[known], user_index)
    return out


@dataclass(frozen=True)
class Portrait:
    """What the re-rank uses of a user's `user_profiles` row."""

    interest: np.ndarray | None
    category_shares: dict[str, float]
    price_index: float | None
    price_band: str | None


@dataclass(frozen=True)
class PersonalFeatures:
    """Per pool item: the three portrait signals, before weighting."""

    interest: np.ndarray
    category: np.ndarray
    price: np.ndarray

    @classmethod
    def none(cls, size: int) -> "PersonalFeatures":
        return cls(np.zeros(size), np.zeros(size), np.zeros(size))


def personal_features(portrait: Portrait | None, vectors: np.ndarray, has_vector: np.ndarray, categories: np.ndarray,
                      price_indexes: np.ndarray) -> PersonalFeatures:
    """The portrait's signals for items given by their vectors, first categories and price indexes."""
    if portrait is None:
        return PersonalFeatures.none(len(categories))
    interest = np.zeros(len(categories))
    if portrait.interest is not None and np.linalg.norm(portrait.interest) > 0 and has_vector.any():
        direction = portrait.interest / np.linalg.norm(portrait.interest)
        interest[has_vector] = vectors[has_vector] @ direction
    category = np.array([portrait.category_shares.get(c, 0.0) if c is not None else 0.0 for c in categories])
    return PersonalFeatures(interest, category, price_fit(price_indexes, portrait.price_index))


def personal_score(features: PersonalFeatures, settings: SearchSettings) -> np.ndarray:
    return (settings.interest_weight * features.interest + settings.category_weight * features.category
            + settings.price_weight * features.price)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Positions by descending score; ties keep index order, so results are reproducible."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))


# --- the index ------------------------------------------------------------------------------------------------


def item_price_index(categories: pd.Series, prices: pd.Series) -> np.ndarray:
    """Price / the median catalogue price of the item's first category: the scale of the
    portraits' `price_index` (see assets/profiles.py)."""
    frame = pd.DataFrame({"category": categories, "price": pd.to_numeric(prices, errors="coerce")})
    frame.loc[frame["price"] <= 0, "price"] = np.nan
    median = frame.groupby("category", dropna=True)["price"].transform("median")
    return (frame["price"] / median).to_numpy(dtype=np.float64)


def read_catalogue(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per item with its catalogue text fields; `items` may repeat an id across files."""
    return con.sql("""
        SELECT item_id, any_value(title) AS title, any_value(categories) AS categories, any_value(brand) AS brand,
               any_value(price) AS price, any_value(description) AS description
        FROM items WHERE item_id IS NOT NULL GROUP BY item_id ORDER BY item_id""").df()


@dataclass
class SearchIndex:
    """BM25 over the catalogue plus, per item, its first category, price index and terms."""

    retriever: bm25s.BM25
    items: pd.DataFrame  # item_id, category, price_index, terms (row i = BM25 document i)
    settings: SearchSettings
    card: dict = field(default_factory=dict)

    @classmethod
    def build(cls, catalogue: pd.DataFrame, settings: SearchSettings) -> "SearchIndex":
        if catalogue.empty:
            raise ValueError("the catalogue is empty: there is nothing to index")
        docs = [tokenize(document(*fields_)) for fields_ in
                zip(catalogue["title"], catalogue["categories"], catalogue["brand"], catalogue["description"])]
        if not any(docs):
            raise ValueError("no item has catalogue text (title, categories, brand or description) to index")
        retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method="lucene")
        retriever.index(docs, show_progress=False)
        first = catalogue["categories"].map(_first_category)
        items = pd.DataFrame({"item_id": catalogue["item_id"].astype(str), "category": first,
                              "price_index": item_price_index(first, catalogue["price"]),
                              "terms": [sorted(set(d)) for d in docs]})
        return cls(retriever, items, settings)

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder / BM25_FOLDER), show_progress=False)
        pq.write_table(pa.Table.from_pandas(self.items, preserve_index=False), folder / ITEMS_FILE)

    @classmethod
    def read(cls, folder: Path) -> "SearchIndex":
        card = json.loads((folder / CARD).read_text())
        retriever = bm25s.BM25.load(str(folder / BM25_FOLDER), show_progress=False)
        items = pq.read_table(folder / ITEMS_FILE).to_pandas()
        return cls(retriever, items, SearchSettings(**card["settings"]), card)

    def text_scores(self, tokens: list[str]) -> np.ndarray:
        return np.asarray(self.retriever.get_scores_from_ids(self.retriever.get_tokens_ids(tokens)), dtype=np.float64)


def read_portrait(con: duckdb.DuckDBPyConnection, user_id: str) -> Portrait | None:
    """The user's portrait from `user_profiles`, or None for a user without one."""
    rows = con.execute("SELECT interest, top_categories, price_index, price_band FROM user_profiles "
                       "WHERE user_id = ?", [user_id]).fetchall()
    if not rows:
        return None
    interest, categories, index, band = rows[0]
    shares = {c["name"]: float(c["share"]) for c in categories or [] if c["name"] is not None}
    vector = np.asarray(interest, dtype=np.float64) if interest is not None else None
    index = float(index) if index is not None and math.isfinite(index) else None
    return Portrait(vector, shares, index, band)


@dataclass(frozen=True)
class Candidates:
    """The pool for one query: index rows and both retrieval scores (NaN cosine: no vector)."""

    rows: np.ndarray
    text: np.ndarray
    semantic: np.ndarray
    words: dict[str, str]  # query token -> the word typed


class Searcher:
    """A published search index, ready to answer queries against any connection holding
    `items`, `item_embeddings` and `user_profiles`."""

    def __init__(self, index: SearchIndex, encoder: LoadedEncoder) -> None:
        self.index = index
        self.encoder = encoder
        self.settings = index.settings
        self._vectors_key: tuple | None = None
        self._vectors = np.zeros((len(index.items), encoder.dimension), dtype=np.float32)
        self._has_vector = np.zeros(len(index.items), dtype=bool)

    @classmethod
    def load(cls, folder: Path, encoder: LoadedEncoder) -> "Searcher":
        """`folder`: a published `search_index` version (`ModelStore.latest("search_index")`)."""
        index = SearchIndex.read(Path(folder))
        built_for = index.card.get("model_id")
        if built_for and built_for != encoder.model_id:
            raise ValueError(f"the search index {folder} was built beside item vectors of {built_for}, but the encoder "
                             f"is {encoder.model_id}: load the encoder the warehouse was embedded with")
        return cls(index, encoder)

    def search(self, con: duckdb.DuckDBPyConnection, query: str, user_id: str | None = None,
               n: int = 10) -> pd.DataFrame:
        """The top `n` items for `query`, re-ranked with `user_id`'s portrait when there is one.
        `frame.attrs["personalized"]` says whether a portrait was used."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        candidates = self.candidates(con, query)
        portrait = read_portrait(con, user_id) if user_id is not None and self.settings.personal() else None
        features = self.personal_features(candidates, portrait)
        plain = fuse(candidates.text, candidates.semantic, self.settings.text_weight)
        personal = personal_score(features, self.settings)
        order = ranking(plain + personal)[:n]
        frame = self._results(con, candidates, features, portrait, plain, personal, order)
        frame.attrs["personalized"] = portrait is not None
        return frame

    def candidates(self, con: duckdb.DuckDBPyConnection, query: str, vector: np.ndarray | None = None) -> Candidates:
        """The pool for `query`, limited to items still in `items`; `vector`: the query's
        embedding when the caller already has it."""
        words = query_terms(query)
        text = self.index.text_scores(list(words))
        self._refresh_vectors(con)
        semantic = np.full(len(text), np.nan)
        if self._has_vector.any():
            vector = self.encoder.encode([query])[0] if vector is None else vector
            semantic[self._has_vector] = self._vectors[self._has_vector] @ np.asarray(vector, dtype=np.float32)
        rows = pool(text, semantic, self.settings.candidates)
        ids = self.index.items["item_id"].to_numpy()[rows].tolist()
        present = {r[0] for r in con.execute("SELECT DISTINCT item_id FROM items WHERE item_id IN "
                                             "(SELECT unnest(?::VARCHAR[]))", [ids]).fetchall()}
        rows = np.array([r for r, i in zip(rows, ids) if i in present], dtype=np.int64)
        return Candidates(rows, text[rows], semantic[rows], words)

    def personal_features(self, candidates: Candidates, portrait: Portrait | None) -> PersonalFeatures:
        items = self.index.items
        return personal_features(portrait, self._vectors[candidates.rows], self._has_vector[candidates.rows],
                                 items["category"].to_numpy()[candidates.rows],
                                 items["price_index"].to_numpy(dtype=np.float64)[candidates.rows])

    def _refresh_vectors(self, con: duckdb.DuckDBPyConnection) -> None:
        """Item vectors of the encoder's model, aligned with the index; read again only when
        the set of embedded items changes (a cheap check of ids, not of 384 floats each)."""
        key = tuple(con.execute("SELECT count(*), bit_xor(hash(item_id)) FROM item_embeddings WHERE model_id = ?",
                                [self.encoder.model_id]).fetchall()[0])
        if key == self._vectors_key:
            return
        table = con.sql("SELECT item_id, vector FROM item_embeddings WHERE model_id = $model",
                        params={"model": self.encoder.model_id}).to_arrow_table()
        position = {item: i for i, item in enumerate(self.index.items["item_id"])}
        rows = np.array([position.get(i, -1) for i in table["item_id"].to_pylist()], dtype=np.int64)
        vectors = np.zeros((len(self.index.items), self.encoder.dimension), dtype=np.float32)
        has_vector = np.zeros(len(self.index.items), dtype=bool)
        if len(table):
            found = matrix(table["vector"], table.schema.field("vector").type.list_size).astype(np.float32)
            vectors[rows[rows >= 0]] = found[rows >= 0]
            has_vector[rows[rows >= 0]] = True
        self._vectors, self._has_vector, self._vectors_key = vectors, has_vector, key

    def _results(self, con: duckdb.DuckDBPyConnection, candidates: Candidates, features: PersonalFeatures,
                 portrait: Portrait | None, plain: np.ndarray, personal: np.ndarray, order: np.ndarray) -> pd.DataFrame:
        items = self.index.items
        rows = candidates.rows[order]
        ids = items["item_id"].to_numpy()[rows].tolist()
        titles = dict(con.execute("SELECT item_id, any_value(title) FROM items WHERE item_id IN "
                                  "(SELECT unnest(?::VARCHAR[])) GROUP BY item_id", [ids]).fetchall())
        reasons = []
        for position, row in zip(order, rows):
            found = set(items["terms"].iat[row])
            matched = [word for token, word in candidates.words.items() if token in found]
            reasons.append(reason(matched, candidates.semantic[position], portrait, items["category"].iat[row],
                                  {"interest": self.settings.interest_weight * features.interest[position],
                                   "category": self.settings.category_weight * features.category[position],
                                   "price": self.settings.price_weight * (features.price[position] - NEUTRAL_PRICE_FIT)}))
        return pd.DataFrame({
            "rank": np.arange(1, len(rows) + 1),
            "item_id": ids,
            "title": [titles.get(i) for i in ids],
            "score": (plain + personal)[order],
            "text_score": candidates.text[order],
            "semantic_score": candidates.semantic[order],
            "personal_score": personal[order],
            "reason": reasons,
        }, columns=RESULT_COLUMNS)


def reason(matched: list[str], semantic: float, portrait: Portrait | None, category: str | None,
           contributions: dict[str, float]) -> str:
    """Why an item is where it is, in words: the query words it matches (or its closeness in
    meaning: cosine 0.5 or more counts as close) and the portrait signal that lifted it most."""
    parts = [f"matches {', '.join(repr(w) for w in matched)}" if matched else
             "close in meaning to the query" if semantic >= CLOSE_COSINE else "no query word matches; nearest in meaning"]
    if portrait is not None and contributions and max(contributions.values()) > 0:
        strongest = max(contributions, key=contributions.get)
        if strongest == "category":
            parts.append(f"{category} is {portrait.category_shares.get(category, 0.0):.0%} of your interest")
        elif strongest == "price":
            parts.append(f"near the prices you usually pay ({portrait.price_band})" if portrait.price_band else
                         "near the prices you usually pay")
        else:
            parts.append("like items you viewed and bought")
    return "; ".join(parts)


def publish_index(con: duckdb.DuckDBPyConnection, store: ModelStore,
                  settings: SearchSettings) -> tuple[Path, SearchIndex]:
    """Index the catalogue of `con`, save it as a new version with its model card, and publish it.
    Raises ValueError (and publishes nothing) when there is nothing to index."""
    index = SearchIndex.build(read_catalogue(con), settings)
    model_id, vectors = con.execute("SELECT any_value(model_id), count(*) FROM item_embeddings").fetchall()[0] \
        if table_exists(con, "item_embeddings") else (None, 0)
    folder = store.new_version(INDEX_NAME)
    index.save(folder)
    terms = index.items["terms"].map(len)
    index.card = {
        "name": INDEX_NAME, "built_at": datetime.now(timezone.utc).isoformat(), "model_id": model_id,
        "items": len(index.items), "items_with_text": int((terms > 0).sum()), "items_with_vector": int(vectors),
        "vocabulary": len(index.retriever.vocab_dict), "mean_terms_per_item": round(float(terms.mean()), 2),
        "fields": ["title", "categories", "brand", "description"], "bm25": "bm25s, Lucene variant",
        "fusion": "min-max normalized weighted sum", "settings": asdict(settings),
    }
    store.write_card(folder, index.card)
    store.publish(INDEX_NAME, folder)
    return folder, index


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="recommender",
    kinds={"duckdb", "bm25"},
    owners=["team:portrait"],
    deps=["items", "item_embeddings"],
)
def search_index(context: dg.AssetExecutionContext, config: SearchConfig, warehouse: Warehouse,
                 model_store: ModelStore) -> dg.MaterializeResult:
    """A BM25 index of the catalogue text (no user-written text), saved as a new version in
    models/search_index/ with its settings; `Searcher` fuses it with item-vector similarity
    and re-ranks with the user's portrait at query time."""
    settings = config.settings()
    with warehouse.connect() as con:
        try:
            folder, index = publish_index(con, model_store, settings)
        except ValueError as error:
            # a shop without catalogue text (a review or click log) has nothing to search; the
            # portraits and recommendations built in the same run must not fail for it
            context.log.warning(f"search_index: {error}; nothing published (the previous index, if any, stays). "
                                "Land items with titles or descriptions under landing/items/ to enable search.")
            return dg.MaterializeResult(metadata={"published": False, "reason": str(error)})
    card = index.card
    context.log.info(f"search index of {len(index.items):,} items published ({folder})")
    common = index.items.explode("terms")["terms"].value_counts().head(10)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(index.items),
        "items_with_text": card["items_with_text"],
        "items_with_vector": card["items_with_vector"],
        "vocabulary": card["vocabulary"],
        "model_id": str(card["model_id"]),
        "version": folder.name,
        "path": dg.MetadataValue.path(str(folder)),
        "settings": dg.MetadataValue.json(asdict(settings)),
        "common_terms": dg.MetadataValue.md(markdown_table([{"term": t, "items": int(c)} for t, c in common.items()])),
    })
