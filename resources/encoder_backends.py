"""Faster CPU backends for the text encoder: the same model run by OpenVINO.

`TextEncoder(backend="openvino", cache_dir=...)` exports the local Hugging Face model once
to OpenVINO IR and keeps it on disk, keyed by model (name, config and a hash of the weights)
and backend variant, so later loads only read the IR:

- precision fp32 (the CPU default): the exported graph run in fp32; vectors match the torch
  path (cosine 1.0).
- precision bf16: the same graph run in bf16 where the CPU supports it.
- precision int8: static int8 (per-channel weights, activations calibrated with NNCF). The
  activation ranges come from `calibration_texts` given to `load` on the first build (a sample
  of the shop's own texts is best: at least `MIN_CALIBRATION_TEXTS`). Without them a built-in
  set of review-like sentences calibrates it, and the feed-forward down-projections, whose
  inputs carry outliers that generic sentences do not cover, stay in floating point.

Pooling and normalisation run after the graph, so one export serves every pooling setting.
The cache folder holds `<model key>/openvino-<variant>/` with `model.xml`, `model.bin` and
`build.json` (what was built, from what, with which versions). Delete a folder to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import dagster as dg
import numpy as np

from resources.encoder import length_batches

if TYPE_CHECKING:
    from resources.encoder import TextEncoder
    from resources.torch_device import TorchDevice

BACKENDS = ("torch", "openvino")
MIN_CALIBRATION_TEXTS = 32
MAX_CALIBRATION_TEXTS = 128
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FFN_DOWN_PROJECTION = r".*\.output\.dense/aten::linear/MatMul$"

# How many IR builds (exports or quantizations) this process has run: tests read it to see
# that a second load reuses the cache.
BUILDS = {"export": 0, "quantize": 0}

# Review-like sentences of mixed length and tone: the calibration set when none is given.
BUILT_IN_CALIBRATION = [
    "Great product, works exactly as described.",
    "Terrible. It broke the second day and support never answered.",
    "ok",
    "Five stars",
    "Not worth the money.",
    "Arrived late and the box was damaged, but the item itself was fine.",
    "I bought this as a gift for my daughter and she loves it.",
    "The sound quality is much better than I expected for the price, and the build feels solid.",
    "Battery life is short; I have to charge it every evening.",
    "Fits well, comfortable, and the colour matches the pictures.",
    "Does what it says. Nothing more, nothing less.",
    "I returned it because the size was wrong and the refund took three weeks.",
    "Cheap plastic, loose buttons, and the manual is useless.",
    "Easy to set up: plug it in, pair it with the phone, done.",
    "My second one; the first lasted five years of daily use.",
    "The strings sound bright at first but lose their tone after a couple of weeks of playing.",
    "Shipping was fast and the seller included a thank-you note.",
    "Works with my laptop but not with my older desktop computer.",
    "Would buy again.",
    "Too loud, too heavy, and it gets hot after ten minutes.",
    "The instructions were in a language I could not read, so I watched a video online instead.",
    "Decent value. The cable is a bit short, so I bought an extension.",
    "Perfect for beginners, though a professional would want something sturdier.",
    "I have been using this tripod for outdoor photography for six months; it is light, stable in wind, "
    "and folds small enough for a backpack, although the leg locks have started to slip a little.",
    "After reading many reviews I finally ordered this blender. It crushes ice easily, the jar is easy "
    "to clean, and the motor is quieter than my old one. The only downside is the short power cord, "
    "which means it has to sit right next to the outlet on the counter.",
    "Customer service replaced the faulty unit without any questions, which I appreciated a lot.",
    "The pedal adds a warm overdrive without colouring the clean tone too much when it is switched off.",
    "It smells strongly of chemicals when you first open it; airing it out for a day helped.",
    "Meh.",
    "The app keeps crashing on my phone and the firmware update did not fix it.",
    "Excellent quality stitching, strong zippers, lots of pockets, and it survived a week of rain.",
    "I use these headphones at the gym every day. They stay in place, the bass is punchy, and the "
    "case charges them twice over. Call quality is poor in windy places, so keep that in mind if you "
    "take a lot of calls outside. Overall I would still recommend them to friends.",
    "Smaller than it looks in the photos.",
    "The price went up right after I bought it, so I feel lucky.",
    "Stopped working after the warranty expired, of course.",
    "Good tuner: quick to respond, accurate, and clips firmly onto the headstock.",
    "The keyboard feels great to type on, but the backlight is uneven and one key squeaks.",
    "Nice idea, poor execution.",
    "Replaced my old one with this and the difference is night and day. Highly recommended for anyone "
    "who records at home, whether vocals or acoustic guitar, because the noise floor is very low.",
    "The colour faded after the first wash and the fabric started pilling.",
]


def load_backend(encoder: TextEncoder, device: TorchDevice,
                 calibration_texts: Sequence[str] | None = None) -> OpenVinoEncoder:
    """The `TextEncoder.load` of every backend but torch."""
    if encoder.backend not in BACKENDS:
        raise dg.Failure(f"TextEncoder.backend is {encoder.backend!r}; use one of {', '.join(BACKENDS)}")
    if device.torch_device().type != "cpu":
        raise dg.Failure(f"TextEncoder.backend {encoder.backend!r} runs on CPU; set TorchDevice.device to cpu "
                         "or use backend torch on CUDA")
    if not encoder.cache_dir:
        raise dg.Failure(f"TextEncoder.backend {encoder.backend!r} needs TextEncoder.cache_dir, the folder "
                         "that keeps the exported model")
    if encoder.pooling not in ("mean", "cls"):
        raise dg.Failure(f"TextEncoder.pooling is {encoder.pooling!r}; use mean or cls")
    precision = device.resolved_precision()
    return load_openvino(encoder.path(), Path(encoder.cache_dir), precision=precision,
                         threads=device.cpu_threads, max_length=encoder.max_length,
                         batch_tokens=encoder.batch_tokens, pooling=encoder.pooling, normalize=encoder.normalize,
                         model_id=f"{encoder.model_id()}:openvino-{precision}", calibration_texts=calibration_texts)


def load_openvino(model_path: Path | str, cache_dir: Path | str, *, precision: str = "fp32", threads: int = 0,
                  max_length: int = 256, batch_tokens: int = 8192, pooling: str = "mean", normalize: bool = True,
                  model_id: str = "", calibration_texts: Sequence[str] | None = None) -> OpenVinoEncoder:
    """An OpenVINO encoder for a local model folder, building its IR into `cache_dir` when missing."""
    import openvino as ov
    from transformers import AutoTokenizer

    model_path, cache_dir = Path(model_path), Path(cache_dir)
    variant = "int8" if precision == "int8" else "fp32"
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    folder = cached_model(model_path, cache_dir, variant, tokenizer, max_length, calibration_texts,
                          model_id.split("@")[0])
    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision in ("fp32", "bf16"):
        config["INFERENCE_PRECISION_HINT"] = "f32" if precision == "fp32" else "bf16"
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)
    return OpenVinoEncoder(tokenizer=tokenizer, compiled=compiled, max_length=max_length, batch_tokens=batch_tokens,
                           pooling=pooling, normalize=normalize, model_id=model_id, precision=precision,
                           cache_folder=folder, dimension=int(compiled.outputs[0].get_partial_shape()[2].get_length()))


def model_key(model_path: Path, name: str = "") -> str:
    """Folder name of a model in the cache: its name plus a hash of its config and weights."""
    digest = hashlib.sha256((model_path / "config.json").read_bytes())
    for weight_file in WEIGHT_FILES:
        weights = model_path / weight_file
        if weights.exists():
            with weights.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name or model_path.name).strip("_") or "model"
    return f"{name}-{digest.hexdigest()[:12]}"


def cached_model(model_path: Path, cache_dir: Path, variant: str, tokenizer, max_length: int,
                 calibration_texts: Sequence[str] | None, name: str = "") -> Path:
    """The cached IR folder for (model, variant); built in a scratch folder and moved in whole."""
    folder = cache_dir / model_key(model_path, name) / f"openvino-{variant}"
    if (folder / "model.xml").exists() and (folder / "build.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if variant == "fp32":
            facts = export_fp32(model_path, tokenizer, scratch)
        else:
            fp32 = cached_model(model_path, cache_dir, "fp32", tokenizer, max_length, None, name)
            facts = quantize_int8(fp32 / "model.xml", tokenizer, max_length, calibration_texts, scratch)
        facts.update(model_path=str(model_path), variant=variant, built_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     versions={p: _version(p) for p in ("openvino", "nncf", "torch", "transformers")})
        (scratch / "build.json").write_text(json.dumps(facts, indent=2))
        try:
            os.replace(scratch, folder)
        except OSError:  # another process published the same folder first: keep theirs
            if not (folder / "model.xml").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def export_fp32(model_path: Path, tokenizer, out: Path) -> dict:
    """Trace the Hugging Face model to OpenVINO IR with dynamic batch and sequence axes."""
    import openvino as ov
    import torch
    from transformers import AutoModel

    class LastHiddenState(torch.nn.Module):  # keyword inputs: positional ones trip transformers 5
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = AutoModel.from_pretrained(str(model_path), dtype=torch.float32).eval()
    example = tokenizer(["a short text", "a somewhat longer text for the example input"], padding=True,
                        return_tensors="pt")
    dynamic = ov.PartialShape([-1, -1])
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on data-dependent branches of the attention mask code
        graph = ov.convert_model(LastHiddenState(model),
                                 example_input={"input_ids": example["input_ids"],
                                                "attention_mask": example["attention_mask"]},
                                 input=[("input_ids", dynamic, ov.Type.i64), ("attention_mask", dynamic, ov.Type.i64)])
    ov.save_model(graph, str(out / "model.xml"), compress_to_fp16=False)
    BUILDS["export"] += 1
    return {"recipe": "fp32 export"}


def quantize_int8(fp32_xml: Path, tokenizer, max_length: int, calibration_texts: Sequence[str] | None,
                  out: Path) -> dict:
    """Static int8 with NNCF: per-channel weights, activation ranges from calibration texts."""
    import nncf
    import openvino as ov

    texts = [t for t in (calibration_texts or []) if t and t.strip()]
    own = len(texts) >= MIN_CALIBRATION_TEXTS
    if own:
        step = max(1, len(texts) // MAX_CALIBRATION_TEXTS)
        texts = texts[::step][:MAX_CALIBRATION_TEXTS]
    else:
        texts = texts + BUILT_IN_CALIBRATION
    samples = []
    for text in texts:  # one text per sample: no padding tokens in the activation statistics
        ids = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        samples.append({"input_ids": ids["input_ids"].astype(np.int64),
                        "attention_mask": ids["attention_mask"].astype(np.int64)})
    ignored = None if own else nncf.IgnoredScope(patterns=[FFN_DOWN_PROJECTION], validate=False)
    graph = ov.Core().read_model(str(fp32_xml))
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        quantized = nncf.quantize(graph, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(samples), ignored_scope=ignored)
    finally:
        nncf_logger.setLevel(level)
    ov.save_model(quantized, str(out / "model.xml"), compress_to_fp16=False)
    BUILDS["quantize"] += 1
    return {"recipe": "static int8, all linear layers" if own else
            "static int8, feed-forward down-projections kept in float",
            "calibration": "caller texts" if own else "built-in sentences", "calibration_texts": len(samples)}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class OpenVinoEncoder:
    """Same interface as `LoadedEncoder`: `encode`, `dimension`, `model_id`, `precision`.

    Batches run on OpenVINO's CPU streams in parallel (throughput mode: on 2 cores, two
    one-thread streams beat one two-thread stream on these small batches).
    """

    tokenizer: object
    compiled: object
    max_length: int
    batch_tokens: int
    pooling: str
    normalize: bool
    model_id: str
    precision: str
    cache_folder: Path
    dimension: int
    backend: str = "openvino"
    _queue: object = field(default=None, repr=False)

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 vectors, one row per text, in the order given; batches formed by token length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._queue is None:
            import openvino as ov

            self._queue = ov.AsyncInferQueue(self.compiled)
            self._queue.set_callback(self._finish)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             add_special_tokens=True)["input_ids"]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        failures: list[BaseException] = []
        for rows in length_batches(ids, self.batch_tokens):
            input_ids, mask = self._pad([ids[i] for i in rows])
            self._queue.start_async({"input_ids": input_ids, "attention_mask": mask}, (out, rows, mask, failures))
        self._queue.wait_all()
        if failures:
            raise failures[0]
        return out

    def _pad(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = ids
            mask[row, :len(ids)] = 1
        return input_ids, mask

    def _finish(self, request, job) -> None:
        """Pool one finished batch into its rows (runs on an OpenVINO thread)."""
        out, rows, mask, failures = job
        try:
            hidden = request.get_output_tensor(0).data
            if self.pooling == "cls":
                pooled = hidden[:, 0].astype(np.float32)
            else:
                weights = mask[:, :, None].astype(np.float32)
                pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            if self.normalize:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[rows] = pooled
        except BaseException as error:  # surfaced by `encode` after wait_all
            failures.append(error)
