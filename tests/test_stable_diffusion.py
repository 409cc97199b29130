"""Stable Diffusion on the sigma axis: the tiny offline pipeline, x0 against diffusers' schedulers,
prompts and guidance, latent decoding, and loading from disk."""

import math
import time

import networkx as nx
import pytest
import torch
from tolerances import F32, magnitude

from probes.classifiers.base import Classifier
from probes.denoisers import GuidedDenoiser
from probes.errors import ProbesError
from probes.models.stable_diffusion import (
    DecodedClassifier,
    LatentDecoder,
    StableDiffusionDenoiser,
    load_pipeline,
    node_prompts,
    prompt_conditioner,
)
from probes.models.tiny_sd import build_clip_tokenizer, build_tiny_pipeline, save_tiny_pipeline


@pytest.fixture(scope="module")
def pipes():
    return {pt: build_tiny_pipeline(seed=0, prediction_type=pt) for pt in ("epsilon", "v_prediction")}


def _sigma(scheduler, t):
    ac = scheduler.alphas_cumprod[int(t)]
    return float(((1 - ac) / ac).sqrt())


def test_tiny_pipeline_is_deterministic_and_sd_shaped(pipes):
    pipe = pipes["epsilon"]
    again = build_tiny_pipeline(seed=0)
    other = build_tiny_pipeline(seed=1)
    for a, b, _c in zip(pipe.unet.parameters(), again.unet.parameters(), other.unet.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(pipe.unet.parameters(), other.unet.parameters()))
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 16
    cfg = pipe.scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps) == (
        "scaled_linear", 0.00085, 0.012, 1000)


def test_tokenizer_matches_open_clip():
    import open_clip

    ids = build_clip_tokenizer()("a photo of a tabby cat.").input_ids
    ref = open_clip.get_tokenizer("ViT-B-32")(["a photo of a tabby cat."])[0]
    assert ids == ref[: len(ids)].tolist()
    assert ids[0] == 49406 and ids[-1] == 49407


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler_cls", ["DDIMScheduler", "DDPMScheduler"])
def test_x0_matches_scheduler_pred_original_sample(pipes, prediction_type, scheduler_cls):
    import diffusers

    pipe = pipes[prediction_type]
    denoiser = StableDiffusionDenoiser(pipe)
    assert denoiser.prediction_type == prediction_type
    scheduler = getattr(diffusers, scheduler_cls).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 16, 16, generator=gen)
    prompts = ["a photo of a cat", None]
    for t in scheduler.timesteps[[0, 5, 9]]:
        sigma = _sigma(scheduler, t)
        x = x0 + sigma * torch.randn(x0.shape, generator=gen)
        x_vp = x / (1 + sigma**2) ** 0.5  # the scheduler's own latent scale
        with torch.no_grad():
            out = pipe.unet(x_vp, t, encoder_hidden_states=denoiser.encode(prompts)).sample
            ref = scheduler.step(out, t, x_vp).pred_original_sample
            ours = denoiser(x, sigma, prompts)
        # the scheduler computes x0 in float32 through intermediates up to 1 / sqrt(abar) times larger
        # than x0: 1e-4 of the magnitude compared (~840 float32 units; measured 7)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * magnitude(ref))


def test_prompt_embeddings_are_cached(pipes):
    denoiser = StableDiffusionDenoiser(pipes["epsilon"])
    x = torch.randn(4, 4, 16, 16)
    with torch.no_grad():
        denoiser(x, 3.0, ["a cat", "a dog", "a cat", None])
        assert denoiser.encoder_calls == 1
        denoiser(x, 1.0, ["a dog", None, "a cat", "a cat"])
        assert denoiser.encoder_calls == 1
        denoiser(x, 1.0, "a cow")  # one prompt for the whole batch
        assert denoiser.encoder_calls == 2
    with pytest.raises(ValueError):
        denoiser(x, 1.0, ["a cat"])


def test_negative_prompt_replaces_the_unconditional_branch(pipes):
    pipe = pipes["epsilon"]
    plain = StableDiffusionDenoiser(pipe)
    negative = StableDiffusionDenoiser(pipe, negative_prompt="blurry")
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        # the same float32 UNet on the same inputs: 32 float32 units of the output's magnitude
        ref = plain(x, 2.0, ["blurry", "blurry"])
        torch.testing.assert_close(negative(x, 2.0, None), ref, rtol=0, atol=32 * F32 * magnitude(ref))
        ref = plain(x, 2.0, ["blurry", "a cat"])
        torch.testing.assert_close(negative(x, 2.0, [None, "a cat"]), ref, rtol=0, atol=32 * F32 * magnitude(ref))
        ref = plain(x, 2.0, ["", ""])
        torch.testing.assert_close(plain(x, 2.0, None), ref, rtol=0, atol=32 * F32 * magnitude(ref))


def test_guidance_batches_prompt_lists(pipes):
    denoiser = StableDiffusionDenoiser(pipes["v_prediction"], negative_prompt="ugly")
    guided = GuidedDenoiser(denoiser, scale=4.0)
    x = torch.randn(3, 4, 16, 16)
    cond = ["a cat", "a dog", None]
    with torch.no_grad():
        out = guided(x, torch.tensor([5.0, 1.0, 0.3]), cond)
        u = denoiser(x, torch.tensor([5.0, 1.0, 0.3]), None)
        c = denoiser(x, torch.tensor([5.0, 1.0, 0.3]), cond)
    # guidance 4 multiplies the float32 rounding of u and c (one batch there, two here) by up to 5:
    # 1e-4 of their magnitude (~840 float32 units; measured 14)
    torch.testing.assert_close(out, u + 4.0 * (c - u), rtol=1e-4, atol=1e-4 * magnitude(u, c))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_guided_ddim_loop_reproduces_the_pipeline(pipes, prediction_type):
    """Deterministic DDIM on the sigma axis over our guided denoiser == the pipeline's own call."""
    pipe = pipes[prediction_type]
    steps, scale = 6, 3.0
    prompts, negative = ["a cat", "a red car"], "blurry"
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = pipe(prompts, negative_prompt=[negative] * 2, num_inference_steps=steps, guidance_scale=scale,
                   latents=latents.clone(), output_type="latent").images
    pipe.scheduler.set_timesteps(steps)
    sigmas = [_sigma(pipe.scheduler, t) for t in pipe.scheduler.timesteps]
    final = _sigma(pipe.scheduler, 0)  # set_alpha_to_one=False ends at abar_0
    denoiser = GuidedDenoiser(StableDiffusionDenoiser(pipe, negative_prompt=negative), scale)
    x = latents * (1 + sigmas[0] ** 2) ** 0.5
    with torch.no_grad():
        for s, s_next in zip(sigmas, sigmas[1:] + [final]):
            d = denoiser(x, s, prompts)
            x = d + (s_next / s) * (x - d)
    # six float32 steps on two axes (sigma here, VP there: states up to sqrt(1 + sigma^2) ~ 15 times the
    # latents), guidance 3 on top: 1e-3 of the magnitude compared (measured 7e-7 of it)
    torch.testing.assert_close(x / (1 + final**2) ** 0.5, ref, rtol=1e-3, atol=1e-3 * magnitude(ref))


def test_init_noise(pipes):
    denoiser = StableDiffusionDenoiser(pipes["epsilon"])
    a = denoiser.init_noise(3, torch.Generator().manual_seed(1))
    b = denoiser.init_noise(3, torch.Generator().manual_seed(1))
    assert a.shape == (3, 4, 16, 16) and torch.equal(a, b)
    # 14.6146 is quoted to 6 significant digits (half a unit: 3.4e-6 of it): relative 1e-5
    assert 10 < a.std().item() < 20 and denoiser.sigma_max == pytest.approx(14.6146, rel=1e-5)
    assert denoiser.init_noise(1, height=256, width=64).shape == (1, 4, 32, 8)


class _MeanColour(Classifier):
    """Leaves 'dark'/'bright' from the mean pixel value."""

    def __init__(self):
        super().__init__(["dark", "bright"])
        self.seen = []

    def logits(self, x):
        self.seen.append(tuple(x.shape))
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1) * 10


def test_latent_decoder_and_decoded_classifier(pipes):
    vae = pipes["epsilon"].vae
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        full = LatentDecoder(vae)(z)
        small = LatentDecoder(vae, decode_size=8)(z)
        assert full.shape == (2, 3, 128, 128) and small.shape == (2, 3, 64, 64)
        assert full.min() >= -1 and full.max() <= 1
        # the latent scale is undone before decoding
        direct = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
        torch.testing.assert_close(full, direct, rtol=0, atol=32 * F32)  # one float32 VAE, images in [-1, 1]
        inner = _MeanColour()
        clf = DecodedClassifier(LatentDecoder(vae, decode_size=8), inner)
        lp = clf(z)
    assert lp.shape == (2, 2) and clf.leaves == ["dark", "bright"]
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2), rtol=0, atol=32 * F32)  # float32 probabilities
    assert inner.seen == [(2, 3, 64, 64)]
    clf.temperature = 2.0
    assert inner.temperature == 2.0 and clf.temperature == 2.0


def test_load_pipeline_from_disk(tmp_path, pipes):
    path = save_tiny_pipeline(tmp_path / "tiny-sd", seed=0)
    pipe = load_pipeline(str(path))
    assert pipe.safety_checker is None
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        a = StableDiffusionDenoiser(pipe)(x, 2.0, ["a cat"])
        b = StableDiffusionDenoiser(pipes["epsilon"])(x, 2.0, ["a cat"])
    torch.testing.assert_close(a, b, rtol=0, atol=32 * F32 * magnitude(b))  # the same float32 weights and inputs
    half = load_pipeline(str(path), dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16


def test_missing_models_fail_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ProbesError) as err:
        load_pipeline(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ProbesError) as err:
        load_pipeline("someone/not-downloaded-sd")
    assert "someone/not-downloaded-sd" in str(err.value) and "`hf download someone/not-downloaded-sd`" in str(err.value)
    assert "huggingface-cli" not in str(err.value)  # gone from current huggingface_hub releases
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbesError, match="model_index.json"):
        load_pipeline(str(tmp_path / "empty"))
    with pytest.raises(ProbesError, match="dtype"):
        load_pipeline(str(tmp_path / "empty"), dtype="float8")
    assert time.monotonic() - start < 5


def test_prompt_conditioner_from_taxonomy():
    from probes.taxonomy import Taxonomy

    g = nx.DiGraph()
    g.add_node("animal", label="animal")
    g.add_node("cat", prompts=["a cute cat"])
    g.add_node("golden_retriever")
    g.add_node("dog.n.01", aliases=["doggo"])
    g.add_edges_from([("animal", "cat"), ("animal", "dogs"), ("dogs", "golden_retriever"), ("dogs", "dog.n.01")])
    tax = Taxonomy(g, name="t")
    prompts = node_prompts(tax)
    assert prompts["cat"] == "a cute cat"
    assert prompts["golden_retriever"] == "a photo of a golden retriever."
    assert prompts["dog.n.01"] == "a photo of a doggo."
    cond = prompt_conditioner(tax, template="{}", overrides={"animal": "an animal"})
    assert cond(["animal", "dogs", "cat"]) == ["an animal", "dogs", "a cute cat"]


def test_a_zero_terminal_snr_scheduler_ends_at_the_largest_finite_sigma():
    from diffusers import DDIMScheduler

    from probes.models.tiny_sd import build_tiny_pipeline
    from probes.noise import make_grid
    from probes.sampling import sample

    pipe = build_tiny_pipeline(seed=0)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                               prediction_type="v_prediction")
    abar = pipe.scheduler.alphas_cumprod.double()
    assert abar[-1] == 0  # sigma_T = inf
    denoiser = StableDiffusionDenoiser(pipe)
    expected = float(((1 - abar[-2]) / abar[-2]).sqrt())  # the last finite sigma
    # the same float32 alphas, in float64 here and at most in float32 there: relative 8 float32 units
    assert math.isfinite(denoiser.sigma_max) and denoiser.sigma_max == pytest.approx(expected, rel=8 * F32)
    sigmas = make_grid("karras", denoiser.sigma_max, denoiser.sigma_min, 4)
    g = torch.Generator().manual_seed(0)
    traj = sample(denoiser, denoiser.init_noise(2, g), sigmas, method="ancestral", generator=g)
    assert torch.isfinite(traj.states).all() and torch.isfinite(traj.x0).all()


def test_an_sdxl_folder_is_refused_at_load_in_one_line(tmp_path):
    import json

    path = save_tiny_pipeline(tmp_path / "xl", seed=0)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    index["_class_name"] = "StableDiffusionXLPipeline"
    (path / "model_index.json").write_text(json.dumps(index))
    start = time.monotonic()
    with pytest.raises(ProbesError) as err:
        load_pipeline(str(path))
    message = str(err.value)
    assert "StableDiffusionXLPipeline" in message and str(path) in message and "\n" not in message
    assert time.monotonic() - start < 5


def test_loading_keeps_the_libraries_bars_quiet_and_restores_them(tmp_path, capfd):
    from diffusers.utils import logging as diffusers_logging

    path = save_tiny_pipeline(tmp_path / "tiny-sd", seed=0)
    capfd.readouterr()
    load_pipeline(str(path))
    err = capfd.readouterr().err
    assert "Loading pipeline components" not in err and "Loading weights" not in err and "it/s]" not in err
    assert diffusers_logging.is_progress_bar_enabled()  # the user's own settings come back
