"""Keywords, intents and sentiment for texts."""

import dagster as dg
import numpy as np
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from assets.embeddings import text_embeddings
from assets.text_signals import (
    candidate_phrases,
    classify_intents,
    intent_prototypes,
    keyword_vocabulary,
    predict_sentiment,
    rank_keywords,
    text_signals,
)
from orchestration.cli import main
from resources.encoder import TextEncoder, bundled_model_path
from resources.model_store import ModelStore
from resources.torch_device import TorchDevice
from tests.ingest_helpers import query, resources

CPU = TorchDevice(device="cpu")


def test_candidates_skip_stop_words_numbers_and_chinese_particles():
    phrases = candidate_phrases("The strings don't sound bright at 12 gauge. 音质非常好的吉他")
    assert {"strings", "sound bright", "gauge", "吉他", "音质"} <= phrases
    assert not {"the", "don", "12", "好的", "的吉"} & phrases


def test_keywords_are_the_candidates_closest_to_the_text():
    texts = ["Warm tone and bright strings", "The strings broke, bad strings", "Warm tone from this amp"]
    vocabulary = keyword_vocabulary(texts)
    assert set(vocabulary) == {"warm", "tone", "warm tone", "strings"}  # phrases seen in two texts or more
    encoder = TextEncoder().load(CPU)
    ranked = rank_keywords(texts, encoder.encode(texts), vocabulary, encoder.encode(vocabulary), top=2)
    assert ranked[1] == ["strings"] and set(ranked[0]) <= {"warm tone", "strings", "warm", "tone"}


def test_intents_follow_the_prototypes():
    encoder = TextEncoder().load(CPU)
    labels, prototypes = intent_prototypes(encoder)
    texts = ["my package has not arrived yet, any tracking?", "I'd like my money back for this broken pedal",
             "shure sm57 vs sm58 which one", "the audio interface is not recognized by my laptop"]
    intents, scores = classify_intents(encoder.encode(texts), labels, prototypes)
    assert intents == ["shipping", "return", "compare", "support"]
    assert np.all(scores > 0)


def _tiny_classifier(folder):
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(bundled_model_path())).save_pretrained(folder)


def test_sentiment_prediction_keeps_order_and_scores_in_range(tmp_path):
    _tiny_classifier(tmp_path)
    texts = ["great", "a much longer text about a broken amplifier", "ok"]
    labels, scores = predict_sentiment(tmp_path, texts, CPU, batch_size=2)
    assert len(labels) == 3 and set(labels) <= {"negative", "neutral", "positive"}
    again, again_scores = predict_sentiment(tmp_path, texts[::-1], CPU)
    assert again[::-1] == labels and np.allclose(again_scores[::-1], scores, atol=1e-6)
    assert np.all(np.abs(scores) <= 1)


def test_text_signals_asset_with_a_published_model(home, instance):
    assert main(["import", "demo", "--users", "30", "--items", "24", "--days", "3"]) == 0
    assert main(["run", "--ingest-only"]) == 0
    store = ModelStore(root=str(home / "models"))
    folder = store.new_version("behavior_model")
    _tiny_classifier(folder)
    store.publish("behavior_model", folder)
    run_resources = {**resources(home), "device": CPU, "encoder": TextEncoder(), "model_store": store}
    assert dg.materialize([text_embeddings, text_signals], instance=instance, resources=run_resources).success
    rows = query(home, "SELECT count(*), count(sentiment), count(intent), count(*) FILTER (WHERE len(keywords) > 0) "
                       "FROM text_signals")[0]
    assert rows[0] == query(home, "SELECT count(*) FROM text_embeddings")[0][0]
    assert rows[1] > 0 and rows[2] > 0 and rows[3] > 0
    # search queries get an intent, item texts get no sentiment
    assert query(home, "SELECT count(*) FROM text_signals WHERE list_contains(kinds, 'search') AND intent IS NULL") == [(0,)]
    assert query(home, "SELECT count(*) FROM text_signals WHERE kinds = ['item'] AND sentiment IS NOT NULL") == [(0,)]
