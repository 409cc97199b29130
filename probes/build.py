"""From a :class:`~probes.plan.Plan` to what a run is built from: one frozen
:class:`~probes.estimators.base.ProbeContext`.

The plan's family builds the model's part (:meth:`probes.families.base.Family.build`); on top come,
the same for every family: the run's prior over the leaves, the denoiser the samples are generated
with (classifier-free guidance when the recipe asks for it), the conditioning of each generated
sample, finiteness checks on every denoiser call, and, once the grid is known
(:func:`with_grid`), the labelled pairs the ``immse`` estimator integrates over.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from typing import Any

import torch

from probes.classifiers.base import CheckedClassifier
from probes.denoisers.base import Denoiser, FiniteCheck
from probes.denoisers.generation import generation_denoiser
from probes.errors import ProbesError
from probes.estimators.base import ProbeContext
from probes.families import BuildSpec
from probes.plan import Plan
from probes.sampling import sample
from probes.taxonomy import Taxonomy

GOLDEN = (math.sqrt(5) - 1) / 2


def build(plan: Plan) -> ProbeContext:
    """The model built for ``plan`` with its run settings (no grid yet: see :func:`with_grid`)."""
    s = plan.sampling
    spec = BuildSpec(model=plan.model, classifier=plan.classifier, taxonomy=plan.taxonomy, device=plan.device,
                     prior=plan.prior, needs_unconditional=plan.needs_unconditional)
    model = plan.family.build(spec)
    for note in plan.notes:  # said once the model is there (a model that fails to load says only that)
        print(f"probes: note: {note}", file=sys.stderr)
    prior = model.prior if plan.prior is None else plan.prior
    generator = _generator(s, model, prior)
    checked = FiniteCheck(model.denoiser)
    classifier = None if model.classifier is None else CheckedClassifier(model.classifier, len(plan.taxonomy.leaves))
    ctx = model.replace(
        prior=prior, denoiser=checked, cond_denoiser=checked, guided_denoiser=FiniteCheck(generator),
        classifier=classifier,
        sampler=s.method, batch_size=s.batch_size,
        outside_mass=0.0 if plan.samples_from_taxonomy else model.outside_mass,
        inside_weighted=not plan.samples_from_taxonomy)
    return ctx.replace(generation_cond=_generation_cond(s.condition, ctx))


def with_grid(plan: Plan, ctx: ProbeContext, sigmas: torch.Tensor) -> ProbeContext:
    """``ctx`` on the run's grid, with the labelled pairs of ``immse`` drawn on it."""
    return ctx.replace(sigmas=sigmas, sample_pairs=_pair_sampler(plan, ctx, sigmas))


def _generator(sampling, model: ProbeContext, prior: torch.Tensor) -> Denoiser:
    """What draws the samples: the plain model for unconditional runs; else the guidance the recipe
    asks for (none, classifier-free in an interval, per node, stopping per sample) around the
    guidance base (a negative prompt's denoiser, or the plain one)."""
    if sampling.condition == "none":
        return model.denoiser
    return generation_denoiser(model.guidance_base or model.denoiser, model.conditioner, model.taxonomy, prior,
                               sampling.guidance, method=sampling.method, outside_mass=model.outside_mass)


def _generation_cond(condition, ctx: ProbeContext) -> Callable[[torch.Tensor], Any]:
    """Conditioning for samples with global indices ``idx`` (leaves drawn from the prior; prompts cycle)."""
    leaves = ctx.taxonomy.leaves
    if condition == "none":
        return lambda idx: None
    if condition == "leaf":
        if ctx.conditioner is None:
            raise ProbesError("sampling.condition: this model cannot be conditioned on leaves")
        ctx.conditioner([leaves[0]])  # fail now, not in the middle of the run
        return lambda idx: ctx.conditioner([leaves[i] for i in leaves_from_prior(idx, ctx.prior).tolist()])
    prompts = []
    for prompt in condition:
        if "{leaf}" in prompt:
            prompts += [leaf_prompt(prompt, ctx.taxonomy, leaf) for leaf in leaves]
        else:
            prompts.append(prompt)
    return lambda idx: [prompts[i % len(prompts)] for i in idx.tolist()]


def leaf_prompt(template: str, taxonomy: Taxonomy, leaf: str) -> str:
    """A ``{leaf}`` prompt for one leaf: the taxonomy's curated prompt for it (its first
    ``prompts`` entry) when it has one, else ``template`` with the leaf's label in place of
    ``{leaf}`` (and "a" before a vowel made "an")."""
    attrs = taxonomy.node_attrs(leaf)
    if attrs.get("prompts"):
        return attrs["prompts"][0]
    label = str(attrs.get("label") or leaf)
    if label[:1].lower() in "aeiou":
        template = re.sub(r"\b([Aa]) \{leaf\}", r"\1n {leaf}", template)
    return template.replace("{leaf}", label)


def leaves_from_prior(idx: torch.Tensor, prior) -> torch.Tensor:
    """Leaf index of each sample with global index ``idx``, drawn from ``prior`` (an ``[L]`` tensor,
    or ``L`` for uniform) so that the run's label frequencies are the prior's.

    A uniform prior cycles through the leaves (exact frequencies every L samples). Otherwise leaves
    are the prior's quantiles at the golden-ratio sequence ``frac((i + 1/2) * 0.618...)``: a
    deterministic, per-index draw (resume-safe, batch-independent) whose frequencies match the prior
    to ``O(log N / N)``, closer than i.i.d. draws (``O(N^-1/2)``).
    """
    if isinstance(prior, int) or bool(torch.allclose(prior, prior.mean().expand_as(prior), atol=1e-12)):
        return idx % (prior if isinstance(prior, int) else len(prior))
    u = torch.frac((idx.double() + 0.5) * GOLDEN)
    cdf = torch.cumsum(prior.double(), 0)
    return torch.searchsorted(cdf / cdf[-1], u, right=True).clamp(max=len(prior) - 1)


def leaf_of_sample(condition, idx: torch.Tensor, prior: torch.Tensor) -> torch.Tensor | None:
    """The known leaf of each generated sample (leaf-conditional sampling), else ``None``."""
    return leaves_from_prior(idx, prior) if condition == "leaf" else None


def _pair_sampler(plan: Plan, ctx: ProbeContext, sigmas: torch.Tensor):
    """Clean samples with a known leaf, for the I-MMSE estimator.

    Exact mixtures and ``source: data`` draw from the data; otherwise each pair is generated by
    the model conditioned on a leaf drawn from the prior.
    """
    if ctx.data is not None and (ctx.exact_model is not None or plan.sampling.source == "data"):
        return ctx.data
    if ctx.conditioner is None:
        return None
    leaves = ctx.taxonomy.leaves

    def draw(n: int, g: torch.Generator):
        leaf = torch.multinomial(ctx.prior.float(), n, replacement=True, generator=g)
        noise = torch.randn((n, *ctx.shape), generator=g, dtype=ctx.state_dtype) * sigmas[0]
        cond = ctx.conditioner([leaves[i] for i in leaf.tolist()])
        with torch.no_grad():
            traj = sample(ctx.denoiser, noise.to(ctx.device), sigmas, method=plan.sampling.method, cond=cond,
                          generator=g)
        return traj.x0, leaf

    return draw
