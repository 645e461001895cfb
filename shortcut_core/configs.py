"""Architecture configs that travel with the weights as JSON (safetensors metadata)."""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping


class JsonConfig:
    """Mixin for frozen config dataclasses: ``to_dict`` gives plain JSON types, ``from_dict`` checks names."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls.__name__} must be a JSON object, got {str(d)[:60]!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected some of {sorted(known)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"{cls.__name__} is missing fields {missing}")
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            _check_field(cls.__name__, name, hints[name], value)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _check_field(owner: str, name: str, hint, value) -> None:
    """JSON from a file is untrusted: sizes must be whole and non-negative before a tensor is made of them."""
    def fail(what):
        raise ValueError(f"{owner} field {name!r} must be {what}, got {value!r}")

    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail("a whole number >= 0")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            fail("a finite number >= 0")
    elif hint is str:
        if not isinstance(value, str):
            fail("a string")
    elif typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                                                       for v in value):
            fail("a list of whole numbers >= 0")
