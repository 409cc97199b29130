"""Watch a user's own diffusers pipeline as it samples: ``probes.probe(pipe, taxonomy, ...)``.

The pipeline runs exactly as the user calls it (their scheduler, prompts, guidance, LoRA,
generator). Its scheduler's ``step`` is wrapped for the duration of the call: the wrapper reads
``(model_output, timestep, sample)``, calls the original ``step`` and returns its result
untouched, so not a pixel of the output changes. From what it reads, each step gives, on the
toolkit's sigma axis (:mod:`probes.schedulers`):

* the state ``x_sigma`` (the scheduler's latents converted from their layout);
* the pipeline's own clean estimate ``x0_hat`` (from the guided model output and sigma, with the
  family's parameterisation), which ``plugin`` classifies;
* the scheduler's own sigma grid.

Estimators that need more than the pipeline computes (``rollout`` completions, ``bayes``'s
per-leaf predictions) call the family's plain (unguided) denoiser from :mod:`probes.families`.
Steps at infinite sigma (a flow schedule's ``t = 1``, a zero-terminal-SNR schedule's first step)
are left out: there the posterior is the prior, whatever the model. Second-order schedulers call
``step`` twice per noise level; only the call that starts from the trajectory's state is read.
The wrapper keeps ``step``'s signature: pipelines read it to decide whether to pass ``eta`` and
``generator``.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

from probes.classifiers.base import Classifier
from probes.errors import ProbesError
from probes.estimators import ESTIMATORS, Estimator, ProbeContext, build_estimator
from probes.estimators.base import check_posteriors
from probes.families import FAMILIES, Family, family_of
from probes.kept_samples import kept_from_trajectory
from probes.result import ProbeResult
from probes.sampling import Trajectory
from probes.schedulers import SchedulerKind, check_estimators, check_step_targets, is_trajectory_step, read_step
from probes.taxonomy import Taxonomy, load_taxonomy


class LatentClassifier(torch.nn.Module):
    """Latents -> leaf log-probabilities: decode, then classify.

    ``classifier`` is a toolkit :class:`~probes.classifiers.base.Classifier` (its leaves must be the
    taxonomy's) or any callable ``images [B, 3, H, W] in [-1, 1] -> logits [B, L]`` over the
    taxonomy's leaves in ``taxonomy.leaves`` order.
    """

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], classifier: Callable, leaves: Sequence[str]):
        super().__init__()
        self.decode, self.classifier, self.leaves = decode, classifier, list(leaves)
        self.returns_log_probs = isinstance(classifier, Classifier)
        if self.returns_log_probs and list(classifier.leaves) != self.leaves:
            raise ProbesError(f"classifier: its leaves ({', '.join(map(str, classifier.leaves[:4]))} ...) are not the "
                              f"taxonomy's leaves in order ({', '.join(self.leaves[:4])} ...)")

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.classifier(self.decode(z))
        if not isinstance(out, torch.Tensor) or out.shape != (z.shape[0], len(self.leaves)):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ProbesError(f"classifier: returned {shape} for {z.shape[0]} images; expected logits "
                              f"[{z.shape[0]}, {len(self.leaves)}] over the taxonomy's leaves")
        return out.float() if self.returns_log_probs else torch.log_softmax(out.float(), dim=-1)


class StepRecorder:
    """Wraps ``scheduler.step`` on the instance; records each step on the sigma axis."""

    def __init__(self, pipe, family: Family, kind, call_kwargs: dict):
        self.scheduler, self.family, self.kind, self.call_kwargs = pipe.scheduler, family, kind, call_kwargs
        self.sigmas: list[float] = []
        self.native: list[float] = []
        self.states: list[torch.Tensor] = []
        self.denoised: list[torch.Tensor] = []
        self.last: torch.Tensor | None = None
        self.calls = 0

    def __enter__(self):
        original = self.scheduler.step
        self.shadowed = vars(self.scheduler).get("step")  # the user's own instance-level wrapper, if any

        @functools.wraps(original)  # pipelines read step's signature to pass eta= and generator=
        def step(*args, **kwargs):
            names = ("model_output", "timestep", "sample")
            got = dict(zip(names, args))
            got.update({k: kwargs[k] for k in names if k in kwargs})
            if self.calls == 0:  # the grid is set, no step taken yet
                check_step_targets(self.scheduler)
            self.calls += 1
            if is_trajectory_step(self.scheduler):  # not a second-order scheduler's corrector call
                self.record(got["model_output"], got["timestep"], got["sample"])
            return original(*args, **kwargs)

        self.scheduler.step = step  # an instance attribute shadows the method until __exit__
        return self

    def __exit__(self, *exc):
        if self.shadowed is None:
            del self.scheduler.step
        else:
            self.scheduler.step = self.shadowed
        return False

    @torch.no_grad()
    def record(self, model_output, timestep, sample):
        rows = self.family.step_rows
        sigma, x, x0 = read_step(self.scheduler, self.kind, rows(model_output, self.call_kwargs), timestep,
                                 rows(sample, self.call_kwargs))
        if math.isinf(sigma):
            return
        self.sigmas.append(sigma)
        self.states.append(x)
        self.denoised.append(x0)

    def trajectory(self) -> Trajectory:
        if not self.sigmas:
            raise ProbesError("the pipeline took no scheduler step at finite sigma; nothing to probe")
        sigmas = torch.tensor(self.sigmas, dtype=torch.float64)
        if len(sigmas) > 1 and (sigmas[1:] >= sigmas[:-1]).any():
            raise ProbesError(f"{type(self.scheduler).__name__}: its sigmas do not fall step by step "
                              f"({[round(s, 4) for s in self.sigmas]}); probing needs one step per noise level")
        method = "ancestral" if self.kind.kernel == "ancestral" else "ddim"
        denoised = torch.stack(self.denoised)
        return Trajectory(sigmas=sigmas, states=torch.stack(self.states), denoised=denoised, x0=denoised[-1],
                          method=method, cond=None)


def _check_noise_law(pipe, family: Family, kind: SchedulerKind) -> None:
    """A rectified-flow model stepped by a variance-preserving scheduler, or the reverse, samples
    from neither law and its states sit at no sigma this probe could name: refused."""
    if family.flow != (kind.layout == "flow"):
        model = "a rectified-flow model" if family.flow else f"a {kind.layout.upper()}-type diffusion model"
        needs = "FlowMatchEulerDiscreteScheduler or FlowMatchHeunDiscreteScheduler" if family.flow else \
            "a DDPM-family scheduler (DDIM, DDPM, Euler, DPM-Solver, ...)"
        raise ProbesError(f"{type(pipe).__name__} is {model} but {type(pipe.scheduler).__name__} steps a "
                          f"{kind.layout} noise law: the pair does not sample the model; use {needs}")


def _check_grid_before_sampling(pipe, call_kwargs: dict, ests: Sequence[Estimator] = ()) -> None:
    """Set the call's grid on a copy of the scheduler and check it, so that a grid the probe cannot
    read is refused before the model runs (the recorder checks the real one again at its first step).
    An estimator's ``sigma_stride`` is checked against the step count here too: the trajectory holds
    one sigma per step and loses one at most (an infinite first sigma), so from three steps on a
    stride the steps cannot hold is refused now rather than after sampling."""
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    steps = call_kwargs.get("num_inference_steps")
    if steps is None:
        param = params.get("num_inference_steps")
        steps = None if param is None else param.default
    try:  # a numpy integer (a sweep over np.arange) is a step count too
        steps = None if isinstance(steps, bool) else operator.index(steps)
    except TypeError:
        return
    if steps is None or steps < 1 or call_kwargs.get("timesteps") is not None:
        return
    # custom sigmas, SDXL's denoising_start/end and img2img's strength (its default too) change the
    # number of steps taken
    sets_steps = ("sigmas", "denoising_start", "denoising_end")
    if steps >= 3 and "strength" not in params and all(call_kwargs.get(k) is None for k in sets_steps):
        for est in ests:
            est.check_grid(steps)
    trial = copy.deepcopy(pipe.scheduler)
    try:
        trial.set_timesteps(steps)
    except Exception:
        return
    check_step_targets(trial)


def _estimators(estimators) -> list[Estimator]:
    if isinstance(estimators, (str, Estimator)):
        estimators = [estimators]
    out = []
    for e in estimators:
        if isinstance(e, Estimator):
            out.append(e)
        elif isinstance(e, str) and e in ESTIMATORS:
            out.append(build_estimator(e))
        else:
            raise ProbesError(f"estimators: unknown estimator {e!r}; expected names from {', '.join(ESTIMATORS)}")
    return out


def generator_provenance(generator) -> dict | None:
    """What fixes the random draws of a pipeline call made with ``generator=generator``:
    ``{"seeds": [...], "per_sample": bool, "device": str}`` for one ``torch.Generator`` (the whole
    call draws from it) or a list of them (sample i draws from generator i), read before the call.

    None, so that nothing is claimed, without a generator, for anything but torch generators, and
    for a generator that has drawn since it was seeded: its ``initial_seed()`` then no longer says
    where its draws start."""
    per_sample = isinstance(generator, (list, tuple))
    gens = list(generator) if per_sample else [generator]
    if not gens or not all(isinstance(g, torch.Generator) for g in gens):
        return None
    for g in gens:
        fresh = torch.Generator(device=g.device).manual_seed(g.initial_seed())
        if not torch.equal(fresh.get_state(), g.get_state()):
            return None
    devices = sorted({g.device.type for g in gens})
    return {"seeds": [int(g.initial_seed()) for g in gens], "per_sample": per_sample, "device": ",".join(devices)}


def probe(pipe, taxonomy, classifier: Callable | None = None, estimators=("plugin",), *,
          family: str | Family | None = None, conditioner=None, estimator_seed: int = 0, batch_size: int = 64,
          **pipe_kwargs) -> ProbeResult:
    """Run ``pipe(**pipe_kwargs)`` and estimate ``p(leaf | x_sigma)`` along its own trajectory.

    Args:
        pipe: a diffusers pipeline of a registered family (:data:`probes.families.FAMILIES`).
        taxonomy: a :class:`~probes.taxonomy.Taxonomy` or a source for :func:`probes.load_taxonomy`.
        classifier: a toolkit classifier over the taxonomy's leaves, or any callable
            ``images [B, 3, H, W] in [-1, 1] -> logits [B, L]`` (``plugin``, ``rollout``).
        estimators: names (``plugin``, ``rollout``, ``bayes``) or estimator objects.
        family: the registry name when the pipeline's class does not say it.
        conditioner: taxonomy nodes -> the family's ``cond`` (``bayes``); the family's default
            (prompts from the taxonomy, ImageNet class ids) otherwise.
        estimator_seed: seeds the estimators' own randomness (rollout completions).
        batch_size: rows per internal denoiser / classifier call.
        **pipe_kwargs: the pipeline call's arguments, passed through unchanged.

    Returns:
        a :class:`~probes.result.ProbeResult`; ``result.output`` is what ``pipe(...)`` returned.
        Its ``meta`` records the seeds of ``generator`` when given (``meta["generator"]``, see
        :func:`generator_provenance`), so ``compare`` pairs two probes drawn from the same seeds,
        and ``guidance_scale`` when given.
    """
    tax = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(str(taxonomy))
    tax.require_a_choice()
    fam = family_of(pipe) if family is None else (FAMILIES[family] if isinstance(family, str) and family in FAMILIES
                                                  else family)
    if not isinstance(fam, Family):
        raise ProbesError(f"family: unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    ests = _estimators(estimators)
    kind = check_estimators(pipe.scheduler, [e.name for e in ests], pipe_kwargs)
    _check_noise_law(pipe, fam, kind)
    _check_grid_before_sampling(pipe, pipe_kwargs, ests)
    needs_classifier = [e.name for e in ests if e.name in ("plugin", "rollout")]
    if needs_classifier and classifier is None:
        raise ProbesError(f"classifier: estimators {', '.join(needs_classifier)} need a classifier "
                          "(a toolkit classifier or a callable images -> logits over the taxonomy's leaves)")
    scorer = LatentClassifier(fam.decoder(pipe, pipe_kwargs), classifier, tax.leaves) if classifier else None
    needs_model = any(e.name in ("rollout", "bayes") for e in ests)
    denoiser = fam.denoiser(pipe, **fam.options_from_call(pipe_kwargs)) if needs_model else None
    if hasattr(denoiser, "embeddings"):
        denoiser.embeddings(None, 1)  # encode the empty prompt: no text encoders fails now, not after sampling
    if needs_model and any(e.name == "bayes" for e in ests) and conditioner is None:
        conditioner = fam.conditioner(pipe, tax)

    seeds = generator_provenance(pipe_kwargs.get("generator"))  # before the call draws from it
    with StepRecorder(pipe, fam, kind, pipe_kwargs) as recorder:
        output = pipe(**pipe_kwargs)
    traj = recorder.trajectory()
    for est in ests:
        est.check_grid(len(traj.sigmas))

    ctx = ProbeContext(taxonomy=tax, sigmas=traj.sigmas, denoiser=denoiser, conditioner=conditioner,
                       classifier=scorer, batch_size=batch_size)
    estimates = {}
    for est in ests:
        g = torch.Generator(device=traj.states.device).manual_seed(estimator_seed)
        estimates[est.name] = est.estimate(traj, ctx, generator=g)
        check_posteriors(estimates[est.name], tax.leaves, f"estimator {est.name!r}")
    meta: dict[str, Any] = {"kind": "probe", "family": fam.name, "pipeline": type(pipe).__name__,
                            "scheduler": type(pipe.scheduler).__name__, "scheduler_kernel": kind.kernel,
                            "state_layout": kind.layout, "estimators": {e.name: repr(e) for e in ests}}
    if seeds is not None:
        meta["generator"] = seeds
    if not fam.shares_step_noise(pipe, pipe_kwargs):
        meta["unpaired"] = (f"{type(pipe).__name__} with {type(pipe.scheduler).__name__} draws its step noise "
                            "without the call's generator, so equal seeds do not pair samples")
    scale = pipe_kwargs.get("guidance_scale")
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):  # numpy scalars too
        meta["guidance_scale"] = float(scale)
    kept = kept_samples(traj, tax, scorer, fam.decoder(pipe, pipe_kwargs), pipe_kwargs, seeds)
    return ProbeResult(taxonomy=tax, estimates=estimates, output=output, trajectory=traj, meta=meta, samples=kept)


def kept_samples(traj: Trajectory, taxonomy: Taxonomy, classifier, decode, call_kwargs: dict, seeds: dict | None):
    """What a probe keeps of its samples: previews of the final images, the classifier's reading of
    them and x0 strips of a few samples (decoded with the family's decoder; cheap next to sampling)."""
    prompts = call_kwargs.get("prompt")
    n = traj.denoised.shape[1]
    if isinstance(prompts, str):
        prompts = [prompts] * n
    conditions = list(prompts) if isinstance(prompts, (list, tuple)) and len(prompts) == n else None
    if conditions is None and call_kwargs.get("class_labels") is not None:
        labels = call_kwargs["class_labels"]
        labels = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
        conditions = [f"class {c}" for c in labels] if len(labels) == n else None
    per_sample = seeds is not None and seeds.get("per_sample") and len(seeds["seeds"]) == n
    return kept_from_trajectory(traj, taxonomy.leaves, classifier, decode, traj.denoised.device,
                                conditions=conditions, seeds=seeds["seeds"] if per_sample else None)
