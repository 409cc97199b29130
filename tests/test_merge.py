"""``probes.merge_results``: results of several processes concatenated along samples equal the result
of one process on all samples; mismatched results are refused in one line."""

import dataclasses

import numpy as np
import pytest
import tiny_pipelines as tp
import torch
from tolerances import F32, magnitude

import probes
from probes.errors import ProbesError
from probes.taxonomy import load_taxonomy

TAX = "animals-vehicles"
PROMPTS = ["a cat", "a dog", "a car", "a boat"]


class LinearLogits:
    def __init__(self, n_leaves, seed=0):
        self.w = torch.randn(3 * 16, n_leaves, generator=torch.Generator().manual_seed(seed))

    def __call__(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.w


def _probe(prompts, seeds, steps=4, tax=TAX):
    pipe = tp.family_pipe("stable-diffusion")
    taxonomy = load_taxonomy(tax)
    # One generator per sample: a sample's noise does not depend on which process draws it.
    return probes.probe(pipe, taxonomy, classifier=LinearLogits(len(taxonomy.leaves)),
                        estimators=["plugin"], prompt=prompts,
                        guidance_scale=3.0, num_inference_steps=steps, output_type="latent",
                        generator=[torch.Generator().manual_seed(s) for s in seeds])


@pytest.fixture(scope="module")
def whole_and_halves():
    return _probe(PROMPTS, [0, 1, 2, 3]), _probe(PROMPTS[:2], [0, 1]), _probe(PROMPTS[2:], [2, 3])


def test_two_halves_merge_to_the_whole(whole_and_halves):
    whole, a, b = whole_and_halves
    merged = probes.merge_results([a, b])
    assert merged.n_samples == 4 and merged.meta["merged_from"] == 2
    assert torch.equal(merged.sigmas(), whole.sigmas())
    # The UNet runs on batches of 2 instead of 4: float32 kernels may round differently per batch
    # size (a few float32 units per layer), through four guided steps, so the posteriors are compared
    # at 32 float32 units of their magnitude (measured 3) rather than bit for bit, and the entropies
    # (at most log 13) at 16 units of theirs (measured 0.1).
    lp = whole.log_posteriors()
    assert torch.allclose(merged.log_posteriors(), lp, rtol=0, atol=32 * F32 * magnitude(lp))
    assert merged.estimates["plugin"].classifier_calls == whole.estimates["plugin"].classifier_calls
    levels = whole.entropy().level_mean()
    assert np.allclose(merged.entropy().level_mean(), levels, rtol=0, atol=16 * F32 * magnitude(levels))
    # A merged result merges again (three shards), and saves like any result.
    again = probes.merge_results([a, probes.merge_results([b])])
    assert again.meta["merged_from"] == 2 and torch.equal(again.log_posteriors(), merged.log_posteriors())
    # Each part's per-sample seeds, in sample order: the merged result pairs with the whole one.
    assert merged.meta["generator"] == whole.meta["generator"] == {"seeds": [0, 1, 2, 3], "per_sample": True,
                                                                   "device": "cpu"}
    assert merged.compare(whole, n_boot=10).pairing == "paired"


def test_parts_drawn_from_one_generator_each_merge_without_seeds(whole_and_halves):
    """One generator per call: its seed fixed that call's draws only, so the merge claims none."""
    _, a, b = whole_and_halves
    single = probes.ProbeResult(taxonomy=b.taxonomy, estimates=b.estimates,
                                meta=dict(b.meta, generator={"seeds": [7], "per_sample": False, "device": "cpu"}))
    merged = probes.merge_results([a, single])
    assert merged.n_samples == 4 and "generator" not in merged.meta


def test_mismatches_are_one_line(whole_and_halves):
    _, a, _ = whole_and_halves
    other_grid = _probe(PROMPTS[:2], [0, 1], steps=3)
    cases = [
        ([], "no results"),
        ([a, "not a result"], "item 1 is a str"),
        ([a, other_grid], "sigma grid"),
    ]
    renamed = probes.ProbeResult(taxonomy=a.taxonomy, estimates={"rollout": a.estimates["plugin"]}, meta=a.meta)
    cases.append(([a, renamed], "estimators"))
    restricted = probes.ProbeResult(taxonomy=a.taxonomy.restrict(a.taxonomy.leaves), estimates=a.estimates,
                                    meta=dict(a.meta, scheduler="EulerDiscreteScheduler"))
    cases.append(([a, restricted], "provenance \\(scheduler"))
    four = {n: dataclasses.replace(e, log_probs=e.log_probs[..., :4]) for n, e in a.estimates.items()}
    smaller = probes.ProbeResult(taxonomy=a.taxonomy.restrict(a.taxonomy.leaves[:4]), estimates=four, meta=a.meta)
    cases.append(([a, smaller], "taxonomy"))
    for items, message in cases:
        with pytest.raises(ProbesError, match=message) as err:
            probes.merge_results(items)
        assert "\n" not in str(err.value)


def test_the_repeated_sample_check_holds_no_copy_of_the_posteriors():
    import tracemalloc

    from probes.estimators import EstimatorOutput
    from probes.merge import _check_no_repeats
    from probes.result import ProbeResult

    tax = load_taxonomy(TAX)
    sigmas = torch.logspace(1, -1, 16, dtype=torch.float64)

    def part(seed):
        g = torch.Generator().manual_seed(seed)
        lp = torch.log_softmax(torch.randn(200, 16, len(tax.leaves), generator=g), -1)
        return ProbeResult(taxonomy=tax, estimates={"plugin": EstimatorOutput("plugin", sigmas, log_probs=lp)}, meta={})

    parts = [part(0), part(1)]
    size = sum(p.estimates["plugin"].log_probs.numel() * 4 for p in parts)
    tracemalloc.start()
    try:
        _check_no_repeats(parts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4, (peak, size)  # a digest per sample, not its rows
