"""The torch device as an injected resource: no module names a device in code."""

from __future__ import annotations

import re

import dagster as dg
import torch
from pydantic import Field

DEVICE_FORM = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


class TorchDevice(dg.ConfigurableResource):
    """Where and how torch runs. Switch with run config in the launchpad, the
    `PORTRAIT_DEVICE` / `PORTRAIT_PRECISION` environment variables, or dagster.yaml.

    `auto` takes CUDA when present. Precision `auto` is fp16 on CUDA and fp32 on CPU
    (bf16 is slower than fp32 on the CPUs measured here); `int8` means dynamic int8
    quantization of linear layers, on CPU only.
    """

    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    precision: str = Field(default="auto", description="auto | fp32 | bf16 | fp16 | int8")
    cpu_threads: int = Field(default=0, description="torch CPU threads; 0 keeps torch's default")

    def torch_device(self) -> torch.device:
        if not DEVICE_FORM.match(self.device):
            raise dg.Failure(f"TorchDevice.device is {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise dg.Failure(f"TorchDevice.device is {self.device!r} but no CUDA device is visible; "
                                 "set it to auto or cpu (run config, PORTRAIT_DEVICE or dagster.yaml)")
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if index >= torch.cuda.device_count():
                raise dg.Failure(f"TorchDevice.device is {self.device!r} but only "
                                 f"{torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(self.device)

    def resolved_precision(self) -> str:
        if self.precision not in PRECISIONS:
            raise dg.Failure(f"TorchDevice.precision is {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        on_cuda = self.torch_device().type == "cuda"
        if self.precision == "auto":
            return "fp16" if on_cuda else "fp32"
        if self.precision == "int8" and on_cuda:
            raise dg.Failure("TorchDevice.precision int8 is for CPU; on CUDA use fp16 or bf16")
        return self.precision

    def dtype(self) -> torch.dtype:
        return DTYPES[self.resolved_precision()]

    def apply_threads(self) -> None:
        if self.cpu_threads > 0:
            torch.set_num_threads(self.cpu_threads)

    def describe(self) -> dict[str, str | int]:
        """What every torch asset records in its metadata."""
        device = self.torch_device()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return {"device": str(device), "device_name": name, "precision": self.resolved_precision(),
                "cpu_threads": torch.get_num_threads()}
