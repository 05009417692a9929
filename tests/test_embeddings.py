"""text_embeddings and item_embeddings on a small demo shop, through real Dagster runs."""

import json

import dagster as dg
import numpy as np

from assets.embeddings import item_embeddings, text_embeddings
from orchestration.cli import main
from resources.encoder import TextEncoder
from resources.torch_device import TorchDevice
from tests.ingest_helpers import query, resources


def _resources(home):
    return {**resources(home), "device": TorchDevice(device="cpu"), "encoder": TextEncoder()}


def _materialize(home, instance, assets):
    return dg.materialize(assets, instance=instance, resources=_resources(home))


def _encoded(result) -> int:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "text_embeddings"]
    return event.materialization.metadata["texts_encoded_this_run"].value


def test_embeddings_are_incremental_and_items_get_catalogue_vectors(home, instance):
    assert main(["import", "demo", "--users", "30", "--items", "24", "--days", "3"]) == 0
    assert main(["run", "--ingest-only"]) == 0
    first = _materialize(home, instance, [text_embeddings, item_embeddings])
    assert first.success
    distinct = query(home, "SELECT count(*) FROM text_embeddings")[0][0]
    assert _encoded(first) == distinct > 0
    assert query(home, "SELECT data_type FROM information_schema.columns WHERE table_name = 'text_embeddings' "
                       "AND column_name = 'vector'") == [("FLOAT[384]",)]
    assert _encoded(_materialize(home, instance, [text_embeddings])) == 0  # nothing new: nothing encoded

    # stored vectors are the encoder's vectors for that text
    text, vector = query(home, "SELECT text, vector FROM text_embeddings ORDER BY text_hash LIMIT 1")[0]
    expected = TextEncoder().load(TorchDevice(device="cpu")).encode([text])[0]
    assert np.allclose(np.asarray(vector), expected, atol=1e-5)

    assert query(home, "SELECT count(*), count(*) FILTER (WHERE source = 'catalog') FROM item_embeddings") == [(24, 24)]

    # a text that leaves the warehouse leaves the embeddings; a changed model re-embeds everything
    with __import__("duckdb").connect(str(home / "warehouse.duckdb")) as con:
        gone = con.execute("SELECT text FROM events WHERE event_type = 'search' LIMIT 1").fetchone()[0]
        con.execute("DELETE FROM events WHERE text = ?", [gone])
    again = dg.materialize([text_embeddings], instance=instance,
                           resources={**_resources(home), "encoder": TextEncoder(max_length=128)})
    event = again.get_asset_materialization_events()[0].materialization.metadata
    assert event["removed_other_models"].value == distinct
    assert query(home, "SELECT count(*) FROM text_embeddings WHERE text = ?", [gone]) == [(0,)]
    assert query(home, "SELECT count(DISTINCT model_id) FROM text_embeddings")[0][0] == 1


def test_items_without_catalogue_text_take_the_mean_of_their_reviews(home, instance):
    landing = home / "landing"
    (landing / "items").mkdir(parents=True)
    (landing / "items" / "i.csv").write_text("item_id\nA\nB\nC\n")
    day = landing / "events" / "date=2024-03-01"
    day.mkdir(parents=True)
    rows = [
        {"user_id": "u1", "event_type": "review", "ts": "2024-03-01T10:00:00Z", "item_id": "A", "rating": 5,
         "text": "Lovely warm tone"},
        {"user_id": "u2", "event_type": "review", "ts": "2024-03-01T11:00:00Z", "item_id": "A", "rating": 1,
         "text": "Broke in a week"},
        {"user_id": "u3", "event_type": "view", "ts": "2024-03-01T12:00:00Z", "item_id": "B"},
    ]
    (day / "e.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["run", "--ingest-only"]) == 0
    assert _materialize(home, instance, [text_embeddings, item_embeddings]).success
    (source, n_texts, vector), = query(home, "SELECT source, n_texts, vector FROM item_embeddings WHERE item_id = 'A'")
    encoded = TextEncoder().load(TorchDevice(device="cpu")).encode(["Lovely warm tone", "Broke in a week"])
    mean = encoded.mean(axis=0)
    assert (source, n_texts) == ("reviews", 2)
    assert np.allclose(np.asarray(vector), mean / np.linalg.norm(mean), atol=1e-5)
    assert query(home, "SELECT item_id FROM items_without_embedding ORDER BY 1") == [("B",), ("C",)]
