"""The embedded digits models: data split, shipped weights and checksums, quality, training entry point."""

import json
import shutil

import pytest
import torch
from tolerances import F32, magnitude

from probes.conditioning import ClassLabelConditioner
from probes.denoisers.discrete import DiscreteScheduleDenoiser
from probes.errors import ProbesError, UnsupportedCondition
from probes.models import train_digits as train_module
from probes.models.digits import (
    CLASSIFIER_FILES,
    DEFAULT_DIR,
    UNET_FILES,
    DigitClassifier,
    digits_conditioner,
    load_digits_classifier,
    load_digits_denoiser,
    load_digits_split,
    read_checksums,
    sample_digits,
    sha256_file,
    verify_checksums,
)

# Measured on the shipped weights (data/digits/metrics.json) minus a margin.
MAX_X0_MSE_SIGMA_005 = 0.005      # measured 0.0013 (conditional), 0.0012 (unconditional)
MIN_CLASSIFIER_ACCURACY = 0.96     # measured 0.986 (355 of 360)
MIN_SAMPLE_ACCURACY = 0.90         # measured 0.99 / 1.00 / 0.99 (seeds 0-2; 10 per digit, 30 steps, guidance 1)


class Tax:
    """The two members of a taxonomy the digits adapters read."""

    def __init__(self, leaves, attrs=None):
        self.leaves = list(leaves)
        self.attrs = attrs or {}

    def node_attrs(self, n):
        return self.attrs.get(n, {})


@pytest.fixture(scope="module")
def denoiser():
    return load_digits_denoiser()


@pytest.fixture(scope="module")
def classifier():
    return load_digits_classifier()


@pytest.fixture(scope="module")
def test_split():
    return load_digits_split("test")


def test_split_is_deterministic_stratified_and_scaled():
    x, y = load_digits_split("train")
    xt, yt = load_digits_split("test")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() == -1 and x.max() == 1
    assert torch.bincount(yt).min() >= 35  # about 36 per digit in the test split
    x2, y2 = load_digits_split("train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    train_rows = {tuple(r.tolist()) for r in x.flatten(1)}
    assert sum(tuple(r.tolist()) in train_rows for r in xt.flatten(1)) < 5  # disjoint up to duplicate images
    with pytest.raises(ProbesError, match="split"):
        load_digits_split("val")


def test_shipped_files_match_checksums():
    sums = read_checksums(DEFAULT_DIR)
    assert set(UNET_FILES) | set(CLASSIFIER_FILES) <= set(sums)
    for name, digest in sums.items():
        assert sha256_file(DEFAULT_DIR / name) == digest, name
    verify_checksums(DEFAULT_DIR, UNET_FILES + CLASSIFIER_FILES)
    assert (DEFAULT_DIR / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < 6_000_000


def test_shipped_weights_load_as_plain_diffusers_models():
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(DEFAULT_DIR / "unet")
    scheduler = DDPMScheduler.from_pretrained(DEFAULT_DIR / "scheduler")
    assert unet.config.num_class_embeds == 11 and unet.config.sample_size == 8
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.prediction_type == "epsilon"


@pytest.fixture()
def model_copy(tmp_path):
    target = tmp_path / "digits"
    shutil.copytree(DEFAULT_DIR, target)
    return target


def _one_line_error(fn, *args, match):
    with pytest.raises(ProbesError, match=match) as err:
        fn(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.safetensors", "classifier/model.safetensors"])
def test_corrupted_or_missing_weights_give_one_line_errors(model_copy, name):
    load = load_digits_denoiser if name.startswith("unet") else load_digits_classifier
    args = (model_copy,) if name.startswith("unet") else (None, model_copy)
    path = model_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert name in _one_line_error(load, *args, match="does not match")
    path.unlink()
    assert name in _one_line_error(load, *args, match="missing")


def test_missing_checksum_file_or_directory(model_copy, tmp_path):
    (model_copy / "SHA256SUMS").unlink()
    _one_line_error(load_digits_denoiser, model_copy, match="SHA256SUMS.*missing")
    _one_line_error(load_digits_denoiser, tmp_path / "nowhere", match="not found")


def test_denoiser_interface_and_small_sigma_reconstruction(denoiser, test_split):
    x, y = test_split
    assert isinstance(denoiser, DiscreteScheduleDenoiser)
    assert 0.005 < denoiser.sigma_min < 0.02 and 100 < denoiser.sigma_max < 200
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = denoiser(noisy, 0.05, y)
        uncond = denoiser(noisy, 0.05, None)
        minus_one = denoiser(noisy, torch.full((len(y),), 0.05), torch.full_like(y, -1))
    assert cond.shape == x.shape
    assert torch.nn.functional.mse_loss(cond, x) < MAX_X0_MSE_SIGMA_005
    assert torch.nn.functional.mse_loss(uncond, x) < MAX_X0_MSE_SIGMA_005
    # the same float32 network on the same inputs: 32 float32 units of the output's magnitude
    assert torch.allclose(uncond, minus_one, rtol=0, atol=32 * F32 * magnitude(uncond))
    assert not any(p.requires_grad for p in denoiser.parameters())
    with pytest.raises(ValueError):
        denoiser(noisy[:4], 0.05, torch.tensor([0, 1]))


def test_classifier_held_out_accuracy(classifier, test_split):
    x, y = test_split
    with torch.no_grad():
        log_probs = classifier(x)
    assert log_probs.shape == (len(y), 10)
    # a float32 log-softmax subtracts each row's max first: its rounding is a few float32 units of
    # order-one numbers (measured 2), so 32 units
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(len(y)), rtol=0, atol=32 * F32)
    assert (log_probs.argmax(-1) == y).float().mean() > MIN_CLASSIFIER_ACCURACY
    with torch.no_grad():  # resized and colour inputs are accepted
        big = classifier(torch.nn.functional.interpolate(x[:8], size=32, mode="nearest").expand(-1, 3, -1, -1))
    assert big.shape == (8, 10)


def test_classifier_maps_taxonomy_leaves():
    tax = Tax(["seven", "1", "0"], {"seven": {"index": 7}})
    clf = load_digits_classifier(tax, temperature=2.0)
    assert isinstance(clf, DigitClassifier) and clf.leaves == ["seven", "1", "0"] and clf.temperature == 2.0
    x, y = load_digits_split("test")
    keep = (y == 7) | (y == 1) | (y == 0)
    with torch.no_grad():
        pred = clf(x[keep]).argmax(-1)
    expected = torch.tensor([{7: 0, 1: 1, 0: 2}[int(d)] for d in y[keep]])
    assert (pred == expected).float().mean() > 0.97
    with pytest.raises(ProbesError, match="does not cover 1 taxonomy leaves: cat"):
        load_digits_classifier(Tax(["0", "cat"]))
    with pytest.raises(ProbesError, match="does not cover"):
        load_digits_classifier(Tax(["0", "12"]))


def test_conditioner_maps_leaves_to_class_ids():
    cond = digits_conditioner(Tax(["0", "1", "nine"], {"nine": {"index": 9}}))
    assert isinstance(cond, ClassLabelConditioner)
    assert cond(["nine", "0", "1"]).tolist() == [9, 0, 1]
    assert cond(["1"]).dtype == torch.long
    with pytest.raises(UnsupportedCondition):
        cond(["round"])  # an internal node
    assert not cond.supports("round")
    with pytest.raises(ProbesError, match="'cat'"):
        digits_conditioner(Tax(["0", "cat"]))
    with pytest.raises(ProbesError, match="'x'"):
        digits_conditioner(Tax(["x"], {"x": {"index": 11}}))


def test_class_conditional_samples_show_their_digit(denoiser, classifier):
    labels = torch.arange(10).repeat_interleave(10)
    x = sample_digits(denoiser, labels, steps=30, generator=torch.Generator().manual_seed(0))
    assert x.shape == (100, 1, 8, 8) and x.abs().max() < 2
    with torch.no_grad():
        acc = (classifier(x).argmax(-1) == labels).float().mean()
    assert acc > MIN_SAMPLE_ACCURACY
    again = sample_digits(denoiser, labels[:5], steps=30, generator=torch.Generator().manual_seed(0))
    # deterministic given the generator, up to batch-size rounding of float32 kernels through 30 steps:
    # 1e-4 of the samples' magnitude (measured 4e-7)
    assert torch.allclose(again, x[:5], rtol=0, atol=1e-4 * magnitude(x[:5]))


def test_shipped_metrics_record_quality():
    m = json.loads((DEFAULT_DIR / "metrics.json").read_text())
    assert m["classifier"]["test_accuracy"] > MIN_CLASSIFIER_ACCURACY
    assert m["samples"]["guidance_1"]["accuracy"] > 0.89
    readme = (DEFAULT_DIR / "README.md").read_text()
    assert f"{m['classifier']['test_accuracy']:.3f}" in readme
    assert (DEFAULT_DIR / "SHA256SUMS").read_text().strip() in readme


def test_train_digits_tiny_run_is_reproducible(tmp_path):
    from probes.models.train_digits import train_digits

    kwargs = dict(seed=3, diffusion_steps=3, classifier_epochs=1, progress=False, eval_per_digit=1, eval_steps=3)
    m = train_digits(tmp_path / "a", **kwargs)
    assert {"classifier", "diffusion", "samples", "denoiser_x0_mse_test"} <= set(m)
    assert len(m["samples"]["unconditional"]["histogram"]) == 10
    for f in ("SHA256SUMS", "metrics.json", "README.md"):
        assert (tmp_path / "a" / f).is_file()
    verify_checksums(tmp_path / "a", UNET_FILES + CLASSIFIER_FILES + ("metrics.json",))
    load_digits_denoiser(tmp_path / "a")
    train_digits(tmp_path / "b", **kwargs)
    for f in ("unet/diffusion_pytorch_model.safetensors", "classifier/model.safetensors"):
        assert sha256_file(tmp_path / "a" / f) == sha256_file(tmp_path / "b" / f)


def test_train_command_is_registered_by_the_digits_family():
    from probes.cli import build_parser

    args = build_parser().parse_args(["train", "digits", "--out", "somewhere", "--seed", "2", "--steps", "10"])
    assert args.out == "somewhere" and args.seed == 2 and args.steps == 10 and callable(args.func)
    assert args.func is train_module._train_digits_command
