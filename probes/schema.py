"""The base of every recipe section: a pydantic model that rejects unknown fields.

Apart from :mod:`probes.recipe` so that each model family can declare its own recipe section in
its own file (:mod:`probes.adapters`) without importing the recipe that collects them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # NaN and inf are never meaningful recipe numbers (a sigma, a scale, a std).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
