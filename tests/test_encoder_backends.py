"""The OpenVINO encoder backend: agreement with the torch fp32 path, the on-disk cache, selection."""

import json
import shutil

import dagster as dg
import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from resources import encoder_backends  # noqa: E402
from resources.encoder import TextEncoder  # noqa: E402
from resources.encoder_backends import OpenVinoEncoder  # noqa: E402
from resources.torch_device import TorchDevice  # noqa: E402

TEXTS = [
    "Great strings, bright tone and they stay in tune.",
    "Broke after a week.",
    "ok",
    "Five stars. Exactly what I needed for my pedalboard.",
    "The tuner is accurate and quick, but the clip feels flimsy and the display is hard to read in sunlight.",
    "I returned it: the cable crackled whenever I moved it, even after cleaning the jacks twice.",
    "Decent capo for the price. It holds the strings evenly, though it buzzes a little on the high E.",
    "The cable is long enough for my pedalboard and feels sturdy " * 20,
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return TextEncoder().load(TorchDevice(device="cpu", precision="fp32")).encode(TEXTS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("encoder_cache")


@pytest.fixture(scope="module")
def int8(cache) -> OpenVinoEncoder:
    return TextEncoder(backend="openvino", cache_dir=str(cache)).load(TorchDevice(device="cpu", precision="int8"))


def test_openvino_int8_agrees_with_torch_fp32(int8, reference):
    vectors = int8.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, reference).mean() >= 0.99
    assert cosines(vectors, reference).min() >= 0.97


def test_openvino_fp32_matches_torch_fp32(int8, cache, reference):
    fp32 = TextEncoder(backend="openvino", cache_dir=str(cache)).load(TorchDevice(device="cpu", precision="fp32"))
    assert cosines(fp32.encode(TEXTS), reference).min() >= 0.999


def test_second_load_reuses_the_cached_export(int8, cache):
    folder = int8.cache_folder
    assert folder.parent.parent == cache and folder.name == "openvino-int8"
    assert folder.parent.name.startswith("sentence-transformers_all-MiniLM-L6-v2-")
    assert (folder.parent / "openvino-fp32" / "model.xml").exists()
    build = json.loads((folder / "build.json").read_text())
    assert build["calibration"] == "built-in sentences"
    builds = dict(encoder_backends.BUILDS)
    stamps = {p: p.stat().st_mtime_ns for p in folder.parent.rglob("*") if p.is_file()}
    again = TextEncoder(backend="openvino", cache_dir=str(cache)).load(TorchDevice(device="cpu", precision="int8"))
    assert again.cache_folder == folder
    assert encoder_backends.BUILDS == builds
    assert {p: p.stat().st_mtime_ns for p in folder.parent.rglob("*") if p.is_file()} == stamps
    assert np.allclose(again.encode(TEXTS[:3]), int8.encode(TEXTS[:3]), atol=1e-6)


def test_selection_through_text_encoder(int8, cache):
    encoder = TextEncoder(backend="openvino", cache_dir=str(cache), batch_tokens=64)
    loaded = encoder.load(TorchDevice(device="cpu", precision="int8", cpu_threads=1))
    assert isinstance(loaded, OpenVinoEncoder) and loaded.backend == "openvino"
    assert loaded.model_id == encoder.model_id() + ":openvino-int8" and loaded.dimension == 384 and loaded.precision == "int8"
    together = loaded.encode(TEXTS)
    one_by_one = np.vstack([loaded.encode([t]) for t in TEXTS])
    assert np.allclose(together, one_by_one, atol=1e-4)
    assert loaded.encode([]).shape == (0, 384)
    assert not isinstance(TextEncoder().load(TorchDevice(device="cpu")), OpenVinoEncoder)


@pytest.mark.parametrize("settings, message", [
    ({"backend": "onnx", "cache_dir": "x"}, "use one of torch, openvino"),
    ({"backend": "openvino"}, "needs TextEncoder.cache_dir"),
])
def test_bad_backend_settings_say_what_to_do(settings, message):
    with pytest.raises(dg.Failure, match=message):
        TextEncoder(**settings).load(TorchDevice(device="cpu"))


@pytest.mark.slow
def test_caller_calibration_texts_quantize_every_linear_layer(int8, cache, tmp_path, reference):
    shutil.copytree(int8.cache_folder.parent / "openvino-fp32", tmp_path / int8.cache_folder.parent.name / "openvino-fp32")
    exports = encoder_backends.BUILDS["export"]
    calibration = [f"{t} ({i})" for i in range(5) for t in TEXTS]
    loaded = TextEncoder(backend="openvino", cache_dir=str(tmp_path)).load(
        TorchDevice(device="cpu", precision="int8"), calibration_texts=calibration)
    assert encoder_backends.BUILDS["export"] == exports  # the fp32 export already there was used
    build = json.loads((loaded.cache_folder / "build.json").read_text())
    assert build["calibration"] == "caller texts" and build["recipe"] == "static int8, all linear layers"
    assert cosines(loaded.encode(TEXTS), reference).mean() >= 0.99
