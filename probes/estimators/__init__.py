"""Estimators of ``p(leaf | x_sigma)`` (or of its entropies) along a sigma grid.

=========  ==========================================================  ==============================
name       estimate                                                    needs (``ProbeContext``)
=========  ==========================================================  ==============================
exact      analytic posterior of a Gaussian mixture                    exact_model
plugin     ``classifier(D(x; sigma))`` (biased: Jensen gap)            classifier (+ denoiser)
rollout    mean classifier probability over K stochastic completions   denoiser, classifier
bayes      online Bayes filter along ancestral / forward paths         cond_denoiser, conditioner
immse      I-MMSE integral of ``|D(x) - D(x; cell)|^2`` over sigma     sample_pairs, cond_denoiser,
                                                                       conditioner
guided     band on ``H_w(level | x)`` of the run's own guided law       guided_denoiser, conditioner,
                                                                       leaf labels, exact_model or
                                                                       classifier
=========  ==========================================================  ==============================

See ``docs/estimators.md`` for formulas, costs and measured accuracy.
"""

from __future__ import annotations

from probes.errors import ProbesError
from probes.estimators.base import Estimator, EstimatorOutput, ProbeContext, options_of
from probes.estimators.bayes import BayesEstimator
from probes.estimators.exact import ExactEstimator
from probes.estimators.guided import GuidedEstimator
from probes.estimators.immse import IMMSEEstimator
from probes.estimators.plugin import PluginEstimator
from probes.estimators.rollout import RolloutEstimator

ESTIMATORS: dict[str, type[Estimator]] = {
    "exact": ExactEstimator,
    "plugin": PluginEstimator,
    "rollout": RolloutEstimator,
    "bayes": BayesEstimator,
    "immse": IMMSEEstimator,
    "guided": GuidedEstimator,
}


def build_estimator(name: str, **options) -> Estimator:
    """An estimator by registry name, e.g. ``build_estimator("rollout", k=16, sigma_stride=2)``.

    ``bounds=True`` asks for lower and upper bounds beside the estimate (``entropy_lo``/``_hi``);
    estimators that cannot give them refuse it in one line."""
    if name not in ESTIMATORS:
        raise ProbesError(f"unknown estimator {name!r}; expected one of {', '.join(ESTIMATORS)}")
    cls = ESTIMATORS[name]
    if options.pop("bounds", False) is not False and not cls.gives_bounds:
        bounding = [n for n, c in ESTIMATORS.items() if c.gives_bounds]
        raise ProbesError(f"estimator {name!r}: bounds requested, but {name} gives a point estimate only; "
                          f"{', '.join(bounding)} bounds the entropy of a guided leaf-conditional run")
    allowed = options_of(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ProbesError(f"estimator {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options are {', '.join(allowed)}")
    return cls(**_typed_options(name, cls, options))


def _typed_options(name: str, cls: type, options: dict) -> dict:
    """Options checked against the constructor's annotations, strictly (``k: four``, ``k: "8"`` or
    ``k: .nan`` is one line naming the option, not a traceback from deep inside the estimator nor a
    silent conversion)."""
    import typing

    from pydantic import ConfigDict, TypeAdapter, ValidationError

    hints = typing.get_type_hints(cls.__init__)
    checked = {}
    for key, value in options.items():
        hint = hints.get(key, typing.Any)
        if isinstance(value, bool) and hint is not bool:
            raise ProbesError(f"estimator {name!r}: option {key!r} must be {_type_name(hint)}, got {value!r}")
        try:
            # strict: "2" is not the number 2 (a quoted option is a typo, not an intention)
            checked[key] = TypeAdapter(hint, config=ConfigDict(allow_inf_nan=False, strict=True)).validate_python(value)
        except ValidationError as err:
            raise ProbesError(f"estimator {name!r}: option {key!r} must be {_type_name(hint)}, got {value!r} "
                              f"({err.errors()[0]['msg'].lower()})") from None
    return checked


def _type_name(hint) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, str(hint).replace("typing.", "").replace("NoneType", "null"))


__all__ = [
    "ESTIMATORS",
    "BayesEstimator",
    "Estimator",
    "EstimatorOutput",
    "ExactEstimator",
    "GuidedEstimator",
    "IMMSEEstimator",
    "PluginEstimator",
    "ProbeContext",
    "RolloutEstimator",
    "build_estimator",
]
