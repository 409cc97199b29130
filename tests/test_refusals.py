"""What would be wrong is refused, or said, in one line: a pipeline and a scheduler of different
noise laws, probes called paired when their step noise is not shared, a classifier that returns
NaN (stopped at the first batch, naming the leaf and sigma)."""

import json
from pathlib import Path

import pytest
import tiny_pipelines as tp
import torch
import yaml

import probes
from probes.errors import ProbesError

ROOT = Path(__file__).resolve().parents[1]
TAX = probes.load_taxonomy("animals-vehicles")


def logits(images):
    return images.mean((1, 2, 3))[:, None] * torch.arange(len(TAX.leaves), dtype=torch.float32)


@pytest.mark.parametrize("family, scheduler", [("sd3", "DDIMScheduler"), ("stable-diffusion",
                                                                          "FlowMatchEulerDiscreteScheduler")])
def test_a_pipeline_and_a_scheduler_of_different_noise_laws_are_refused_naming_both(family, scheduler):
    import diffusers

    pipe = tp.FAMILY_CASES[family].build()
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    call = dict(tp.FAMILY_CASES[family].call, num_inference_steps=3)
    with pytest.raises(ProbesError) as info:
        probes.probe(pipe, TAX, classifier=logits, **call)
    message = str(info.value)
    assert type(pipe).__name__ in message and scheduler in message and "\n" not in message


def test_dit_probes_are_not_called_paired_when_the_pipeline_draws_step_noise_itself():
    pipe = tp.family_pipe("dit")  # DDPMScheduler: a step adds noise, DiTPipeline does not pass the generator
    runs = [probes.probe(pipe, TAX, classifier=logits, class_labels=[3, 7], num_inference_steps=3,
                         generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert "draws its step noise without the call's generator" in runs[0].meta["unpaired"]
    comparison = runs[0].compare(runs[1], n_boot=10)
    assert comparison.pairing == "independent" and "without the call's generator" in comparison.pairing_reason
    # a deterministic scheduler draws nothing at its steps: equal seeds pair the samples again
    ddim = tp.tiny_dit(scheduler="ddim")
    paired = [probes.probe(ddim, TAX, classifier=logits, class_labels=[3, 7], num_inference_steps=3,
                           generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert "unpaired" not in paired[0].meta and paired[0].compare(paired[1], n_boot=10).pairing == "paired"


def test_a_classifier_returning_nan_stops_a_probe_naming_the_leaf_and_sigma():
    pipe = tp.family_pipe("stable-diffusion")

    def broken(images):
        out = logits(images)
        out[:, 2] = float("nan")
        return out

    with pytest.raises(ProbesError, match=r"NaN/inf for leaf .* at sigma=[0-9.]+"):
        probes.probe(pipe, TAX, classifier=broken, prompt=["a cat"], num_inference_steps=3)


def test_a_classifier_returning_nan_stops_a_run_at_its_first_batch(tmp_path, monkeypatch):
    import probes.runner as runner

    build = runner.build

    def with_broken_classifier(plan):
        ctx = build(plan)
        inner = ctx.classifier

        def broken(x):
            out = inner(x)
            out[:, 1] = float("nan")
            return out

        return ctx.replace(classifier=broken)

    monkeypatch.setattr(runner, "build", with_broken_classifier)
    recipe = {"name": "nan", "taxonomy": str(ROOT / "taxonomies" / "gmm-two-by-two.yaml"),
              "model": {"kind": "gmm", "dim": 2, "std": 0.5, "hierarchy": {"separations": [6.0, 2.0]}},
              "classifier": {"kind": "exact"}, "estimators": ["plugin"],
              "sampling": {"samples": 64, "batch_size": 16, "steps": 8}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ProbesError, match=r"estimator 'plugin' \(batch 0\): NaN/inf for leaf 'left-b' at sigma="):
        runner.run(path, tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / "batches").iterdir()) == []  # stopped at the first batch
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"
