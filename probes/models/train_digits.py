"""Training and quality report of the embedded digits models (see :mod:`probes.models.digits`).

``train_digits(out_dir)`` trains, on the train split of scikit-learn's digits,

1. the classifier (:class:`~probes.models.digits.DigitClassifier`), with small shifts, Gaussian
   noise and blur as augmentation so that it also reads the denoiser's smooth outputs;
2. a class-conditional ``UNet2DModel`` with a 1000-step linear ``DDPMScheduler`` (epsilon
   prediction), labels dropped to the null class with probability 0.1 for classifier-free
   guidance, AdamW with warm-up and cosine decay, and an exponential moving average of the weights
   (the EMA weights are the ones saved);

then reloads both through the public loaders and measures their quality: held-out classifier
accuracy, the denoiser's x0 error on held-out digits, and how often class-conditional samples are
recognised as their digit. Everything is written to ``out_dir`` with ``SHA256SUMS``.
Same seed, same torch build and thread count -> same weights.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from probes._compat import patch_torchvision
from probes.models.digits import (
    CHECKSUM_FILE,
    NULL_CLASS,
    NUM_DIGITS,
    DigitClassifier,
    load_digits_classifier,
    load_digits_denoiser,
    load_digits_split,
    sample_digits,
    write_checksums,
)

DEFAULTS = {
    "diffusion_steps": 6000,
    "classifier_epochs": 40,
}

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=16,
    num_class_embeds=NUM_DIGITS + 1,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        prediction_type="epsilon")
HPARAMS = dict(batch_size=128, lr=1e-3, weight_decay=0.01, warmup=200, final_lr_fraction=0.1,
               label_dropout=0.1, ema_decay=0.999, grad_clip=1.0,
               classifier_batch_size=64, classifier_lr=2e-3)
EVAL = dict(per_digit=50, steps=50, guidance=(1.0, 2.0),
            x0_sigmas=(0.05, 0.2, 0.5, 1.0, 2.0))


def train_digits(out_dir, seed: int = 0, diffusion_steps: int = DEFAULTS["diffusion_steps"],
                 classifier_epochs: int = DEFAULTS["classifier_epochs"], progress: bool = True,
                 eval_per_digit: int = EVAL["per_digit"], eval_steps: int = EVAL["steps"]) -> dict:
    """Train both digits models into ``out_dir`` and return the quality metrics (also ``metrics.json``).

    Writes ``unet/``, ``scheduler/``, ``classifier/``, ``metrics.json``, ``SHA256SUMS`` and ``README.md``.
    """
    patch_torchvision()
    from diffusers import DDPMScheduler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_digits_split("train", seed=0)
    x_test, y_test = load_digits_split("test", seed=0)

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    classifier = DigitClassifier()
    clf_loss = _train_classifier(classifier, x_train, y_train, classifier_epochs, seed, progress)
    clf_seconds = time.perf_counter() - t0
    _save_classifier(classifier, out / "classifier")

    t0 = time.perf_counter()
    torch.manual_seed(seed + 1)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    unet, diff_loss = _train_unet(x_train, y_train, scheduler, diffusion_steps, seed, progress)
    diff_seconds = time.perf_counter() - t0
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    weight_files = ["classifier/config.json", "classifier/model.safetensors", "scheduler/scheduler_config.json",
                    "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    write_checksums(out, weight_files)

    # Quality is measured on the files as written, through the public loaders.
    t0 = time.perf_counter()
    metrics = {
        "seed": seed,
        "classifier": {"epochs": classifier_epochs, "train_seconds": round(clf_seconds, 1),
                       "final_train_loss": round(clf_loss, 4),
                       "params": sum(p.numel() for p in classifier.net.parameters())},
        "diffusion": {"steps": diffusion_steps, "batch_size": HPARAMS["batch_size"],
                      "train_seconds": round(diff_seconds, 1), "final_train_loss": round(diff_loss, 4),
                      "params": sum(p.numel() for p in unet.parameters())},
        "setup": {"unet": {k: list(v) if isinstance(v, tuple) else v for k, v in UNET_CONFIG.items()},
                  "scheduler": SCHEDULER_CONFIG, "hparams": HPARAMS,
                  "data": "sklearn.datasets.load_digits, stratified 80/20 split (random_state=0): "
                          f"{len(y_train)} train / {len(y_test)} test"},
        "versions": _versions(),
    }
    quality = evaluate_digits(out, x_test, y_test, seed=seed, per_digit=eval_per_digit, steps=eval_steps,
                              progress=progress)
    metrics["classifier"].update(quality.pop("classifier"))
    metrics.update(quality)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_checksums(out, weight_files + ["metrics.json"])
    (out / "README.md").write_text(_readme(out, metrics))
    return metrics


# -------------------------------------------------------------------------------------- classifier

def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift by up to one pixel, blur (p=0.3) and add Gaussian noise (p=0.5, std up to 0.4)."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    shift = torch.randint(0, 9, (n,), generator=generator)
    out = torch.empty_like(x)
    for k in range(9):
        m = shift == k
        dy, dx = divmod(k, 3)
        out[m] = padded[m, :, dy:dy + 8, dx:dx + 8]
    blur_sigma = 0.4 + 0.6 * torch.rand(n, generator=generator)
    blurred = _blur(out, blur_sigma)
    out = torch.where((torch.rand(n, generator=generator) < 0.3)[:, None, None, None], blurred, out)
    std = 0.4 * torch.rand(n, generator=generator) * (torch.rand(n, generator=generator) < 0.5)
    return out + std[:, None, None, None] * torch.randn(x.shape, generator=generator)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample 3x3 Gaussian blur (edge-replicated)."""
    r = torch.arange(-1, 2, dtype=x.dtype)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = k1[:, :, None] * k1[:, None, :]  # [n, 3, 3]
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3)  # [n, 9, 64]
    return (patches * k2.reshape(-1, 9, 1)).sum(1).reshape(x.shape)


def _train_classifier(clf: DigitClassifier, x, y, epochs: int, seed: int, progress: bool) -> float:
    gen = torch.Generator().manual_seed(seed)
    bs = HPARAMS["classifier_batch_size"]
    per_epoch = math.ceil(len(y) / bs)
    opt = torch.optim.AdamW(clf.net.parameters(), lr=HPARAMS["classifier_lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, HPARAMS["classifier_lr"], total_steps=max(1, epochs * per_epoch))
    clf.train()
    running = float("nan")
    bar = tqdm(range(epochs), desc="digits classifier", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(len(y), generator=gen)
        for i in range(per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(clf.logits(augment(x[idx], gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = loss.item() if math.isnan(running) else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
    clf.eval()
    return running


def _save_classifier(clf: DigitClassifier, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clf.net.state_dict().items()}, directory / "model.safetensors")
    config = {**clf.config, "classes": [str(d) for d in range(NUM_DIGITS)], "input": "[N, 1, 8, 8] in [-1, 1]"}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------------------- diffusion

def _train_unet(x, y, scheduler, steps: int, seed: int, progress: bool):
    from diffusers import UNet2DModel

    unet = UNet2DModel(**UNET_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    bs, warmup = HPARAMS["batch_size"], HPARAMS["warmup"]
    opt = torch.optim.AdamW(unet.parameters(), lr=HPARAMS["lr"], weight_decay=HPARAMS["weight_decay"])

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, steps - warmup)
        lo = HPARAMS["final_lr_fraction"]
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress_))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    abar = scheduler.alphas_cumprod
    order, pos = torch.randperm(len(y), generator=gen), 0
    running = float("nan")
    unet.train()
    bar = tqdm(range(steps), desc="digits diffusion", unit="step", disable=not progress, miniters=50)
    for step in bar:
        if pos + bs > len(y):
            order, pos = torch.randperm(len(y), generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        x0, labels = x[idx], y[idx].clone()
        labels[torch.rand(len(idx), generator=gen) < HPARAMS["label_dropout"]] = NULL_CLASS
        t = torch.randint(0, len(abar), (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, class_labels=labels).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), HPARAMS["grad_clip"])
        opt.step()
        sched.step()
        decay = min(HPARAMS["ema_decay"], (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        running = loss.item() if math.isnan(running) else 0.99 * running + 0.01 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    return ema.eval(), running


# ---------------------------------------------------------------------------------------- evaluate

@torch.no_grad()
def evaluate_digits(directory, x_test=None, y_test=None, seed: int = 0, per_digit: int = EVAL["per_digit"],
                    steps: int = EVAL["steps"], guidance=EVAL["guidance"], progress: bool = False) -> dict:
    """Quality figures of the models in ``directory`` (as loaded by the public loaders).

    ``per_digit`` class-conditional samples per digit and guidance scale, and ``10 * per_digit``
    unconditional ones, all with ``steps`` sampler steps.
    """
    unconditional = NUM_DIGITS * per_digit
    if x_test is None:
        x_test, y_test = load_digits_split("test", seed=0)
    denoiser = load_digits_denoiser(directory)
    classifier = load_digits_classifier(None, directory)
    pred = classifier(x_test).argmax(-1)
    result = {"classifier": {"test_accuracy": round(float((pred == y_test).float().mean()), 4),
                             "test_examples": len(y_test)}}

    gen = torch.Generator().manual_seed(seed + 2)
    noise = torch.randn(x_test.shape, generator=gen)
    x0_mse = {}
    for s in EVAL["x0_sigmas"]:
        cond = F.mse_loss(denoiser(x_test + s * noise, s, y_test), x_test).item()
        uncond = F.mse_loss(denoiser(x_test + s * noise, s, None), x_test).item()
        x0_mse[str(s)] = {"conditional": round(cond, 5), "unconditional": round(uncond, 5)}
    result["denoiser_x0_mse_test"] = x0_mse

    samples = {"per_digit": per_digit, "sampler": f"deterministic DDIM (Euler), {steps} Karras steps (rho=7)"}
    labels = torch.arange(NUM_DIGITS).repeat_interleave(per_digit)
    for w in tqdm(guidance, desc="digits samples", disable=not progress):
        x = sample_digits(denoiser, labels, steps=steps, guidance=w, generator=torch.Generator().manual_seed(seed + 3))
        hit = classifier(x).argmax(-1) == labels
        samples[f"guidance_{w:g}"] = {
            "accuracy": round(float(hit.float().mean()), 4),
            "per_digit": [round(float(h.float().mean()), 3) for h in hit.reshape(NUM_DIGITS, per_digit)],
            "pixel_range": [round(float(x.min()), 3), round(float(x.max()), 3)]}
    x = sample_digits(denoiser, torch.full((unconditional,), -1), steps=steps,
                      generator=torch.Generator().manual_seed(seed + 4))
    counts = torch.bincount(classifier(x).argmax(-1), minlength=NUM_DIGITS)
    samples["unconditional"] = {"n": unconditional, "histogram": counts.tolist()}
    result["samples"] = samples
    return result


def _versions() -> dict:
    import diffusers
    import sklearn

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def _readme(out: Path, m: dict) -> str:
    s = m["samples"]
    sums = (out / CHECKSUM_FILE).read_text().strip()
    g = [k for k in s if k.startswith("guidance_")]
    rows = "\n".join(f"| {k.split('_')[1]} | {s[k]['accuracy']:.3f} | "
                     + " ".join(f"{v:.2f}" for v in s[k]["per_digit"]) + " |" for k in g)
    mse = "\n".join(f"| {sig} | {v['conditional']:.4f} | {v['unconditional']:.4f} |"
                    for sig, v in m["denoiser_x0_mse_test"].items())
    return f"""# digits: the embedded default model

A class-conditional diffusers `UNet2DModel` ({m['diffusion']['params']:,} parameters; class 10 is the
null label for classifier-free guidance) with a 1000-step linear `DDPMScheduler` (epsilon
prediction), and a small CNN classifier ({m['classifier']['params']:,} parameters), both trained on
scikit-learn's 8x8 digits ({m['setup']['data']}).
Produced by `probes.models.train_digits` with
seed {m['seed']}; see `docs/digits.md`.

Reproduce: `OMP_NUM_THREADS={m['versions']['threads']} probes train digits --out data/digits --seed {m['seed']} --steps {m['diffusion']['steps']}`

## Quality

- Classifier accuracy on the {m['classifier']['test_examples']} held-out digits: **{m['classifier']['test_accuracy']:.3f}**
- Class-conditional samples recognised by the classifier as their conditioning digit
  ({s['per_digit']} per digit, {s['sampler']}):

| guidance | accuracy | per digit 0..9 |
|---|---|---|
{rows}

- Unconditional samples ({s['unconditional']['n']}), classifier's histogram over digits 0..9:
  {s['unconditional']['histogram']}
- Denoiser x0 MSE on held-out digits (`x = x0 + sigma * n`, pixels in [-1, 1]):

| sigma | conditional | unconditional |
|---|---|---|
{mse}

Training: classifier {m['classifier']['epochs']} epochs in {m['classifier']['train_seconds']} s;
diffusion {m['diffusion']['steps']} steps of batch {m['diffusion']['batch_size']} in
{m['diffusion']['train_seconds']} s (CPU, torch threads: {m['versions']['threads']}, torch {m['versions']['torch']},
diffusers {m['versions']['diffusers']}).

## Files (`SHA256SUMS`, verified on load)

```
{sums}
```
"""


# --------------------------------------------------------------------------------------------- CLI

def add_train_command(train_commands, name: str) -> None:
    """Register ``probes train NAME`` (this model's training) on the ``train`` group's subparsers."""
    p = train_commands.add_parser(name, help="the 8x8 digits diffusion model and classifier",
                                  description="Train the digits UNet and classifier; writes weights, SHA256SUMS, "
                                              "metrics.json and README.md to --out.")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="diffusion training steps (default: the shipped setup)")
    p.add_argument("--classifier-epochs", type=int, default=None, help="classifier epochs (default: the shipped setup)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_digits_command)


def _train_digits_command(args) -> int:
    metrics = train_digits(
        args.out, seed=args.seed,
        diffusion_steps=DEFAULTS["diffusion_steps"] if args.steps is None else args.steps,
        classifier_epochs=DEFAULTS["classifier_epochs"] if args.classifier_epochs is None else args.classifier_epochs,
        progress=not args.quiet)
    s = metrics["samples"]
    print(f"classifier held-out accuracy {metrics['classifier']['test_accuracy']:.3f}; "
          f"samples recognised as their digit {s['guidance_1']['accuracy']:.3f} (w=1), "
          f"{s['guidance_2']['accuracy']:.3f} (w=2); written to {args.out}")
    return 0
