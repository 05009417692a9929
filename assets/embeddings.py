"""`text_embeddings` and `item_embeddings`: what the encoder makes of every text and item.

`text_embeddings` holds one vector per distinct text (review texts and summaries,
search queries, chat messages, item titles with descriptions), keyed by the MD5 of the
text and the encoder's model id. It is incremental: a run encodes only texts the current
model has not embedded, commits every chunk (so an interrupted run keeps its progress),
drops vectors of any other model (changing the model re-embeds everything), and drops
vectors of texts no longer in the warehouse (an erased user's texts go with them).
"""

import time
from dataclasses import dataclass

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa

from assets.automation import AUTOMATION, TORCH_OP_TAGS, WAREHOUSE_POOL
from assets.events import register_functions
from assets.metadata import histogram_markdown, markdown_table, query_rows
from resources.encoder import TextEncoder
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse, table_exists, vector_dimension

CHUNK_TEXTS = 2_000

#: Every text Portrait embeds, with where it comes from. Summaries are attributes, so
#: they are cleaned here the way `events.text` was cleaned at ingestion.
TEXT_SOURCES_SQL = """
SELECT DISTINCT text, kind FROM (
    SELECT text, event_type AS kind FROM events WHERE text IS NOT NULL
    UNION ALL
    SELECT clean_text(attributes->>'summary'), 'review_summary' FROM events
    WHERE event_type = 'review' AND attributes->>'summary' IS NOT NULL
    UNION ALL
    SELECT concat_ws('. ', title, description), 'item' FROM items WHERE title IS NOT NULL OR description IS NOT NULL
) WHERE text IS NOT NULL
"""


def ensure_table(con: duckdb.DuckDBPyConnection, dimension: int) -> None:
    """`text_embeddings` with a fixed-size FLOAT[dimension] vector; recreated if the size changed."""
    if table_exists(con, "text_embeddings"):
        if vector_dimension(con, "text_embeddings") == dimension:
            return
        con.execute("DROP TABLE text_embeddings")
    con.execute(f"""
        CREATE TABLE text_embeddings (
            text_hash VARCHAR NOT NULL,   -- md5 of the text
            model_id VARCHAR NOT NULL,
            text VARCHAR NOT NULL,
            vector FLOAT[{dimension}] NOT NULL,
            embedded_at TIMESTAMP NOT NULL
        )""")


@dataclass(frozen=True)
class Pending:
    hashes: list[str]
    texts: list[str]
    removed_other_models: int
    removed_orphans: int


def prepare(con: duckdb.DuckDBPyConnection, model_id: str, dimension: int) -> Pending:
    """Drop vectors of other models and of texts no longer present; list what to encode."""
    ensure_table(con, dimension)
    register_functions(con)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _texts AS SELECT md5(text) AS text_hash, text FROM ({TEXT_SOURCES_SQL})")
    other = con.execute("DELETE FROM text_embeddings WHERE model_id <> ?", [model_id]).fetchone()[0]
    orphans = con.execute("DELETE FROM text_embeddings WHERE text_hash NOT IN (SELECT text_hash FROM _texts)").fetchone()[0]
    rows = con.execute("""
        SELECT DISTINCT text_hash, text FROM _texts
        WHERE text_hash NOT IN (SELECT text_hash FROM text_embeddings WHERE model_id = ?)
        ORDER BY text_hash""", [model_id]).fetchall()
    con.execute("DROP TABLE _texts")
    return Pending([r[0] for r in rows], [r[1] for r in rows], other, orphans)


def insert_vectors(con: duckdb.DuckDBPyConnection, model_id: str, hashes: list[str], texts: list[str],
                   vectors: np.ndarray) -> None:
    dimension = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    batch = pa.table({
        "text_hash": pa.array(hashes, pa.string()),
        "text": pa.array(texts, pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dimension),
    })
    con.register("_batch", batch)
    try:
        con.execute("INSERT INTO text_embeddings SELECT text_hash, ?, text, vector, current_timestamp::TIMESTAMP "
                    "FROM _batch", [model_id])
    finally:
        con.unregister("_batch")


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="language_model",
    kinds={"torch", "duckdb"},
    owners=["team:portrait"],
    deps=["events", "items"],
    op_tags=TORCH_OP_TAGS,
)
def text_embeddings(context: dg.AssetExecutionContext, warehouse: Warehouse, device: TorchDevice,
                    encoder: TextEncoder) -> dg.MaterializeResult:
    """One vector per distinct text (reviews, summaries, queries, chat, item texts), keyed by
    content hash and model id, as fixed-size FLOAT[n] arrays. Incremental: only texts the
    current model has not embedded are encoded."""
    loaded = encoder.load(device)
    with warehouse.transaction() as con:
        pending = prepare(con, loaded.model_id, loaded.dimension)
    total = len(pending.texts)
    context.log.info(f"{total:,} texts to encode with {loaded.model_id} on {device.describe()['device']}")
    started = time.perf_counter()
    for start in range(0, total, CHUNK_TEXTS):
        hashes = pending.hashes[start:start + CHUNK_TEXTS]
        texts = pending.texts[start:start + CHUNK_TEXTS]
        vectors = loaded.encode(texts)
        with warehouse.transaction() as con:  # each chunk lands whole; a crash keeps the chunks before it
            insert_vectors(con, loaded.model_id, hashes, texts, vectors)
        context.log.info(f"encoded {min(start + CHUNK_TEXTS, total):,} / {total:,}")
    seconds = time.perf_counter() - started
    with warehouse.connect() as con:
        stored, chars = con.execute("SELECT count(*), list(length(text)) FROM text_embeddings").fetchone()
        sample = query_rows(con, "SELECT text_hash, left(text, 80) AS text, vector[1:4]::VARCHAR AS vector_head "
                                 "FROM text_embeddings ORDER BY text_hash LIMIT 5")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": stored,
        "texts_encoded_this_run": total,
        "removed_other_models": pending.removed_other_models,
        "removed_no_longer_present": pending.removed_orphans,
        "encode_seconds": round(seconds, 2),
        "texts_per_second": round(total / seconds, 1) if total and seconds > 0 else 0.0,
        "model_id": loaded.model_id,
        "dimension": loaded.dimension,
        **device.describe(),
        "text_length_histogram": histogram_markdown(chars or [0], "Text length (characters)", "characters"),
        "preview": dg.MetadataValue.md(markdown_table(sample)),
    })


ITEM_EMBEDDINGS_DDL = """
CREATE OR REPLACE TABLE item_embeddings (
    item_id VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,        -- 'catalog' (title and description) or 'reviews' (mean of review texts)
    n_texts INTEGER NOT NULL,
    vector FLOAT[{dimension}] NOT NULL
)
"""


def build_item_embeddings(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rebuild `item_embeddings` from `text_embeddings` (which must exist, even empty: a shop
    without texts, like Taobao, lists every item as without embedding); return counts by
    source and of items with nothing to embed.

    An item's vector comes from its catalogue text where the shop has one; otherwise
    it is the L2-normalised mean of its review-text vectors (the Amazon case).
    """
    register_functions(con)
    model_id = con.execute("SELECT any_value(model_id) FROM text_embeddings").fetchone()[0]
    dimension = vector_dimension(con, "text_embeddings")
    con.execute(ITEM_EMBEDDINGS_DDL.format(dimension=dimension))
    con.execute("""
        INSERT INTO item_embeddings
        SELECT i.item_id, e.model_id, 'catalog', 1, e.vector
        FROM items i JOIN text_embeddings e ON e.text_hash = md5(concat_ws('. ', i.title, i.description))
        WHERE i.title IS NOT NULL OR i.description IS NOT NULL
    """)
    reviews = con.execute("""
        SELECT r.item_id, list(e.vector) AS vectors
        FROM (SELECT DISTINCT item_id, text FROM events WHERE event_type = 'review' AND text IS NOT NULL
                                                      AND item_id IS NOT NULL) r
        JOIN text_embeddings e ON e.text_hash = md5(r.text)
        WHERE r.item_id NOT IN (SELECT item_id FROM item_embeddings)
        GROUP BY r.item_id ORDER BY r.item_id
    """).fetchall()
    if reviews:
        ids = [r[0] for r in reviews]
        counts = [len(r[1]) for r in reviews]
        means = np.array([np.mean(np.asarray(r[1], dtype=np.float32), axis=0) for r in reviews], dtype=np.float32)
        means /= np.clip(np.linalg.norm(means, axis=1, keepdims=True), 1e-12, None)
        flat = pa.array(means.ravel(), type=pa.float32())
        con.register("_means", pa.table({"item_id": ids, "n_texts": pa.array(counts, pa.int32()),
                                          "vector": pa.FixedSizeListArray.from_arrays(flat, dimension)}))
        con.execute("INSERT INTO item_embeddings SELECT item_id, ?, 'reviews', n_texts, vector FROM _means", [model_id])
        con.unregister("_means")
    counts = dict(con.execute("SELECT source, count(*) FROM item_embeddings GROUP BY 1").fetchall())
    con.execute("""
        CREATE OR REPLACE TABLE items_without_embedding AS
        SELECT item_id FROM (SELECT item_id FROM items UNION SELECT item_id FROM events WHERE item_id IS NOT NULL)
        WHERE item_id NOT IN (SELECT item_id FROM item_embeddings) ORDER BY item_id
    """)
    counts["without_embedding"] = con.execute("SELECT count(*) FROM items_without_embedding").fetchone()[0]
    return counts


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="language_model",
    kinds={"duckdb"},
    owners=["team:portrait"],
    deps=[text_embeddings, "items", "events"],
)
def item_embeddings(warehouse: Warehouse) -> dg.MaterializeResult:
    """A vector per item: from its title and description where the shop has them, else the
    mean of its review embeddings (flagged `source = 'reviews'`). Items with neither are
    listed in `items_without_embedding`, never invented."""
    with warehouse.transaction() as con:
        counts = build_item_embeddings(con)
    with warehouse.connect() as con:
        missing = [r[0] for r in con.execute("SELECT item_id FROM items_without_embedding LIMIT 20").fetchall()]
        by_source = query_rows(con, "SELECT source, count(*) AS items, avg(n_texts) AS mean_texts "
                                    "FROM item_embeddings GROUP BY 1 ORDER BY 1")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": counts.get("catalog", 0) + counts.get("reviews", 0),
        "from_catalog": counts.get("catalog", 0),
        "from_reviews": counts.get("reviews", 0),
        "without_embedding": counts["without_embedding"],
        "without_embedding_sample": missing,
        "by_source": dg.MetadataValue.md(markdown_table(by_source)),
    })
