"""EDM2 pickles: loading, the denoiser, conditioning, latent decoding and a full run (tiny stand-ins)."""

import json
import pickle
import sys
import types
from pathlib import Path

import networkx as nx
import pytest
import torch
import yaml
from edm2_tiny import StandardRGBEncoder, TinyLatentEncoder, TinyPrecond, write_pickle
from tolerances import F32, magnitude

import probes.runner as runner
from probes.classifiers.imagenet import imagenet_wnids
from probes.denoisers import GuidedDenoiser
from probes.errors import ProbesError, UnsupportedCondition
from probes.models.edm2 import (
    EDM2Denoiser,
    EDM2LatentDecoder,
    edm2_conditioner,
    is_pixel_space,
    latent_normalisation,
    load_edm2,
)
from probes.recipe import load_recipe
from probes.resources import find_shipped
from probes.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pickles(tmp_path):
    cond = write_pickle(tmp_path / "edm2-tiny.pkl", TinyPrecond(seed=0), StandardRGBEncoder())
    uncond = write_pickle(tmp_path / "edm2-tiny-uncond.pkl", TinyPrecond(label_dim=0, seed=1), StandardRGBEncoder())
    return cond, uncond


def test_load_round_trip(pickles):
    net, encoder = load_edm2(pickles[0])
    assert isinstance(net, TinyPrecond) and isinstance(encoder, StandardRGBEncoder)
    assert (net.img_resolution, net.img_channels, net.label_dim) == (8, 3, 1000)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert is_pixel_space(net, encoder)
    assert not is_pixel_space(TinyPrecond(img_channels=4), TinyLatentEncoder())


def test_denoiser_matches_the_network_with_one_hot_labels(pickles):
    net, _ = load_edm2(pickles[0])
    d = EDM2Denoiser(net)
    assert (d.sigma_min, d.sigma_max) == (0.002, 80.0) and d.shape == (3, 8, 8)
    x = torch.randn(3, 3, 8, 8) * 2
    sigma = torch.tensor([0.5, 2.0, 10.0])
    ids = torch.tensor([7, 0, 999])
    labels = torch.zeros(3, 1000)
    labels[0, 7] = labels[1, 0] = labels[2, 999] = 1
    assert torch.equal(d.one_hot(ids), labels)
    # One float32 network on the same numbers: 32 float32 units of the output's magnitude, room for a
    # CPU whose kernels round differently (here they agree bit for bit).
    ref = net(x, sigma, labels)
    torch.testing.assert_close(d(x, sigma, ids), ref, rtol=0, atol=32 * F32 * magnitude(ref))
    ref = net(x, torch.full((3,), 2.0), labels)
    torch.testing.assert_close(d(x, 2.0, ids), ref, rtol=0, atol=32 * F32 * magnitude(ref))  # scalar sigma
    assert d(x.double(), sigma, ids).dtype == torch.float64
    other = d(x, sigma, torch.tensor([8, 0, 999]))  # another label changes the output far beyond rounding
    assert not torch.allclose(d(x, sigma, ids), other, rtol=0, atol=32 * F32 * magnitude(other))


def test_unconditional_calls_need_the_unconditional_network(pickles):
    net, _ = load_edm2(pickles[0])
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ProbesError) as err:
        EDM2Denoiser(net)(x, 1.0, None)
    assert "\n" not in str(err.value) and "class-conditional" in str(err.value) and "uncond_path" in str(err.value)
    with pytest.raises(ProbesError):
        EDM2Denoiser(net)(x, 1.0, torch.tensor([3, -1]))


def test_unconditional_network_answers_unconditional_rows(pickles):
    net, _ = load_edm2(pickles[0])
    uncond, _ = load_edm2(pickles[1])
    d = EDM2Denoiser(net, uncond)
    x, sigma = torch.randn(4, 3, 8, 8), torch.tensor([0.3, 1.0, 3.0, 30.0])
    # The same float32 networks on the same rows, batched otherwise: 32 float32 units of the
    # outputs' magnitude (kernels may round differently with the batch size or CPU)
    tol = 32 * F32 * magnitude(uncond(x, sigma), net(x, sigma, d.one_hot(torch.tensor([5, 6, 7, 8]))))
    torch.testing.assert_close(d(x, sigma, None), uncond(x, sigma), rtol=0, atol=tol)
    mixed = d(x, sigma, torch.tensor([5, -1, 6, -1]))
    torch.testing.assert_close(mixed[[1, 3]], uncond(x[[1, 3]], sigma[[1, 3]]), rtol=0, atol=tol)
    torch.testing.assert_close(mixed[[0, 2]], net(x[[0, 2]], sigma[[0, 2]], d.one_hot(torch.tensor([5, 6]))),
                               rtol=0, atol=tol)
    # Classifier-free guidance as EDM2 does it: ref.lerp(D, w) with the unconditional reference
    # (lerp weights the inputs by up to w = 1.7, hence the tolerance times w).
    w = 1.7
    ids = torch.tensor([5, 6, 7, 8])
    guided = GuidedDenoiser(d, w)(x, sigma, ids)
    torch.testing.assert_close(guided, uncond(x, sigma).lerp(d(x, sigma, ids), w), rtol=0, atol=w * tol)
    with pytest.raises(ProbesError, match="autoguidance"):
        EDM2Denoiser(net, net)


def test_missing_nvlabs_module_is_one_line(tmp_path):
    package = types.ModuleType("training")
    module = types.ModuleType("training.networks_edm2")
    cls = type("Precond", (), {"__module__": "training.networks_edm2"})
    module.Precond = cls
    package.networks_edm2 = module
    sys.modules["training"], sys.modules["training.networks_edm2"] = package, module
    try:
        blob = pickle.dumps({"ema": cls()})
    finally:
        del sys.modules["training"], sys.modules["training.networks_edm2"]
    path = tmp_path / "edm2-img512-xs.pkl"
    path.write_bytes(blob)
    with pytest.raises(ProbesError) as err:
        load_edm2(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'training'" in message and "PYTHONPATH" in message


def test_missing_file_and_urls(tmp_path):
    with pytest.raises(ProbesError, match="nope.pkl: no such EDM2 network pickle"):
        load_edm2(tmp_path / "nope.pkl")
    with pytest.raises(ProbesError, match="download it first"):
        load_edm2("https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-xs-2147483-0.135.pkl")
    write_pickle(tmp_path / "other.pkl", TinyPrecond(), key="net")
    with pytest.raises(ProbesError, match="no network 'ema'"):
        load_edm2(tmp_path / "other.pkl")


def test_conditioner_maps_wnids_and_indices():
    g = nx.DiGraph()
    g.add_node("tabby", wnid="n02123045")
    g.add_node("missile", index=657)
    g.add_node("goldfish", wnid="n01443537")
    g.add_edges_from([("root", "tabby"), ("root", "things"), ("things", "missile"), ("things", "goldfish")])
    tax = Taxonomy(g, name="t")
    cond = edm2_conditioner(tax)
    assert cond(["tabby", "missile", "goldfish"]).tolist() == [281, 657, imagenet_wnids().index("n01443537")]
    with pytest.raises(UnsupportedCondition):
        cond(["things"])
    with pytest.raises(ProbesError, match="index"):
        edm2_conditioner(tax, label_dim=10)


def test_latent_decoding_with_the_encoder_and_with_a_vae():
    z = torch.randn(2, 4, 8, 8)
    encoder = TinyLatentEncoder()
    images = EDM2LatentDecoder(encoder)(z)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    # the same float32 arithmetic on images in [-1, 1]: 32 float32 units
    torch.testing.assert_close(images, encoder.decode(z).float() / 127.5 - 1, rtol=0, atol=32 * F32)
    assert EDM2LatentDecoder(encoder, decode_size=4)(z).shape == (2, 3, 8, 8)

    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(8, 8), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    decoder = EDM2LatentDecoder.from_vae(vae)
    scale, bias = latent_normalisation()
    # EDM2's StabilityVAEEncoder constants: scale = 0.5 / raw_std, bias = -raw_mean * scale: the
    # same float32 operations, or float64 ones rounded once; relative 4 float32 units
    torch.testing.assert_close(torch.from_numpy(scale), 0.5 / torch.tensor([4.17, 4.62, 3.71, 3.28]),
                               rtol=4 * F32, atol=0)
    torch.testing.assert_close(torch.from_numpy(bias), -torch.tensor([5.81, 3.25, 0.12, -2.15]) * 0.5
                               / torch.tensor([4.17, 4.62, 3.71, 3.28]), rtol=4 * F32, atol=0)
    with torch.no_grad():
        raw = (z - torch.from_numpy(bias).view(1, 4, 1, 1)) / torch.from_numpy(scale).view(1, 4, 1, 1)
        expected = vae.decode(raw).sample.clamp(0, 1) * 2 - 1
        # the same float32 VAE on the same latents, images clamped to [-1, 1]: 32 float32 units
        torch.testing.assert_close(decoder(z), expected, rtol=0, atol=32 * F32)


def _recipe(tmp_path, pickles, **model):
    data = {
        "name": "edm2-tiny",
        "seed": 0,
        "device": "cpu",
        "taxonomy": str(ROOT / "taxonomies" / "animals-vehicles.yaml"),
        "model": {"kind": "edm2", "path": str(pickles[0]), **model},
        "classifier": {"kind": "imagenet", "source": "timm", "name": "test_efficientnet", "pretrained": False},
        "sampling": {"samples": 8, "batch_size": 8, "steps": 8, "grid": "karras", "method": "ancestral",
                     "condition": "leaf"},
        "estimators": ["plugin", "bayes"],
        "analysis": {"n_boot": 20},
    }
    path = tmp_path / "edm2-tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_end_to_end_on_a_tiny_pickle(tmp_path, pickles):
    recipe = _recipe(tmp_path, pickles, uncond_path=str(pickles[1]))
    runner.run(recipe, tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["status"] == "complete" and set(state["estimators"]) == {"plugin", "bayes"}
    for name in ["run.json", "curves.csv", "decisions.csv", "tree.json", "tree.graphml", "tree.nwk", "curves.png",
                 "tree.png", "rates.png"]:
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    payload = json.loads((tmp_path / "run" / "run.json").read_text())
    assert payload["recipe"]["model"]["kind"] == "edm2"
    # the grid's float64 end points, in round-trip form: relative 1e-12
    assert payload["sigmas"][0] == pytest.approx(80.0, rel=1e-12)
    assert payload["sigmas"][-1] == pytest.approx(0.002, rel=1e-12)
    assert state["estimators"]["bayes"]["denoiser_calls"] == 8 * 13 * 7  # per sample, leaf and step


def test_plugin_without_an_unconditional_network_is_refused_before_sampling(tmp_path, pickles, capsys):
    from probes.cli import main

    recipe = _recipe(tmp_path, pickles)
    assert main(["run", str(recipe), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.uncond_path" in err and "'plugin'" in err
    assert not (tmp_path / "o" / "batches").exists() or not any((tmp_path / "o" / "batches").iterdir())


def test_bayes_alone_needs_no_unconditional_network(tmp_path, pickles):
    recipe = _recipe(tmp_path, pickles)
    data = yaml.safe_load(recipe.read_text())
    data["estimators"] = ["bayes"]
    del data["classifier"]
    recipe.write_text(yaml.safe_dump(data))
    assert runner.run(recipe, tmp_path / "run", progress=False).record["status"] == "complete"


def test_latent_pickle_decodes_through_a_local_vae(tmp_path):
    from diffusers import AutoencoderKL

    from probes.build import build
    from probes.families import BuildSpec
    from probes.models.stable_diffusion import DecodedClassifier
    from probes.plan import resolve

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 8),
                  norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(tmp_path / "vae")
    encoder = TinyLatentEncoder()
    pkl = write_pickle(tmp_path / "latent.pkl", TinyPrecond(img_channels=4), encoder)
    recipe = _recipe(tmp_path, (pkl,), vae="vae")
    data = yaml.safe_load(recipe.read_text())
    data["estimators"] = ["bayes"]
    recipe.write_text(yaml.safe_dump(data))
    parts = build(resolve(load_recipe(recipe)))
    assert parts.shape == (4, 8, 8) and isinstance(parts.classifier.inner, DecodedClassifier)
    # the encoder's constants, at most rounded once to float32
    torch.testing.assert_close(parts.classifier.decoder.scale.flatten(), torch.from_numpy(encoder.scale),
                               rtol=F32, atol=0)
    lp = parts.classifier(torch.randn(2, 4, 8, 8))
    # 13 leaves of ImageNet's 1000 classes: the rest of the classifier's mass is outside the taxonomy
    assert lp.shape == (2, 13) and (lp.exp().sum(-1) < 1).all()
    # leaf-conditional samples come from the taxonomy: the run filters no outside cell, though the
    # model's world (its 1000 classes) is larger than the taxonomy
    assert parts.partial_taxonomy and parts.outside_mass == 0.0
    plan = resolve(load_recipe(recipe))
    model = plan.family.build(BuildSpec(model=plan.model, classifier=plan.classifier, taxonomy=plan.taxonomy,
                                        device=plan.device))
    assert model.outside_mass == pytest.approx(1 - 13 / 1000, rel=1e-12)  # float64 arithmetic
    # Without model.vae the pickle's encoder decodes (and is initialised when the run is built).
    data["model"].pop("vae")
    recipe.write_text(yaml.safe_dump(data))
    parts = build(resolve(load_recipe(recipe)))
    assert parts.classifier.decoder.encoder is not None and parts.classifier.decoder.encoder.init_calls == 1


def test_shipped_recipe_validates():
    r = load_recipe(ROOT / "recipes" / "edm2-xs.yaml")
    assert r.model.kind == "edm2" and r.sampling.condition == "leaf"
    # Shipped recipes name shipped taxonomies, so a copy of the recipe anywhere still finds it.
    assert find_shipped("taxonomies", r.resolve_path(r.taxonomy)) is not None
    assert {e.name for e in r.estimators} == {"plugin", "bayes"}
