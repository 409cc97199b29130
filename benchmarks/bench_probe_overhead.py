"""What watching a pipeline costs: ``pipe(...)`` against ``probes.probe(pipe, ...)`` on a tiny
random-weight Stable Diffusion pipeline (CPU). Prints seconds per call (median of repeats) for the
plain call, the call with only the scheduler-step recorder, and the full probe with ``plugin``
and a linear classifier on decoded images.

    PYTHONPATH=. python benchmarks/bench_probe_overhead.py [--steps 20] [--batch 2] [--repeats 3]
"""

import argparse
import statistics
import time

import torch

import probes
from probes._compat import patch_torchvision

patch_torchvision()

from probes.families import family_of  # noqa: E402
from probes.models.tiny_sd import build_tiny_pipeline  # noqa: E402
from probes.probing import StepRecorder  # noqa: E402
from probes.schedulers import scheduler_kind  # noqa: E402
from probes.taxonomy import load_taxonomy  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipe = build_tiny_pipeline(sample_size=16)
    tax = load_taxonomy("animals-vehicles")
    w = torch.randn(3 * 16, len(tax.leaves), generator=torch.Generator().manual_seed(0))

    def clf(images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) @ w

    call = dict(prompt=["a photo of a cat"] * args.batch, num_inference_steps=args.steps, guidance_scale=7.5,
                output_type="latent")

    def plain():
        pipe(**call, generator=torch.Generator().manual_seed(0))

    def recorded():
        with StepRecorder(pipe, family_of(pipe), scheduler_kind(pipe.scheduler), call) as rec:
            pipe(**call, generator=torch.Generator().manual_seed(0))
        rec.trajectory()

    def probed():
        probes.probe(pipe, tax, classifier=clf, estimators=["plugin"], **call,
                     generator=torch.Generator().manual_seed(0))

    plain()  # warm-up
    print(f"tiny SD (latents 4x16x16, 128 px images), {args.steps} DDIM steps, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    base = timed(plain, args.repeats)
    rec = timed(recorded, args.repeats)
    full = timed(probed, args.repeats)
    print(f"pipe(...)                    {base:.3f} s")
    print(f"pipe(...) + step recorder    {rec:.3f} s  ({100 * (rec / base - 1):+.1f}%)")
    print(f"probes.probe(plugin)         {full:.3f} s  ({100 * (full / base - 1):+.1f}%: one VAE decode and "
          f"classifier call per step)")


if __name__ == "__main__":
    main()
