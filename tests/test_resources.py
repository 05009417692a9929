"""Resources: torch device selection, the text encoder against sentence-transformers, the model store."""

import dagster as dg
import numpy as np
import pytest
import torch

from resources.encoder import TextEncoder, bundled_model_path
from resources.model_store import ModelStore
from resources.torch_device import TorchDevice

TEXTS = ["Great strings, bright tone and they stay in tune.", "Broke after a week.", "ok",
         "The cable is long enough for my pedalboard and feels sturdy " * 20]


def test_cpu_device_keeps_every_parameter_on_cpu():
    encoder = TextEncoder().load(TorchDevice(device="cpu"))
    assert all(p.device.type == "cpu" for p in encoder.model.parameters())
    assert TorchDevice(device="cpu").describe()["device"] == "cpu"


def test_auto_device_follows_cuda_availability():
    assert TorchDevice().torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("device, precision, message", [
    ("gpu", "auto", "use auto, cpu, cuda or cuda:N"), ("cpu", "fp8", "use one of"),
])
def test_bad_device_settings_say_what_to_use(device, precision, message):
    with pytest.raises(dg.Failure, match=message):
        TorchDevice(device=device, precision=precision).resolved_precision()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    with pytest.raises(dg.Failure, match="no CUDA device"):
        TorchDevice(device="cuda").torch_device()


def test_encoder_matches_sentence_transformers_fp32():
    from sentence_transformers import SentenceTransformer

    ours = TextEncoder().load(TorchDevice(device="cpu", precision="fp32")).encode(TEXTS)
    reference = SentenceTransformer(str(bundled_model_path()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 384)
    assert np.min(np.sum(ours * reference, axis=1)) >= 0.999


def test_encoder_keeps_input_order_across_length_batches():
    encoder = TextEncoder(batch_tokens=64).load(TorchDevice(device="cpu"))
    together = encoder.encode(TEXTS)
    one_by_one = np.vstack([encoder.encode([t]) for t in TEXTS])
    assert np.allclose(together, one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_model_id_names_the_model_and_its_settings(tmp_path):
    assert TextEncoder().model_id().startswith("sentence-transformers/all-MiniLM-L6-v2@")
    assert TextEncoder().model_id() != TextEncoder(max_length=128).model_id()
    with pytest.raises(dg.Failure, match="no config.json"):
        TextEncoder(model_path=str(tmp_path)).model_id()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_encoder_agrees_with_cpu():
    cpu = TextEncoder().load(TorchDevice(device="cpu")).encode(TEXTS)
    gpu = TextEncoder().load(TorchDevice(device="cuda", precision="fp16")).encode(TEXTS)
    assert np.min(np.sum(cpu * gpu, axis=1)) >= 0.995


def test_model_store_publishes_atomically_and_keeps_versions(tmp_path):
    store = ModelStore(root=str(tmp_path))
    assert store.latest("m") is None
    first = store.new_version("m")
    store.write_card(first, {"f1": 0.5})
    store.publish("m", first)
    second = store.new_version("m")
    assert second != first and store.latest("m") == first
    store.publish("m", second)
    assert store.latest("m") == second and store.read_card(first) == {"f1": 0.5}


def test_table_facts_tables_and_vector_sizes():
    import duckdb

    from resources.warehouse import table_exists, vector_dimension

    con = duckdb.connect()
    con.execute("CREATE TABLE t (vector FLOAT[384], other INTEGER)")
    con.execute("CREATE VIEW v AS SELECT * FROM t")
    con.execute("CREATE TEMP TABLE scratch (x INTEGER)")
    assert table_exists(con, "t") and table_exists(con, "scratch")
    assert not table_exists(con, "v") and not table_exists(con, "missing")
    assert vector_dimension(con, "t") == 384
    assert vector_dimension(con, "t", "other") is None and vector_dimension(con, "missing") is None
