"""The optional text generator: any local Hugging Face causal language model.

Portrait writes its user summaries from templates. Pointing `TextGenerator.model_path` at
a local causal-LM folder (`PORTRAIT_GENERATOR`) lets that model rephrase the template
facts into a short summary and a one-line marketing message instead; wherever the model
returns nothing, the template text stays. No generator model ships with Portrait.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import torch
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from resources.torch_device import TorchDevice

#: files whose content names a generator: a change to either gives new texts a new source id
ID_FILES = ("config.json", "generation_config.json")


class TextGenerator(dg.ConfigurableResource):
    """A local causal language model folder; empty `model_path` = disabled (templates only).

    Greedy decoding by default (`temperature` 0), so the same model and facts give the same
    text. With `temperature` > 0 the model samples, seeded by `seed`.
    """

    model_path: str = Field(default="", description="a local causal-LM folder; empty = no generator, templates only")
    max_new_tokens: int = Field(default=60, description="tokens generated per text at most")
    temperature: float = Field(default=0.0, description="0 = greedy (deterministic); > 0 samples")
    seed: int = Field(default=0, description="seeds sampling when temperature > 0")
    batch_size: int = Field(default=8, description="prompts generated together")

    @property
    def enabled(self) -> bool:
        return bool(self.model_path.strip())

    def path(self) -> Path:
        path = Path(self.model_path.strip())
        if not (path / "config.json").exists():
            raise dg.Failure(f"TextGenerator.model_path {path} has no config.json; point it at a local Hugging Face "
                             "causal language model folder, or leave it empty to use the templates")
        return path

    def model_id(self) -> str:
        """The folder's name and a short hash of its configuration: another model gets another id."""
        path = self.path()
        digest = hashlib.sha256()
        for name in ID_FILES:
            if (path / name).exists():
                digest.update(name.encode() + b"\0" + (path / name).read_bytes())
        return f"{path.name}@{digest.hexdigest()[:8]}"

    def load(self, device: TorchDevice) -> LoadedGenerator:
        if not self.enabled:
            raise dg.Failure("TextGenerator is disabled (empty model_path); the template texts are used")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.temperature < 0:
            raise dg.Failure("TextGenerator needs max_new_tokens >= 1, batch_size >= 1 and temperature >= 0")
        device.apply_threads()
        path = self.path()
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise dg.Failure(f"the tokenizer in {path} has neither a pad nor an end-of-sequence token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # generation continues every prompt from its last real token
        tokenizer.truncation_side = "left"  # a long prompt loses its start, never its closing instruction
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        model.eval()
        if device.resolved_precision() == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            model = model.to(device=device.torch_device(), dtype=device.dtype())
        return LoadedGenerator(tokenizer, model, device.torch_device(), self.model_id(), self.max_new_tokens,
                               self.temperature, self.seed, self.batch_size)


def _context_length(model: torch.nn.Module) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def first_paragraph(text: str, one_line: bool = False) -> str:
    """The first paragraph (or line) of a continuation, whitespace collapsed, quotes removed."""
    text = text.strip()
    text = re.split(r"\n\s*\n" if not one_line else r"\n", text, maxsplit=1)[0] if text else ""
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


@dataclass
class LoadedGenerator:
    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    model_id: str
    max_new_tokens: int
    temperature: float
    seed: int
    batch_size: int

    def _prompt_texts(self, prompts: list[str]) -> tuple[list[str], bool]:
        """Prompts wrapped in the model's chat template where it has one (instruction-tuned models)."""
        if getattr(self.tokenizer, "chat_template", None):
            wrapped = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                          add_generation_prompt=True) for p in prompts]
            return wrapped, False  # the template already holds the special tokens
        return list(prompts), True

    @torch.inference_mode()
    def generate(self, prompts: list[str], one_line: bool = False) -> list[str]:
        """One continuation per prompt, in order: only the new text, stripped, its first paragraph
        (or line with `one_line`). An empty string means the model said nothing usable."""
        if not prompts:
            return []
        texts, special = self._prompt_texts(prompts)
        context = _context_length(self.model)
        limit = max(context - self.max_new_tokens, 8) if context else None
        sampling = self.temperature > 0
        options: dict = {"max_new_tokens": self.max_new_tokens, "do_sample": sampling,
                         "pad_token_id": self.tokenizer.pad_token_id}
        if sampling:
            options["temperature"] = self.temperature
            set_seed(self.seed)
        else:  # a folder's own sampling defaults must not leak into greedy decoding
            options.update(temperature=None, top_p=None, top_k=None)
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=limit is not None,
                                     max_length=limit, add_special_tokens=special)
            encoded = {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
            generated = self.model.generate(**encoded, **options)
            new_tokens = generated[:, encoded["input_ids"].shape[1]:]
            decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            out.extend(first_paragraph(text, one_line) for text in decoded)
        return out


def summary_prompt(profile_facts: str) -> str:
    """Asks for a short summary of a customer, from the template summary's facts only."""
    return ("Facts about one customer of an online shop:\n"
            f"{profile_facts}\n\n"
            "Write a short summary of this customer for the shop's staff in two plain sentences. "
            "Use only the facts above; do not invent names, numbers or products.\n"
            "Summary:")


def message_prompt(profile_facts: str, example: str = "") -> str:
    """Asks for a one-line marketing message to the customer, from the same facts."""
    hint = f"A plain version would be: {example}\n" if example else ""
    return ("Facts about one customer of an online shop:\n"
            f"{profile_facts}\n\n"
            "Write one short, friendly marketing message to this customer, a single line of at most 15 words, "
            "about the categories or brands they like. Do not invent prices or discounts.\n"
            f"{hint}"
            "Message:")
