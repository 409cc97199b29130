"""The base of every recipe section: a pydantic model that rejects unknown fields.

Apart from :mod:`probes.recipe` so that each model family can declare its own recipe section in
its own file (:mod:`probes.families`) without importing the recipe that collects them.
"""

from __future__ import annotations

import typing

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from probes.errors import ProbesError

MAX_SEED = (1 << 63) - 1  # seeds are 63-bit: torch takes them, hashing keeps them
# Lengths and scales a recipe states (a std, a separation, a coordinate) beyond this overflow
# squares and exponentials in float64 before they mean anything.
MAX_SCALE = 1e6
NUMBER_EXPECTED = "number_expected"  # the error type of a boolean or a text where a number belongs


class Strict(BaseModel):
    # NaN and inf are never meaningful recipe numbers (a sigma, a scale, a std).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data):
        """pydantic reads ``true`` as 1 and ``'8'`` as 8 where a number is expected; a recipe that
        says ``samples: true`` or ``seed: '0'`` means something else, so it is refused."""
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is None:
                continue
            admits = _scalar_kinds(field.annotation)
            if not admits & {int, float} or BaseModel in admits:
                continue
            for leaf in _leaves(value):
                if isinstance(leaf, bool) and bool not in admits:
                    got = f"the boolean {str(leaf).lower()}"
                elif isinstance(leaf, str) and str not in admits:
                    got = f"the text {leaf!r} (write numbers unquoted)"
                else:
                    continue
                # The type names the check; ``field`` puts the field into the error's location.
                raise PydanticCustomError(NUMBER_EXPECTED, "expected a number, got {got}", {"field": name, "got": got})
        return data


def _scalar_kinds(annotation) -> set:
    """Every scalar type an annotation admits anywhere (``str`` for string literals; ``BaseModel``
    for a nested section, which checks itself)."""
    if annotation is bool:
        return {bool}
    if isinstance(annotation, type):
        return {BaseModel} if issubclass(annotation, BaseModel) else {annotation}
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin is typing.Annotated:  # the constraints that follow the type are not types
        return _scalar_kinds(typing.get_args(annotation)[0])
    if origin is dict:  # the values; keys are names
        return _scalar_kinds(typing.get_args(annotation)[1])
    kinds: set = set()
    for arg in typing.get_args(annotation):
        if arg is not Ellipsis:
            kinds |= _scalar_kinds(arg)
    if not typing.get_args(annotation) and annotation is not type(None):
        kinds.add(object)  # Any or an unknown form: admits everything
    if object in kinds:
        kinds |= {bool, str}
    return kinds


def _leaves(value):
    """The scalars inside a value (list items and mapping values, at any depth)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def leaf_weights(weights: dict[str, float], leaves: list[str], field: str,
                 what: str = "a leaf of the taxonomy") -> torch.Tensor:
    """A ``{leaf: weight}`` recipe mapping as a float64 tensor in ``leaves`` order (missing leaves
    weigh 0); one line naming ``field`` for an unknown name or weights that cannot be normalised."""
    unknown = sorted(set(weights) - set(leaves))
    if unknown:
        raise ProbesError(f"{field}: {unknown[0]!r} is not {what}")
    w = torch.tensor([float(weights.get(leaf, 0.0)) for leaf in leaves], dtype=torch.float64)
    if (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0 or not torch.isfinite(w.sum()):
        raise ProbesError(f"{field}: weights must be finite, non-negative and not all zero")
    return w
