"""The versioned model-architecture registry: names, hyperparameter schemas and input contracts.

No torch here: `node.runtime.models` builds the modules. An architecture is `name@version`; a new version never changes
an old one's meaning, so a spec hash keeps naming the same computation forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from marketplace.errors import SpecError


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlpParams(_Params):
    in_features: int = Field(ge=1, le=1 << 16)
    hidden: list[int] = Field(default_factory=lambda: [64], max_length=8)
    out_features: int = Field(ge=1, le=1 << 16)
    activation: Literal["relu", "tanh", "gelu"] = "relu"

    @model_validator(mode="after")
    def _widths(self) -> MlpParams:
        if any(not 1 <= h <= 8192 for h in self.hidden):
            raise ValueError("hidden widths must be within 1..8192")
        return self


class CnnParams(_Params):
    in_channels: int = Field(ge=1, le=16)
    image_size: int = Field(ge=4, le=256)
    channels: list[int] = Field(default_factory=lambda: [16, 32], min_length=1, max_length=4)
    kernel_size: Literal[3, 5] = 3
    num_classes: int = Field(ge=2, le=10_000)

    @model_validator(mode="after")
    def _fits(self) -> CnnParams:
        if any(not 1 <= c <= 512 for c in self.channels):
            raise ValueError("channels must be within 1..512")
        if self.image_size >> len(self.channels) < 1:
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.channels)} pooling stages")
        return self


class TransformerParams(_Params):
    vocab_size: int = Field(ge=2, le=200_000)
    d_model: int = Field(default=64, ge=8, le=1024)
    nhead: int = Field(default=4, ge=1, le=16)
    num_layers: int = Field(default=2, ge=1, le=12)
    dim_ff: int = Field(default=128, ge=8, le=8192)
    max_len: int = Field(default=128, ge=2, le=4096)
    num_classes: int = Field(ge=2, le=10_000)

    @model_validator(mode="after")
    def _heads(self) -> TransformerParams:
        if self.d_model % self.nhead:
            raise ValueError(f"d_model {self.d_model} must be divisible by nhead {self.nhead}")
        return self


class MiniLmParams(_Params):
    num_classes: int = Field(ge=2, le=10_000)
    max_len: int = Field(default=64, ge=8, le=256)
    train_encoder: bool = False  # finetune the encoder too, or only the classifier head


@dataclass(frozen=True)
class Arch:
    name: str
    params: type[_Params]
    inputs: dict[str, tuple[str, int]]  # tensor name -> (dtype kind "float" | "int", rank incl. batch)
    description: str
    pretrained: bool = False


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("mlp@1", MlpParams, {"x": ("float", 2)}, "multi-layer perceptron on feature vectors"),
    Arch("cnn@1", CnnParams, {"x": ("float", 4)}, "small CNN (conv-relu-maxpool blocks, linear head) on images"),
    Arch("transformer@1", TransformerParams, {"input_ids": ("int", 2)},
         "small transformer encoder classifier over token ids (mean pooling, no dropout)"),
    Arch("minilm-classifier@1", MiniLmParams, {"input_ids": ("int", 2), "attention_mask": ("int", 2)},
         "pretrained all-MiniLM-L6-v2 sentence encoder (packaged offline) with a linear classifier head",
         pretrained=True),
)}


def get_arch(name: str) -> Arch:
    """Raises SpecError listing the known architectures."""
    try:
        return ARCHS[name]
    except KeyError:
        raise SpecError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}") from None


def validate_params(name: str, params: dict[str, Any]) -> _Params:
    """Check hyperparameters against the architecture's schema. Raises SpecError."""
    arch = get_arch(name)
    try:
        return arch.params.model_validate(params)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())
        raise SpecError(f"invalid hyperparameters for {name}: {problems}") from None
