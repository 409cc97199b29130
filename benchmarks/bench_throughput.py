"""Throughput of probing, per shipped recipe family, at full architecture size with random weights.

For each family the shipped recipe is built exactly as ``probes run`` builds it (its guidance,
sampler, conditioning, classifier and decode size), except that the diffusers pipeline is a
full-size one built in code (``benchmarks/full_size.py``: published configs, random weights, no
download), the taxonomy is ``imagenet-mixed-16`` (16 leaves) for every image family, and CLIP
classifiers get random weights. Digits and Gaussian mixtures run their shipped models as they are.
Then, per batch:

* **plain**: the recipe's sampling (``probes.sampling.sample``, nothing recorded) and the final
  decode to images: what sampling alone costs;
* **plugin**: one batch of ``probes run`` with ``plugin`` every ``--stride``-th sigma (the run's own
  per-batch code: sampling with the trajectory recorded, the estimator, its checks), plus the
  final decode. Target on SD 1.5 at 512 px: probed / plain <= 1.15;
* **bayes**: the same with ``bayes`` over the taxonomy's leaves on unguided sampling. Its cost per
  step is printed in units of ``L + 1`` plain network calls on the batch (one call samples, one per
  leaf filters). Target for 16 leaves: <= 1.1 x 17 plain calls.

Samples per second count finished samples (sampled, probed, decoded). On CPU the clock is the
process's CPU time (steady on a busy machine; one torch thread unless ``--threads``); on CUDA, wall
time with synchronisation. Memory: the process's peak (max RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) after each family; the bytes a recorded trajectory
holds per sample at SD 1.5's and SDXL's latent sizes and 50 steps; and the peak memory per sample
of probing SD 1.5-size latents with the networks stubbed out (fresh processes, Linux).

    python benchmarks/bench_throughput.py                      # CPU defaults: a few minutes on 2 cores
    python benchmarks/bench_throughput.py --families stable-diffusion --size 64 --steps 50   # SD 1.5 at 512 px
    python benchmarks/bench_throughput.py --compile --channels-last   # GPU: all families, recipe settings

EDM2-XS is built with NVlabs' code: ``PYTHONPATH=/path/to/edm2`` (a checkout of
https://github.com/NVlabs/edm2), otherwise that family is skipped with a line.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import full_size  # noqa: E402
import torch  # noqa: E402
from full_size import timed  # noqa: E402

from probes.errors import ProbesError  # noqa: E402

#: family -> shipped recipe it is benchmarked with
RECIPES = {"stable-diffusion": "sd15", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux", "pixart": "pixart",
           "dit": "dit", "edm2": "edm2-xs", "digits": "digits", "gmm": "gmm-hierarchy"}
IMAGE_TAXONOMY = "imagenet-mixed-16"
CPU_FAMILIES = ("stable-diffusion", "pixart", "dit", "edm2", "digits", "gmm")  # the rest need more memory


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", help=f"comma-separated registry names (default on CPU: {','.join(CPU_FAMILIES)}; "
                   "on CUDA: all)")
    p.add_argument("--size", type=int, help="latent side of the image families (default: on CPU 8, on CUDA the "
                   "model's own)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the recipe's; image families on CPU 4)")
    p.add_argument("--batch", type=int, help="samples per batch (default: the recipe's; image families on CPU 1)")
    p.add_argument("--stride", type=int, default=4, help="plugin reads every k-th sigma")
    p.add_argument("--repeats", type=int, help="timed repeats, median reported (default: CPU 1, CUDA 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="auto: the recipe's dtype on CUDA, float32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoising network")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for UNets and VAEs")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--estimators", default="plugin,bayes", help="which probed runs to time: plugin, bayes or both")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    args.device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    args.families = args.families.split(",") if args.families else (list(RECIPES) if cuda else list(CPU_FAMILIES))
    args.estimators = args.estimators.split(",")
    if not args.estimators or any(e not in ("plugin", "bayes") for e in args.estimators):
        raise ProbesError(f"--estimators: expected plugin, bayes or plugin,bayes, got {','.join(args.estimators)!r}")
    unknown = [f for f in args.families if f not in RECIPES]
    if unknown:
        raise ProbesError(f"--families: unknown {', '.join(unknown)}; expected names from {', '.join(RECIPES)}")
    for flag in ("size", "steps", "batch", "stride", "repeats", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ProbesError(f"--{flag}: must be a positive integer, got {value}")
    if args.repeats is None:
        args.repeats = 3 if cuda else 1
    args.cuda = cuda
    return args


def cpu_defaults(family: str, args) -> tuple:
    """(size, steps, batch): full-size image networks on CPU get tiny latents, steps and batches
    unless the flags say otherwise; everything else runs its recipe's settings."""
    if args.cuda or (family not in full_size.BUILDERS and family != "edm2"):
        return args.size, args.steps, args.batch
    return args.size or 8, args.steps or 4, args.batch or 1


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


@contextlib.contextmanager
def pipeline_built_in_code(family: str, latent: int, args):
    """``load_pipeline`` (what every diffusers family's build calls) returns the full-size
    random-weight pipeline instead of reading a hub id or folder."""
    import probes.families.base as base
    from probes.models import stable_diffusion as sd

    original = base.load_pipeline

    def load(model, dtype="float32", device="cpu", **_):
        pipe = full_size.build(family, latent, str(device), sd.DTYPES[dtype])
        net = getattr(pipe, "unet", None) or pipe.transformer
        if args.channels_last:
            for module in (getattr(pipe, "unet", None), pipe.vae):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        if args.compile:
            net.compile()
        return pipe

    base.load_pipeline = load
    try:
        if family == "edm2":
            with edm2_built_in_code(latent, args):
                yield
        else:
            yield
    finally:
        base.load_pipeline = original


@contextlib.contextmanager
def edm2_built_in_code(latent: int, args):
    """EDM2's loaders return EDM2-XS built with NVlabs' code (random weights; the conditional
    network, or the unconditional one for the recipe's ``uncond_path``) and SD's VAE layout
    (sd-vae-ft-mse, EDM2's decoder)."""
    from probes.models import edm2

    dtype = torch.float32  # EDM2's networks run their layers in float16 on CUDA themselves (use_fp16)
    originals = edm2.load_edm2, edm2.load_vae

    def load_net(path, key="ema"):
        torch.manual_seed(0)
        net = full_size.edm2_xs(latent, label_dim=0 if "uncond" in str(path) else 1000)
        if args.compile:
            net.compile()
        return net.to(dtype).eval().requires_grad_(False), None

    def load_vae(name, device="cpu", **_):
        vae = full_size._vae()
        if args.channels_last:
            vae.to(memory_format=torch.channels_last)
        return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)

    edm2.load_edm2, edm2.load_vae = load_net, load_vae
    try:
        yield
    finally:
        edm2.load_edm2, edm2.load_vae = originals


def recipe_for(family: str, args, estimators: str, primary: str, guided: bool):
    from probes.recipe import load_recipe

    _, steps, batch = cpu_defaults(family, args)
    base = load_recipe(RECIPES[family])
    sets = [f"device={args.device}", f"estimators={estimators}", f"analysis.primary={primary}"]
    image = family in full_size.BUILDERS or family == "edm2"
    if family == "edm2":
        sets.append("model.vae=stabilityai/sd-vae-ft-mse")  # built in code, see edm2_built_in_code
    if image:
        sets.append(f"taxonomy={IMAGE_TAXONOMY}")
        dtype = args.dtype if args.dtype != "auto" else (getattr(base.model, "dtype", "float32")
                                                         if args.device.startswith("cuda") else "float32")
        if family != "edm2":  # EDM2 recipes have no dtype: its networks pick float16 on CUDA themselves
            sets.append(f"model.dtype={dtype}")
        if base.classifier is not None and base.classifier.kind == "clip":
            sets += ["classifier.pretrained=null", "classifier.templates=simple"]
    if steps:
        sets.append(f"sampling.steps={steps}")
    batch = batch or base.sampling.batch_size
    sets += [f"sampling.batch_size={batch}", f"sampling.samples={batch}"]
    if not guided:
        sets.append("sampling.guidance.scale=1")
    return load_recipe(RECIPES[family], overrides=sets)


def networks_inside(denoiser) -> list:
    """The outermost diffusers networks inside a denoiser that no pipeline builds (the shipped
    digits UNet), so ``--compile`` and ``--channels-last`` reach them too."""
    from diffusers import ModelMixin

    if not isinstance(denoiser, torch.nn.Module):
        return []  # Gaussian mixtures: closed-form, nothing to compile
    found = [m for m in denoiser.modules() if isinstance(m, ModelMixin)]
    return [m for m in found if not any(m is not o and any(m is c for c in o.modules()) for o in found)]


class Bench:
    """One family's recipe, built once, timed plain and probed."""

    def __init__(self, family: str, args):
        from probes.build import build, with_grid
        from probes.plan import resolve
        from probes.runner import sampling_grid

        self.family, self.args = family, args
        self.recipe = recipe_for(family, args, f"[{{name: plugin, sigma_stride: {args.stride}}}]", "plugin",
                                 guided=True)
        size = cpu_defaults(family, args)[0]
        native = {**{f: b[1] for f, b in full_size.BUILDERS.items()}, "edm2": 64}
        self.latent = size or native.get(family)
        self.plan = resolve(self.recipe)
        with pipeline_built_in_code(family, self.latent, args):
            ctx = build(self.plan)
        plain = unchecked(ctx.denoiser)
        if family not in full_size.BUILDERS and family != "edm2":
            for net in networks_inside(plain):  # the digits UNet: no pipeline to hook
                if args.channels_last:
                    net.to(memory_format=torch.channels_last)
                if args.compile:
                    net.compile()
        shapes = full_size.BUILDERS.get(family, (None, None, None))[2]
        if shapes is not None:  # text families built without their text encoders
            from probes.families.text import TextDenoiser
            from probes.models.stable_diffusion import DTYPES

            dtype = DTYPES[self.recipe.model.dtype]
            for d in (plain, ctx.guidance_base):
                if isinstance(d, TextDenoiser):
                    d.encode_fn = full_size.RandomTextEncoder(shapes, dtype, args.device)
        self.sigmas = sampling_grid(self.plan, ctx)
        self.ctx = with_grid(self.plan, ctx, self.sigmas)

    def run(self) -> dict:
        from probes.denoisers.base import FiniteCheck
        from probes.plan import resolve

        args, ctx, device = self.args, self.ctx, self.args.device
        n_leaves, steps = len(ctx.taxonomy.leaves), len(self.sigmas)
        out = {"family": self.family, "batch": self.recipe.sampling.batch_size, "steps": steps,
               "latent": tuple(ctx.shape), "leaves": n_leaves,
               "guidance": self.recipe.sampling.guidance.scale}
        if "bayes" in args.estimators:
            # bayes: the same model sampling unguided (one call per step), so a step is 1 + L calls.
            unguided = resolve(recipe_for(self.family, args, "[bayes]", "bayes", guided=False))
            ctx_u = ctx.replace(guided_denoiser=FiniteCheck(ctx.guidance_base or unchecked(ctx.denoiser)))
            plain_u = self._plain(unguided, ctx_u)
            bayes_t, _ = self._probed(unguided, ctx_u, plain_u)
            idx = torch.arange(unguided.sampling.batch_size)
            x = torch.randn((len(idx), *ctx.shape), generator=torch.Generator().manual_seed(1)).to(device) * 2.0
            cond = ctx_u.generation_cond(idx)
            with torch.no_grad():
                call_t, _ = timed(lambda: ctx_u.guided_denoiser(x, float(self.sigmas[1]), cond), device,
                                  max(3, args.repeats))
            bayes_est = max(bayes_t - plain_u, 0.0)  # the filter's share, on the benchmark's clock
            out.update(plain_u=plain_u, bayes=bayes_t, call=call_t,
                       bayes_step_calls=(bayes_est / (steps - 1) + call_t) / ((n_leaves + 1) * call_t))
        if "plugin" in args.estimators:
            plain_g = self._plain(self.plan, ctx)
            plugin_t, plugin_out = self._probed(self.plan, ctx, plain_g)
            name = self.plan.estimators[0].name
            probes_made = plugin_out["estimators"][name]["classifier_calls"]
            out.update(plain_g=plain_g, plugin=plugin_t, plugin_probes=probes_made)
        return out

    def _noise(self, plan, b=0):
        s = plan.sampling
        g = torch.Generator().manual_seed(b)
        return torch.randn((s.batch_size, *self.ctx.shape), generator=g) * self.sigmas[0]

    def _decode(self, x0):
        decoder = getattr(self.ctx.classifier, "decoder", None)
        if decoder is not None:  # image families: the final images, as a user gets them
            full = getattr(decoder, "decode_size", None)
            try:
                decoder.decode_size = None
                with torch.no_grad():
                    return decoder(x0)
            finally:
                decoder.decode_size = full
        return x0

    def _plain(self, plan, ctx) -> float:
        from probes.sampling import sample

        device = self.args.device
        idx = torch.arange(plan.sampling.batch_size)

        def run():
            g = torch.Generator().manual_seed(0)
            traj = sample(ctx.guided_denoiser, self._noise(plan).to(device), self.sigmas, method=plan.sampling.method,
                          cond=ctx.generation_cond(idx), generator=g, record=False)
            return self._decode(traj.x0)

        run()  # warm-up: kernels, compilation, prompt-embedding caches
        return timed(run, device, self.args.repeats)[0]

    def _probed(self, plan, ctx, plain_t) -> tuple[float, dict]:
        from probes.progress import Progress
        from probes.runner import _probe_batch  # the per-batch work of `probes run`, measured as it runs

        device = self.args.device
        idx = torch.arange(plan.sampling.batch_size)

        def run():
            record = _probe_batch(plan, ctx, 0, idx, Progress("", 1, enabled=False))
            self._decode(record["x0"].to(device))
            return record

        run()
        return timed(run, device, self.args.repeats)


def unchecked(denoiser):
    """The denoiser inside a run's finiteness check."""
    return getattr(denoiser, "denoiser", denoiser)


def trajectory_bytes(family: str, steps: int) -> tuple[tuple, int, int]:
    """Bytes per sample a recorded trajectory holds at the family's native latent size (float32),
    measured on the sampler's own recording with a stand-in denoiser."""
    from probes.noise import karras_grid
    from probes.sampling import sample

    if family not in full_size.BUILDERS:
        return None, 0, 0
    latent = full_size.BUILDERS[family][1]
    shape = (16, latent, latent) if family in ("sd3", "flux") else (4, latent, latent)
    traj = sample(lambda x, s, c: 0.5 * x, torch.zeros(1, *shape), karras_grid(14.6, 0.03, steps), method="ancestral")
    lean = sample(lambda x, s, c: 0.5 * x, torch.zeros(1, *shape), karras_grid(14.6, 0.03, steps), method="ancestral",
                  record="states")  # what `probes run` records for conditional batches after the first
    return shape, traj.states.nbytes + traj.denoised.nbytes, lean.states.nbytes


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def probing_peak_bytes(batch: int, latent: int, steps: int, leaves: int) -> int:
    """Peak memory (bytes above the resident set before it) of probing one batch of SD-size latents:
    sampled with the states recorded (as a conditional run records them), then read by ``plugin``
    and ``bayes``, with stand-ins for the networks so that the memory is the probing's own. Linux
    only: the kernel's peak-RSS mark is reset before (``/proc/self/clear_refs``) and read after."""
    import networkx as nx

    from probes.estimators import ProbeContext, build_estimator
    from probes.noise import karras_grid
    from probes.sampling import sample
    from probes.taxonomy import Taxonomy

    g = nx.DiGraph()
    g.add_edges_from(("root", f"leaf{i}") for i in range(leaves))
    tax = Taxonomy(g, name="flat")
    sigmas = karras_grid(14.6, 0.03, steps)

    def denoiser(x, s, cond):  # a stand-in network: one cheap op, an output like a prediction
        return 0.5 * x

    def classifier(x0):
        return torch.zeros(x0.shape[0], leaves)

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # hand freed heap back, so the resident set is the live one
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current resident set
    before = _status_kib("VmRSS")
    noise = torch.randn(batch, 4, latent, latent) * sigmas[0]
    traj = sample(denoiser, noise, sigmas, method="ancestral", cond=["p"] * batch, record="states")
    ctx = ProbeContext(taxonomy=tax, sigmas=sigmas, denoiser=denoiser, conditioner=lambda nodes: list(nodes),
                       classifier=classifier, batch_size=batch)
    for name in ("plugin", "bayes"):
        build_estimator(name).estimate(traj, ctx)
    return (_status_kib("VmHWM") - before) * 1024


def probing_memory_per_sample(latent: int = 64, steps: int = 50, leaves: int = 16) -> float | None:
    """Peak memory per sample of probing SD-size latents: fresh processes probe a batch of 2 and
    of 34 (after a warm-up batch, so first-call allocations are not counted); the difference over
    32 leaves out what does not grow with the batch. Repeats vary by ~10%."""
    import subprocess

    if not os.path.exists("/proc/self/clear_refs"):
        return None
    peaks = []
    for batch in (2, 34):
        code = (f"import sys; sys.path[:0] = {[HERE, os.path.join(HERE, '..')]!r}; import bench_throughput as b; "
                f"b.probing_peak_bytes(1, {latent}, {steps}, {leaves}); "
                f"print(b.probing_peak_bytes({batch}, {latent}, {steps}, {leaves}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        peaks.append(int(out.stdout.strip().splitlines()[-1]))
    return (peaks[1] - peaks[0]) / 32


def main(argv=None) -> int:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random-weight builds cast module by module: expected
    args = parse(argv)
    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
    where = (torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
             else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)")
    print(f"bench_throughput on {where}; torch {torch.__version__}; "
          f"{'wall' if device.startswith('cuda') else 'CPU'} time, median of {args.repeats}"
          f"{', compiled' if args.compile else ''}{', channels_last' if args.channels_last else ''}")
    print(f"| family | latents | batch | steps | dtype | plain samples/s | plugin/{args.stride} samples/s "
          "| plugin probed/plain | bayes samples/s (L leaves) | bayes probed/plain | bayes step / (L+1) calls |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    from probes.families import FAMILIES

    notes = [f"{name}: not benchmarked; add its shipped recipe to RECIPES in benchmarks/bench_throughput.py"
             for name in FAMILIES if name not in RECIPES]
    for family in args.families:
        if family == "edm2" and not full_size.nvlabs_edm2_importable():
            notes.append("edm2: skipped; EDM2-XS is built with NVlabs' own code: put a checkout of "
                         "https://github.com/NVlabs/edm2 on PYTHONPATH")
            continue
        if family in full_size.BUILDERS:
            latent = cpu_defaults(family, args)[0] or full_size.BUILDERS[family][1]
            need = full_size.parameter_count(family, latent) * (4 if args.dtype in ("auto", "float32")
                                                                and device == "cpu" else 2)
            if need > 0.6 * available_bytes(device):
                notes.append(f"{family}: skipped; its weights need {need / 2**30:.1f} GiB, more than 60% of the "
                             f"{available_bytes(device) / 2**30:.1f} GiB available on {device}")
                continue
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        bench = Bench(family, args)
        r = bench.run()
        dtype = getattr(bench.recipe.model, "dtype", "float64" if bench.ctx.exact_model is not None else "float32")
        if family == "edm2" and device.startswith("cuda"):
            dtype = "float16 layers"  # EDM2's Precond (use_fp16)
        b = r["batch"]
        latents = "x".join(map(str, r["latent"]))
        cells = ([f"{b / r['plain_g']:.3g}", f"{b / r['plugin']:.3g}", f"{r['plugin'] / r['plain_g']:.3f}"]
                 if "plugin" in r else ["-"] * 3)
        cells += ([f"{b / r['bayes']:.3g} ({r['leaves']})", f"{r['bayes'] / r['plain_u']:.2f}",
                   f"{r['bayes_step_calls']:.3f}"] if "bayes" in r else ["-"] * 3)
        print(f"| {family} | {latents} | {b} | {r['steps']} | {dtype} | " + " | ".join(cells) + " |", flush=True)
        mem = (f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda")
               else f"process max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        said = [f"guidance {r['guidance']:g} in plain/plugin, none in bayes"]
        if "plugin" in r:
            said.append(f"{r['plugin_probes'] // b} plugin probes per sample")
        if "bayes" in r:
            said.append(f"one plain call on the batch {r['call'] * 1e3:.1f} ms")
        notes.append(f"{family}: {'; '.join(said)}; {mem}; {time.perf_counter() - t0:.0f} s in all")
        del bench
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    for note in notes:
        print(f"  {note}")
    from probes.recipe import load_recipe

    per_sample = probing_memory_per_sample()
    if per_sample is not None:
        print(f"  peak memory per sample of probing SD 1.5-size latents (4x64x64, 50 steps, states recorded, plugin "
              f"and bayes over 16 leaves, networks stubbed): {per_sample / 2**20:.2f} MiB (peak RSS above the start, "
              f"batches of 34 and 2, difference / 32)")
    for family in ("stable-diffusion", "sdxl"):
        steps = load_recipe(RECIPES[family]).sampling.steps
        shape, size, states = trajectory_bytes(family, steps)
        print(f"  recorded trajectory per sample, {family} latents {'x'.join(map(str, shape))}, {steps} steps "
              f"(float32): {size / 2**20:.2f} MiB with predictions (unconditional runs, and the first batch), "
              f"{states / 2**20:.2f} MiB states only (conditional runs)")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ProbesError as err:
        print(f"bench_throughput: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
