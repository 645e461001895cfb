"""Architecture configs that travel with the weights as JSON (safetensors metadata)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


class JsonConfig:
    """Mixin for frozen config dataclasses: ``to_dict`` gives plain JSON types, ``from_dict`` checks names."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected some of {sorted(known)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"{cls.__name__} is missing fields {missing}")
        return cls(**d)
