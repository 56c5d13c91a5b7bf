"""The one model layer of everything that crosses a boundary (wire, disk, `--json`), and its one canonical JSON.

- `Model`: a pydantic model, frozen, strict, unknown fields refused. `to_json()` is the JSON-ready dict
  (`model_dump(mode="json")`, aliases applied); `from_json(data)` validates a dict, or JSON text/bytes, as JSON
  (strict JSON rules: an int field takes a JSON integer, an enum field its value, a bytes field a string). A
  subclass may name the error that `from_json` and the constructor raise (`json_error`, e.g. SpecError);
  pydantic's ValidationError (a ValueError) otherwise. `to_json_text()` is the pretty file form (sorted keys,
  indent 2, one trailing newline).
- `Record`: the same, but mutable (assignments are validated): durable state that code updates in place
  (a pipeline run's `state.json`, a node's job row).
- Field types for the JSON conventions of the project: `WeiInt` / `DecimalInt` (a Python int that is a decimal
  string in JSON: wei amounts and other integers that may pass 2^53), `Bytes32` (bytes, 0x-hex in JSON),
  `ChecksumAddress` (any-case 0x address in, EIP-55 checksum out).
- `canonical_json(obj)`: RFC 8785 (JSON Canonicalization Scheme) bytes. The ONE encoding of any JSON that is
  hashed or signed (messages, spec hashes, pipeline hashes, tensor headers): sorted keys, no whitespace, UTF-8,
  numbers as ECMAScript prints them (so `12.0` is `12`, exactly what a JavaScript signer produces). Integers
  beyond +-2^53 and NaN/infinity are refused (ValueError): such integers travel as decimal strings.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Self

import rfc8785
from eth_utils import to_checksum_address
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError

__all__ = ["Bytes32", "ChecksumAddress", "DecimalInt", "Model", "Record", "WeiInt", "canonical_json",
           "validation_message"]


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON of `obj` (dicts, lists, str, int, float, bool, None; a `Model` as its `to_json()`).
    Raises ValueError for integers outside +-(2^53 - 1), NaN or infinity, and non-string keys."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json", by_alias=True)
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as err:
        raise ValueError(f"not canonicalizable as RFC 8785 JSON: {err}") from None


# ------------------------------------------------------------------------------------------------ field types
def _decimal_int(value: Any) -> Any:
    """A decimal string of digits becomes an int; anything else goes on to the (strict) int check."""
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 80:
            raise ValueError(f"expected a decimal string of digits, got {value[:40]!r}")
        return int(value)
    return value


def _hex32(value: Any) -> Any:
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise ValueError("expected 0x-hex") from None
        value = raw
    if isinstance(value, bytes | bytearray) and len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return bytes(value) if isinstance(value, bytearray) else value


def _checksum(value: str) -> str:
    try:
        return to_checksum_address(value)
    except (ValueError, TypeError):
        raise ValueError(f"not an address: {value[:50]!r}") from None


#: An unsigned integer that is a decimal string in JSON (wei amounts, uint256 nonces); an int in Python.
DecimalInt = Annotated[int, BeforeValidator(_decimal_int), PlainSerializer(str, return_type=str, when_used="json")]
WeiInt = DecimalInt
#: 32 bytes; 0x-hex in JSON.
Bytes32 = Annotated[bytes, BeforeValidator(_hex32),
                    PlainSerializer(lambda b: "0x" + b.hex(), return_type=str, when_used="json")]
#: An Ethereum address, stored in its EIP-55 checksum form whatever case it came in.
ChecksumAddress = Annotated[str, AfterValidator(_checksum)]


def validation_message(err: ValidationError) -> str:
    """One line for the first problem of a ValidationError: `where: what`."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"{where}: {first['msg']}"


# ------------------------------------------------------------------------------------------------ the base
class Model(BaseModel):
    """Frozen, strict, unknown fields refused; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)

    #: The error `from_json` raises (with the first problem as its message); None: pydantic's ValidationError.
    json_error: ClassVar[type[Exception] | None] = None
    #: What the error message calls this kind of document.
    json_what: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            json_error = type(self).json_error
            if json_error is None:
                raise
            raise json_error(f"{self.json_what or type(self).__name__}: {validation_message(err)}"[:400]) \
                from None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict (wei amounts as decimal strings, bytes as 0x-hex)."""
        return self.model_dump(mode="json")

    def to_json_text(self) -> str:
        """The file form: sorted keys, indent 2, one trailing newline."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Validate a JSON document: a dict (or list) already parsed, or JSON text/bytes (an instance of the class
        is returned as it is: it was validated when it was made)."""
        if isinstance(data, cls):
            return data
        try:
            if isinstance(data, str | bytes | bytearray):
                return cls.model_validate_json(data)
            return cls.model_validate_json(json.dumps(data, allow_nan=False))
        except ValidationError as err:
            if cls.json_error is None:
                raise
            raise cls.json_error(f"{cls.json_what or cls.__name__}: {validation_message(err)}"[:400]) from None
        except (TypeError, ValueError) as err:  # json.dumps of something that is not JSON
            if cls.json_error is None:
                raise
            raise cls.json_error(f"{cls.json_what or cls.__name__}: not JSON: {err}"[:400]) from None


class Record(Model):
    """A `Model` that code updates in place (durable state); every assignment is validated."""

    model_config = ConfigDict(frozen=False, validate_assignment=True)
