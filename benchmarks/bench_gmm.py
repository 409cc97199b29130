"""Cost of the exact Gaussian-mixture posterior at run scale.

Default: 1000 leaves, dimension 256, 4096 samples, 64 sigmas, i.e. log-posteriors [4096, 64, 1000]
(262,144 posteriors, 2.1 GB in float64). Samples come from the marginal: x0 from the mixture, then
x_sigma = x0 + sigma n. Two timings (wall and process CPU seconds; on a shared machine the CPU
figure is the steadier one):

* ``log_posterior`` on all 262,144 noisy states at once (what an estimator on arbitrary trajectory
  states does; one [rows, 256] x [256, 1000] matmul per chunk), reshaped to [N, S, L];
* ``log_posterior_path``: the forward-path shortcut, two [N, L] matmuls shared by every sigma.

    python benchmarks/bench_gmm.py [--leaves 1000] [--dim 256] [--samples 4096] [--sigmas 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="time the exact Gaussian-mixture posterior")
    parser.add_argument("--leaves", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--sigmas", type=int, default=64)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(args.leaves, args.dim, generator=gen, dtype=torch.float64)
    mixture = GaussianMixture(means, std=1.0)
    sigmas = geometric_grid(mixture.denoiser().sigma_max, 0.01, args.sigmas)
    x0, _ = mixture.sample(args.samples, gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    print(f"{args.leaves} leaves, dim {args.dim}, {args.samples} samples x {args.sigmas} sigmas, "
          f"{torch.get_num_threads()} threads")

    start = time.perf_counter()
    states = (x0[:, None] + sigmas[None, :, None] * noise[:, None]).reshape(-1, args.dim)
    flat_sigmas = sigmas.repeat(args.samples)
    built, cpu_built = time.perf_counter(), time.process_time()
    log_p = mixture.log_posterior(states, flat_sigmas).reshape(args.samples, args.sigmas, args.leaves)
    done, cpu_done = time.perf_counter(), time.process_time()
    print(f"log_posterior on {states.shape[0]} states: {done - built:.2f} s wall, {cpu_done - cpu_built:.2f} s CPU "
          f"(+ {built - start:.2f} s to build the states)")
    del states

    start, cpu = time.perf_counter(), time.process_time()
    path = mixture.log_posterior_path(x0, noise, sigmas)
    done, cpu_done = time.perf_counter(), time.process_time()
    print(f"log_posterior_path -> {list(path.shape)}: {done - start:.2f} s wall, {cpu_done - cpu:.2f} s CPU")
    # Compared in slices: a whole-tensor difference would allocate two more 2 GB temporaries.
    diff = max((path[i:i + 256] - log_p[i:i + 256]).abs().max().item() for i in range(0, args.samples, 256))
    print(f"max |difference| between the two: {diff:.2e}")


if __name__ == "__main__":
    main()
