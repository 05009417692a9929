"""Text encoding throughput and quality: our fastest quality-keeping path against sentence-transformers.

Reads the first N Amazon review texts (summary + ". " + reviewText), encodes them with our
encoder and with sentence-transformers' own `encode` (same model, texts and threads), both
warmed up first and timed in interleaved rounds (best round of each counts, so a burst of
load from another process hurts both sides alike), and compares the vectors with the
sentence-transformers fp32 ones:

- `mean_cosine` / `min_cosine`: per text, ours against sentence-transformers fp32;
- `nn_overlap_at_10`: mean share of each text's 10 nearest neighbours (cosine, self
  excluded) that both encoders agree on;
- `sentiment_f1_retained`: macro-F1 of a logistic regression on our vectors over the same
  on the fp32 vectors (stars 1-2 negative, 3 neutral, 4-5 positive; the earliest 75% of
  reviews by time train, the latest 25% test).

On CPU ours is the OpenVINO static int8 backend, calibrated on reviews outside the timed
set and built into a fresh cache folder (build time reported apart). On CUDA ours is the
torch path in fp16. Writes bench/results/encode.json and prints it.

    python -m bench.encode [--device cpu|cuda] [--texts 2000] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "amazon-musical-instruments-5core" / \
    "reviews_Musical_Instruments_5.json.gz"
CALIBRATION_TEXTS = 128


def read_reviews(path: Path, skip: int, count: int) -> list[dict]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number < skip:
                continue
            if len(rows) >= count:
                break
            review = json.loads(line)
            rows.append({"text": f"{review.get('summary', '')}. {review.get('reviewText', '')}",
                         "stars": float(review.get("overall", 0)), "time": int(review.get("unixReviewTime", 0))})
    return rows


def cosine_stats(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cosines = np.sum(ours * reference, axis=1)
    return float(cosines.mean()), float(cosines.min())


def nearest(vectors: np.ndarray, k: int) -> np.ndarray:
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argpartition(-similarity, k, axis=1)[:, :k]


def nn_overlap(ours: np.ndarray, reference: np.ndarray, k: int = 10) -> float:
    a, b = nearest(ours, k), nearest(reference, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def sentiment_f1(vectors: np.ndarray, rows: list[dict]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    labels = np.array([0 if r["stars"] <= 2 else 1 if r["stars"] == 3 else 2 for r in rows])
    order = np.argsort([r["time"] for r in rows], kind="stable")
    cut = int(len(order) * 0.75)
    train, test = order[:cut], order[cut:]
    model = LogisticRegression(max_iter=2000, class_weight="balanced", C=1.0)
    model.fit(vectors[train], labels[train])
    return float(f1_score(labels[test], model.predict(vectors[test]), average="macro"))


def timed(encode, texts: list[str]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = encode(texts)
    return len(texts) / (time.perf_counter() - started), vectors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best of each side counts")
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from sentence_transformers import SentenceTransformer

    from bench.machine import record
    from resources.encoder import TextEncoder, bundled_model_path
    from resources.torch_device import TorchDevice

    torch.set_num_threads(args.threads)
    rows = read_reviews(Path(args.data), 0, args.texts)
    texts = [r["text"] for r in rows]
    device = TorchDevice(device=args.device, precision="int8" if args.device == "cpu" else "fp16",
                         cpu_threads=args.threads)
    build_seconds = None
    with tempfile.TemporaryDirectory(prefix="encoder-cache-") as cache:
        if args.device == "cpu":
            calibration = [r["text"] for r in read_reviews(Path(args.data), args.texts, 4 * CALIBRATION_TEXTS)]
            started = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # build progress bars: keep stdout for the JSON
                ours = TextEncoder(backend="openvino", cache_dir=cache).load(device, calibration_texts=calibration)
            build_seconds = round(time.perf_counter() - started, 1)
            backend = f"openvino static int8 ({json.loads((ours.cache_folder / 'build.json').read_text())['recipe']})"
        else:
            ours = TextEncoder().load(device)
            backend = "torch fp16"
        reference = SentenceTransformer(str(bundled_model_path()), device=args.device)
        st_encode = lambda batch: reference.encode(batch, normalize_embeddings=True)  # noqa: E731
        warm = texts[: min(200, len(texts))]
        ours.encode(warm)
        st_encode(warm)
        ours_rates, st_rates, load = [], [], []
        for _ in range(args.rounds):
            rate, st_vectors = timed(st_encode, texts)
            st_rates.append(rate)
            rate, our_vectors = timed(ours.encode, texts)
            ours_rates.append(rate)
            load.append(round(os.getloadavg()[0], 2))

    st_vectors = np.asarray(st_vectors, dtype=np.float32)
    mean_cos, min_cos = cosine_stats(our_vectors, st_vectors)
    f1_ours, f1_reference = sentiment_f1(our_vectors, rows), sentiment_f1(st_vectors, rows)
    result = {
        "texts": len(texts),
        "device": args.device,
        "threads": args.threads,
        "backend": backend,
        "ours_texts_per_s": round(max(ours_rates), 1),
        "sentence_transformers_texts_per_s": round(max(st_rates), 1),
        "speedup": round(max(ours_rates) / max(st_rates), 2),
        "mean_cosine": round(mean_cos, 4),
        "min_cosine": round(min_cos, 4),
        "nn_overlap_at_10": round(nn_overlap(our_vectors, st_vectors), 4),
        "sentiment_f1_retained": round(f1_ours / f1_reference, 4),
        "sentiment_macro_f1": {"ours": round(f1_ours, 4), "sentence_transformers_fp32": round(f1_reference, 4)},
        "rounds": {"ours_texts_per_s": [round(r, 1) for r in ours_rates],
                   "sentence_transformers_texts_per_s": [round(r, 1) for r in st_rates],
                   "load_average_1min": load},
        "build_seconds": build_seconds,
        "calibration": f"{CALIBRATION_TEXTS} of reviews {args.texts}-{args.texts + 4 * CALIBRATION_TEXTS - 1} "
                       "(outside the timed texts)" if args.device == "cpu" else None,
        "versions": {p: _version(p) for p in ("torch", "transformers", "sentence-transformers", "openvino", "nncf")},
    }
    return record("encode", result)


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
