"""Probing overhead on Stable Diffusion: a probed run's wall time over plain sampling.

* plain (pipeline): ``pipe(prompts, num_inference_steps=N, guidance_scale=w)``, images decoded
  once at the end, as a user samples;
* plain (loop): the same DDIM sampler over :class:`StableDiffusionDenoiser` with guidance on the
  sigma axis (``probes.sampling.sample``), plus the final decode: the toolkit's own sampling cost;
* probed: the loop recording its trajectory, plus the ``plugin`` estimator (latent decode of the
  recorded x0 estimates every ``--stride``-th grid point at ``--decode-size`` latent pixels, then
  a CLIP zero-shot classifier), plus the final decode.

Same prompts, seeds, steps and scheduler grid in all three. The ratio printed is probed / plain
(pipeline); the target is below 1.5 at the default settings. On CPU the clock is the process's CPU
time with one thread (``--threads``), which stays steady on a busy shared machine; on CUDA it is
wall time with synchronisation.

Default: the tiny offline pipeline on CPU (random weights; proportions differ from SD 1.5, so the
figure is about the toolkit's own overhead). ``--full``: SD 1.5's architecture (UNet 860M, VAE
84M, CLIP ViT-L text encoder) at 512x512 with random weights in fp16 on CUDA, with an open_clip
ViT-B-32 classifier; skipped with a message without a GPU.

    python benchmarks/bench_sd_overhead.py [--steps 20] [--batch 4] [--stride 4] [--decode-size 8]
    python benchmarks/bench_sd_overhead.py --full --steps 50 --batch 4 --stride 5 --decode-size 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from probes._compat import patch_torchvision

patch_torchvision()

import networkx as nx  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from full_size import build as build_full_size  # noqa: E402
from full_size import timed  # noqa: E402

from probes.classifiers.clip import ClipZeroShotClassifier, register_tiny_clip  # noqa: E402
from probes.denoisers import GuidedDenoiser  # noqa: E402
from probes.models.stable_diffusion import DecodedClassifier, LatentDecoder, StableDiffusionDenoiser  # noqa: E402
from probes.models.tiny_sd import build_tiny_pipeline  # noqa: E402
from probes.taxonomy import Taxonomy  # noqa: E402

LEAVES = {"animal": ["cat", "dog", "bird"], "vehicle": ["car", "airplane", "boat"]}


def toy_taxonomy() -> Taxonomy:
    g = nx.DiGraph()
    for parent, children in LEAVES.items():
        g.add_edge("thing", parent)
        for child in children:
            g.add_edge(parent, child)
    return Taxonomy(g, name="bench")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="SD 1.5-size random-weight pipeline, fp16 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (tiny: 20, full: 50)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--stride", type=int, default=4, help="plugin: probe every k-th grid point")
    p.add_argument("--decode-size", type=int, default=None,
                   help="latent side before decoding (default: half the latent side)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="also time stride 1 and full-size decoding")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs only)")
    args = p.parse_args(argv)

    if args.full:
        if not torch.cuda.is_available():
            print("bench_sd_overhead --full: skipped, no CUDA device (it times SD 1.5's architecture in fp16 "
                  "at 512x512; run it on a GPU machine)")
            return 0
        device, dtype = "cuda", torch.float16
        pipe = build_full_size("stable-diffusion", 64, device, dtype)  # SD 1.5's architecture, random weights
        clip_name, steps = "ViT-B-32", args.steps or 50
    else:
        device, dtype = "cpu", torch.float32
        torch.set_num_threads(args.threads)
        pipe = build_tiny_pipeline(seed=0)
        clip_name, steps = register_tiny_clip(), args.steps or 20
    torch.manual_seed(args.seed)

    from probes.estimators import PluginEstimator, ProbeContext
    from probes.sampling import sample

    tax = toy_taxonomy()
    prompts = [f"a photo of a {leaf}" for leaf in tax.leaves][: args.batch]
    prompts += prompts[: args.batch - len(prompts)] if len(prompts) < args.batch else []
    latent = pipe.unet.config.sample_size
    decode_size = args.decode_size or latent // 2
    denoiser = StableDiffusionDenoiser(pipe)
    guided = GuidedDenoiser(denoiser, args.guidance)
    image_classifier = ClipZeroShotClassifier.create(tax, clip_name, templates="photo", device=device,
                                                     cache_dir=None, precision="fp16" if args.full else "fp32")

    # The pipeline's own grid: DDIM-style timesteps of its scheduler, sigma_k = sqrt((1-abar)/abar).
    pipe.scheduler.set_timesteps(steps)
    ac = pipe.scheduler.alphas_cumprod.double()
    ts = pipe.scheduler.timesteps.long().cpu()
    sigmas = ((1 - ac[ts]) / ac[ts]).sqrt()
    final_decoder = LatentDecoder(pipe.vae)

    def noise():
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        return torch.randn((args.batch, 4, latent, latent), generator=g).to(device)

    def plain_pipeline():
        with torch.no_grad():
            return pipe(prompts, num_inference_steps=steps, guidance_scale=args.guidance, latents=noise().to(dtype),
                        output_type="pt").images

    def plain_loop():
        traj = sample(guided, noise() * float((1 + sigmas[0] ** 2).sqrt()), sigmas, method="ddim", cond=prompts,
                      record=False)
        with torch.no_grad():
            return final_decoder(traj.x0)

    def probed(stride, size):
        def run():
            traj = sample(guided, noise() * float((1 + sigmas[0] ** 2).sqrt()), sigmas, method="ddim", cond=prompts)
            clf = DecodedClassifier(LatentDecoder(pipe.vae, decode_size=size), image_classifier)
            ctx = ProbeContext(taxonomy=tax, denoiser=guided, classifier=clf, batch_size=args.batch)
            out = PluginEstimator(sigma_stride=stride).estimate(traj, ctx)
            with torch.no_grad():
                final_decoder(traj.x0)
            return out
        return run

    settings = [(args.stride, decode_size)]
    if args.sweep:
        settings += [(1, decode_size), (1, None), (args.stride, None)]
    runs = {"pipeline": plain_pipeline, "loop": plain_loop}
    runs.update({setting: probed(*setting) for setting in settings})
    for fn in runs.values():  # warm-up: kernels, prompt-embedding cache, allocator
        fn()
    # Interleaved repeats, so that load changes on a shared machine hit every variant alike.
    times = {key: [] for key in runs}
    outputs = {}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            t, outputs[key] = timed(fn, device, 1)
            times[key].append(t)
    med = {key: statistics.median(v) for key, v in times.items()}

    # Per-component cost (one batch each), for a load-independent view of the same ratio.
    x = noise()
    with torch.no_grad():
        t_unet, _ = timed(lambda: guided(x, float(sigmas[1]), prompts), device, max(5, args.repeats))
        # The plug-in reads posteriors with the plain (empty-prompt) model: one unguided call per probe.
        t_plain, _ = timed(lambda: guided(x, float(sigmas[1]), None), device, max(5, args.repeats))
        t_final, _ = timed(lambda: final_decoder(x), device, max(5, args.repeats))

    kind = "SD 1.5 architecture, fp16, CUDA" if args.full else "tiny SD pipeline, CPU"
    print(f"{kind}: batch {args.batch}, {steps} DDIM steps, guidance {args.guidance}, "
          f"latents {latent}x{latent}, CLIP {clip_name}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}, {'wall' if device.startswith('cuda') else 'CPU'} time")
    print(f"  plain sampling (pipeline call)  {med['pipeline']:8.3f} s")
    print(f"  plain sampling (probes loop)    {med['loop']:8.3f} s   ({med['loop'] / med['pipeline']:.2f}x pipeline)")
    probe_cost = {}
    for stride, size in settings:
        n_probe = outputs[(stride, size)].log_probs.shape[1]
        if size not in probe_cost:
            clf = DecodedClassifier(LatentDecoder(pipe.vae, decode_size=size), image_classifier)
            with torch.no_grad():
                probe_cost[size], _ = timed(lambda clf=clf: clf(x), device, max(5, args.repeats))
        t_probe_call = probe_cost[size]
        model = (steps * t_unet + t_final + n_probe * (t_plain + t_probe_call)) / (steps * t_unet + t_final)
        where = f"every {stride}th sigma" if stride > 1 else "every sigma"
        px = (size or latent) * pipe.vae_scale_factor
        t = med[(stride, size)]
        print(f"  probed: plugin {where:<15} decode {size or latent:>3} latent px ({px:>3} px), "
              f"{n_probe:>2} probes/sample  {t:8.3f} s   overhead {t / med['pipeline']:.2f}x pipeline, "
              f"{t / med['loop']:.2f}x loop; from component costs {model:.2f}x")
    costs = ", ".join(f"decode {size or latent} + classify {t * 1e3:.1f} ms" for size, t in probe_cost.items())
    print(f"  component costs per batch: guided UNet step {t_unet * 1e3:.1f} ms, plain UNet call "
          f"{t_plain * 1e3:.1f} ms, final decode "
          f"{t_final * 1e3:.1f} ms, {costs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
