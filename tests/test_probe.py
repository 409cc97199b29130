"""``probes.probe`` on tiny pipelines of every family: same pixels, the scheduler's own grid,
posteriors that are the classifier's on the pipeline's own estimates, and one-line refusals."""

import math

import numpy as np
import pytest
import tiny_pipelines as tp
import torch
from tolerances import F32, magnitude

import probes
from probes.denoisers.parameterisations import sigma_of_flow_t
from probes.errors import ProbesError
from probes.taxonomy import load_taxonomy

TAX = "animals-vehicles"


class LinearLogits:
    """A fixed random linear map of 4x4-pooled images to logits: any callable images -> logits."""

    def __init__(self, n_leaves, seed=0):
        self.w = torch.randn(3 * 16, n_leaves, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def __call__(self, images):
        assert images.ndim == 4 and images.shape[1] == 3
        self.calls += 1
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.w


def _pipe(case):
    return tp.family_pipe(case)


def _call(case):
    spec = tp.FAMILY_CASES[case]
    guidance = {} if spec.guidance is None else {"guidance_scale": spec.guidance}
    return dict(spec.call, **guidance)


def _scheduler_grid(scheduler):
    """The scheduler's noise levels after set_timesteps, on the toolkit's axis, from its own tables."""
    name = type(scheduler).__name__
    if name.startswith("FlowMatch"):
        grid = [sigma_of_flow_t(float(t)) for t in scheduler.sigmas[:-1]]
    elif hasattr(scheduler, "sigmas") and name != "DDPMScheduler":
        grid = [float(s) for s in scheduler.sigmas[:-1]]
    else:
        ac = scheduler.alphas_cumprod.double()
        grid = [math.sqrt((1 - ac[int(t)]) / ac[int(t)]) for t in scheduler.timesteps]
    return [s for s in grid if math.isfinite(s)]


@pytest.mark.parametrize("case", list(tp.FAMILY_CASES))
def test_probe_changes_no_pixel_and_reports_on_the_schedulers_grid(case):
    pipe = _pipe(case)
    tax = load_taxonomy(TAX)
    call = dict(_call(case), num_inference_steps=3, output_type="pt")
    torch.manual_seed(0)  # DiTPipeline does not pass its generator to DDPM's step noise
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    clf = LinearLogits(len(tax.leaves))
    torch.manual_seed(0)
    result = probes.probe(pipe, tax, classifier=clf, estimators=["plugin"], **call,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.output.images, plain)
    expect = _scheduler_grid(pipe.scheduler)
    # the scheduler's float32 tables, converted to sigmas in float64 here and there: relative 1e-6 (8
    # float32 units)
    assert np.allclose(result.sigmas().numpy(), expect, rtol=1e-6, atol=0)
    lp = result.log_posteriors()
    assert lp.shape == (len(plain), len(expect), len(tax.leaves))
    # float32 probabilities of 13 leaves sum to 1 within a few float32 units: 32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2]), rtol=0, atol=32 * F32)
    # plugin = the classifier on the pipeline's own clean estimates, decoded
    traj = result.trajectory
    scorer_input = traj.denoised[-1]
    from probes.probing import LatentClassifier

    decode = probes.families.family_of(pipe).decoder(pipe, call)
    direct = torch.log_softmax(clf(decode(scorer_input)), -1)
    # the same float32 classifier on the same decoded images: 16 units of the log-probabilities' magnitude
    assert torch.allclose(lp[:, -1], direct, rtol=0, atol=16 * F32 * magnitude(direct))
    assert isinstance(LatentClassifier, type)


def test_probe_bayes_and_rollout_on_an_ancestral_dit():
    pipe = _pipe("dit")
    tax = load_taxonomy(TAX)
    call = dict(class_labels=[207, 511], guidance_scale=4.0, num_inference_steps=3, output_type="pt")
    torch.manual_seed(0)
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    torch.manual_seed(0)
    result = probes.probe(pipe, tax, classifier=LinearLogits(len(tax.leaves)), estimators=["bayes", "rollout"],
                          **call, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.output.images, plain)
    bayes = result.log_posteriors("bayes")
    # the filter starts from the uniform prior: float32 probabilities, 8 units
    assert torch.allclose(bayes[:, 0].exp(), torch.full((2, len(tax.leaves)), 1 / len(tax.leaves)), rtol=0,
                          atol=8 * F32)
    assert torch.isfinite(bayes).all() and torch.isfinite(result.log_posteriors("rollout")).all()
    assert result.estimates["bayes"].denoiser_calls == 2 * len(tax.leaves) * (len(result.sigmas()) - 1)


def test_probe_rollout_on_stable_diffusion(tmp_path):
    pipe = _pipe("stable-diffusion")
    tax = load_taxonomy(TAX)
    from probes.estimators import build_estimator

    result = probes.probe(pipe, tax, classifier=LinearLogits(len(tax.leaves)),
                          estimators=["plugin", build_estimator("rollout", k=2)], prompt=["a cat"],
                          num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert result.log_posteriors("rollout").shape == result.log_posteriors("plugin").shape
    # k = 2 completions of the remaining steps from every grid point
    assert result.estimates["rollout"].denoiser_calls == 2 * sum(range(1, 4))
    back = probes.load(result.save(tmp_path / "sd-run"))
    assert torch.equal(back.log_posteriors("rollout"), result.log_posteriors("rollout"))
    assert back.meta["scheduler"] == "DDIMScheduler" and back.meta["family"] == "stable-diffusion"


def test_refusals_are_one_line():
    pipe = _pipe("stable-diffusion")
    tax = load_taxonomy(TAX)
    clf = LinearLogits(len(tax.leaves))
    with pytest.raises(ProbesError, match="no ancestral Gaussian kernel") as err:
        probes.probe(pipe, tax, classifier=clf, estimators=["bayes"], prompt="a cat", num_inference_steps=2)
    assert "\n" not in str(err.value)
    with pytest.raises(ProbesError, match="need a classifier"):
        probes.probe(pipe, tax, estimators=["plugin"], prompt="a cat", num_inference_steps=2)
    with pytest.raises(ProbesError, match="expected logits"):
        probes.probe(pipe, tax, classifier=LinearLogits(3), prompt="a cat", num_inference_steps=2)
    from diffusers import PNDMScheduler

    saved = pipe.scheduler
    try:
        pipe.scheduler = PNDMScheduler.from_config(saved.config)
        with pytest.raises(ProbesError, match="PNDMScheduler with skip_prk_steps=False .* is not supported"):
            probes.probe(pipe, tax, classifier=clf, prompt="a cat", num_inference_steps=2)
    finally:
        pipe.scheduler = saved
    assert "step" not in vars(pipe.scheduler)  # the wrapper never outlives the call
    with pytest.raises(ProbesError,
                       match=r"pipe: object is not a pipeline any model family serves; supported: .*Stable"):
        probes.probe(object(), tax, classifier=clf)


@pytest.mark.parametrize("case", ["flux", "pixart"])
def test_probe_t5_pipelines_with_text_prompts(case):
    """Flux and PixArt with their prompts encoded for real (a tiny T5 and tokenizer built in code):
    probing changes no pixel, and the family's denoiser encodes the conditioner's leaf prompts
    through the pipeline's own encoder (different leaves, different predictions)."""
    pipe = _pipe(case)
    tax = load_taxonomy(TAX)
    call = dict(prompt=["a photo of a cat", "a dog"], height=16, width=16, num_inference_steps=2, output_type="pt")
    if case == "pixart":
        call.update(use_resolution_binning=False, clean_caption=False)
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    result = probes.probe(pipe, tax, classifier=LinearLogits(len(tax.leaves)), estimators=["plugin"], **call,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.output.images, plain)
    family = probes.families.family_of(pipe)
    prompts = family.conditioner(pipe, tax)(tax.leaves[:2])
    assert all(isinstance(p, str) and p for p in prompts)
    x = torch.randn(1, *family.latent_shape(pipe), generator=torch.Generator().manual_seed(1)).repeat(2, *(
        [1] * len(family.latent_shape(pipe))))  # one state twice: only the prompt differs
    with torch.no_grad():
        d = family.denoiser(pipe)(x, 2.0, prompts)
    # the prompts move the output far beyond float32 rounding (32 units of its magnitude)
    assert d.shape == x.shape and torch.isfinite(d).all()
    assert not torch.allclose(d[0], d[1], rtol=0, atol=32 * F32 * magnitude(d))


# --- the seeds of a probe, for compare's pairing -------------------------------------------------


def _seeded_probe(generator, guidance=3.0, prompts=("a cat", "a dog")):
    tax = load_taxonomy(TAX)
    return probes.probe(tp.family_pipe("stable-diffusion"), tax, classifier=LinearLogits(len(tax.leaves)),
                        estimators=["plugin"], prompt=list(prompts), guidance_scale=guidance,
                        num_inference_steps=4, output_type="latent", generator=generator)


def _generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_a_probe_records_its_generators_seeds_and_compare_pairs_on_them(tmp_path):
    w1 = _seeded_probe(_generators(5, 9), guidance=1.0)
    w3 = _seeded_probe(_generators(5, 9), guidance=3.0)
    assert w3.meta["generator"] == {"seeds": [5, 9], "per_sample": True, "device": "cpu"}
    assert w3.meta["guidance_scale"] == 3.0
    # Same seeds, same sample count: paired automatically, as probes run results are; also after saving.
    same = w1.compare(w3, n_boot=20)
    assert same.pairing == "paired" and "seeds [5, 9]" in same.pairing_reason, same.pairing_reason
    saved = probes.load(w3.save(tmp_path / "w3", n_boot=0))
    assert saved.meta["generator"] == w3.meta["generator"] and w1.compare(saved, n_boot=20).pairing == "paired"
    # The same seeds drew the same initial noise: the first recorded states agree.
    assert torch.equal(w1.trajectory.states[0], w3.trajectory.states[0])
    other = w1.compare(_seeded_probe(_generators(6, 9), guidance=3.0), n_boot=20)
    assert other.pairing == "independent" and "different seeds" in other.pairing_reason


def test_one_generator_for_the_call_is_recorded_as_such():
    result = _seeded_probe(torch.Generator().manual_seed(11))
    assert result.meta["generator"] == {"seeds": [11], "per_sample": False, "device": "cpu"}
    again = _seeded_probe(torch.Generator().manual_seed(11), guidance=1.0)
    comparison = result.compare(again, n_boot=20)
    assert comparison.pairing == "paired" and "one generator, seed 11" in comparison.pairing_reason


def test_without_known_seeds_nothing_is_recorded_and_compare_stays_independent():
    used = torch.Generator().manual_seed(3)
    torch.randn(4, generator=used)  # drawn from before the call: its seed no longer fixes its draws
    cases = {"no generator": None, "a used generator": [used, torch.Generator().manual_seed(4)]}
    for what, generator in cases.items():
        a = _seeded_probe(generator)
        assert "generator" not in a.meta, what
        b = _seeded_probe(None if generator is None else _generators(3, 4))
        comparison = a.compare(b, n_boot=20)
        assert comparison.pairing == "independent" and "not recorded" in comparison.pairing_reason, what
        assert a.compare(b, n_boot=20, pairing="paired").pairing == "paired"  # still available when asked


@pytest.mark.parametrize("steps", [4, np.int64(4)])
def test_a_stride_the_steps_cannot_hold_is_refused_before_the_pipeline_runs(steps):
    pipe = _pipe("stable-diffusion")
    tax = load_taxonomy(TAX)
    calls = []
    unet_forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(1) or unet_forward(*a, **k)
    with pytest.raises(ProbesError, match="sigma_stride 4 keeps 1 of the 4 sigmas"):
        probes.probe(pipe, tax, classifier=LinearLogits(len(tax.leaves)), estimators=[probes.estimators.build_estimator(
                     "plugin", sigma_stride=4)], prompt="a cat", num_inference_steps=steps, output_type="latent")
    assert calls == []  # refused before sampling, not after it


def test_a_numpy_guidance_scale_is_recorded_as_a_float_one_is():
    # a sweep's np.float32 scale (np.linspace(..., dtype=np.float32)) is a guidance scale like 3.0
    assert _seeded_probe(None, guidance=np.float32(3.0)).meta["guidance_scale"] == 3.0
