"""Control derived from measurements, checked on sample quality: the benchmark that decides.

1. Guidance that follows the decisions. Two runs of ``recipes/digits-guidance.yaml`` (guidance 3
   and 1, the measuring runs) give the single guidance interval (``probes interval RUN_W3 --against
   RUN_W1``), the unguided run's leaf-level decision window, and a per-node schedule (``probes
   interval RUN_W1 --per-node --scale 3``). Then fresh leaf-conditional samples, the same starting
   and sampler noise for every arm (common random numbers), for each arm: no guidance, guidance 3
   everywhere, in the single interval, in the decision window, per-node schedules (group mixtures
   weighted by the path filter or by the prior), per-sample stopping (everywhere, and inside the
   single interval) and feedback guidance (FBG, Koulischer et al. 2025). Scored: conditional
   accuracy per level, Frechet distance to held-out digits in the classifier's feature space,
   within-leaf diversity (mean pairwise Euclidean distance between samples of the same leaf in that
   feature space, averaged over leaves), denoiser calls (guided: beyond the one conditional call
   per sample and step; filters spend none), with 95% bootstrap intervals over samples (paired:
   every arm resamples the same sample indices). The same on a Gaussian mixture with a two-level
   taxonomy, where the exact density adds each arm's mean log-likelihood under the target leaf's
   class and the mean exact probability that a sample belongs to its target leaf.
2. With ``--extras``: a coarse grid of intervals, to show where the derived one sits, and the
   entropic grid: at equal numbers of steps, ``grid: {from_run: RUN_W1}`` against ``geometric`` and
   ``karras`` on the digits model's Frechet distance (guidance 1).

    python benchmarks/bench_control.py [--runs DIR] [--extras]   # measuring runs are kept in DIR and reused

One torch thread and fixed seeds everywhere: a second run prints the same numbers.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __name__ == "__main__":  # before numpy loads its BLAS; importing this file changes nothing
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        # One BLAS thread: on a busy 2-core machine a threaded eigh of a 128 x 128 covariance (each
        # bootstrap replicate's Frechet distance) ran about 100 times slower than a single-threaded one.
        os.environ.setdefault(_var, "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import probes  # noqa: E402,F401  (the torchvision fix before anything imports it)
import probes.runner as runner  # noqa: E402
from probes.build import build  # noqa: E402
from probes.conditioning import ClassLabelConditioner  # noqa: E402
from probes.denoisers import GuidedDenoiser  # noqa: E402
from probes.denoisers.path_filter import LeafLookup  # noqa: E402
from probes.denoisers.per_node import NodeWindow, PerNodeGuidedDenoiser  # noqa: E402
from probes.denoisers.stopping import FeedbackGuidedDenoiser, StoppingGuidedDenoiser, fbg_parameters  # noqa: E402
from probes.errors import ProbesError  # noqa: E402
from probes.interval import derive_interval, derive_schedule  # noqa: E402
from probes.noise import karras_grid, make_grid  # noqa: E402
from probes.plan import resolve  # noqa: E402
from probes.quality import (  # noqa: E402
    classifier_features,
    conditional_accuracy,
    frechet_distance_of_features,
)
from probes.recipe import load_recipe  # noqa: E402
from probes.result import load  # noqa: E402
from probes.runner import grid_from_run, reference_features  # noqa: E402
from probes.sampling import sample  # noqa: E402

GRID_LO = [None, 0.5, 1.5]  # None: down to sigma = 0
GRID_HI = [3.0, 8.0, None]  # None: from sigma_max
SCALE = 3.0
STOP_THRESHOLD = 0.9  # "committed": the filtered posterior of the target at which guidance stops
# FBG: the paper's pi, t0, t1 (its ImageNet-512 optimum); the largest scale set to the other arms' 3.
FBG = {"pi": 0.999, "t0": 0.556, "t1": 0.429, "max_scale": SCALE}
N_BOOT = 200
GOAL = {"accuracy_points": 0.01, "guided_share": 0.30}


def ensure_run(recipe, out: Path) -> None:
    """Run ``recipe`` into ``out``, reusing the batches ``out`` already holds of this very recipe
    (``--resume`` refuses a run of another recipe; that one is replaced)."""
    try:
        runner.run(recipe, out, resume=out.exists(), progress=False)
    except ProbesError:
        runner.run(recipe, out, overwrite=True, progress=False)


# --- drawing with one generation denoiser ------------------------------------------------------------


def guided_per_sample(den, sigmas, n: int) -> torch.Tensor:
    """Each sample's guided evaluations in the trajectory ``den`` followed last."""
    if isinstance(den, StoppingGuidedDenoiser):
        return den.guided_steps.clone()
    if isinstance(den, PerNodeGuidedDenoiser):
        return den.guided_evaluations.clone()
    if isinstance(den, FeedbackGuidedDenoiser):
        return torch.full((n,), len(sigmas), dtype=torch.long)
    if isinstance(den, GuidedDenoiser) and den.scale != 1.0:
        lo, hi = den.interval if den.interval is not None else (-math.inf, math.inf)
        return torch.full((n,), int(((sigmas > lo) & (sigmas <= hi)).sum()), dtype=torch.long)
    return torch.zeros(n, dtype=torch.long)


def draw(parts, sigmas, den, n: int, seed: int, batch: int = 250, conditioner=None):
    """``n`` leaf-conditional samples (leaves cycling) drawn with ``den``: ``(x0, leaf, guided [n])``."""
    leaves = parts.taxonomy.leaves
    conditioner = conditioner or parts.conditioner
    xs, ys, guided = [], [], []
    for start in range(0, n, batch):
        idx = torch.arange(start, min(n, start + batch))
        g = torch.Generator().manual_seed(seed + start)
        dtype = torch.float64 if parts.exact_model is not None else torch.float32
        noise = torch.randn((len(idx), *parts.shape), generator=g, dtype=dtype) * sigmas[0]
        leaf = idx % len(leaves)
        before = int(getattr(den, "extra_evaluations", 0))
        with torch.no_grad():
            traj = sample(den, noise, sigmas, method="ancestral", cond=conditioner([leaves[i] for i in leaf]),
                          generator=g, record=False)
        counts = guided_per_sample(den, sigmas, len(idx))
        assert int(counts.sum()) == int(getattr(den, "extra_evaluations", 0)) - before  # the books balance
        xs.append(traj.x0)
        ys.append(leaf)
        guided.append(counts)
    return torch.cat(xs), torch.cat(ys), torch.cat(guided)


# --- per-sample quantities and their bootstrap ---------------------------------------------------------


@dataclass
class Scored:
    """What the bootstrap resamples: per-sample values of one arm."""

    correct: np.ndarray  # [N, levels] the classifier's cell is the conditioning leaf's
    features: np.ndarray  # [N, d] (Frechet distance, diversity)
    leaf: np.ndarray  # [N]
    guided: np.ndarray  # [N] guided evaluations
    steps: int  # conditional evaluations per sample
    exact: dict  # name -> [N] (mixtures: log-likelihood under the target class, P(target leaf))


def score(parts, x0, leaf, guided, steps) -> Scored:
    with torch.no_grad():
        log_probs = torch.cat([parts.classifier(c.to(parts.device)).cpu() for c in x0.split(256)])
    levels = range(1, parts.taxonomy.max_depth + 1)
    correct = np.stack([_correct_at(log_probs, leaf, parts.taxonomy, lv) for lv in levels], 1)
    feats = classifier_features(parts.classifier, x0.to(parts.device)).numpy()
    exact = {}
    if parts.exact_model is not None:
        gmm = parts.exact_model
        comp = torch.tensor(gmm.component_index(parts.taxonomy.leaves))[leaf]
        x = x0.double()
        sq = ((x - gmm.means[comp]) ** 2).sum(1)
        exact["log-lik under target"] = (-sq / (2 * gmm.std**2) - 0.5 * gmm.dim * math.log(2 * math.pi * gmm.std**2)
                                         ).numpy()
        exact["P(target leaf)"] = gmm.log_posterior(x, 0.0).exp()[torch.arange(len(comp)), comp].numpy()
    return Scored(correct, feats, leaf.numpy(), guided.numpy().astype(float), steps, exact)


def _correct_at(log_probs, leaf, taxonomy, level) -> np.ndarray:
    """Per-sample correctness at one level cut (:func:`probes.quality.conditional_accuracy` is its mean)."""
    cut = taxonomy.level_cut(level)
    cells = list(dict.fromkeys(cut[x] for x in taxonomy.leaves))
    member = torch.tensor([[cut[x] == c for x in taxonomy.leaves] for c in cells], dtype=torch.float64)  # [C, L]
    predicted = (log_probs.double().exp() @ member.T).argmax(1)
    right = (predicted == member.argmax(0)[leaf.long()]).numpy()
    assert abs(right.mean() - conditional_accuracy(log_probs, leaf, taxonomy)[level]) < 1e-12
    return right


class Reference:
    """The reference features' Gaussian, with the square root of its covariance computed once:
    ``tr((C_r^1/2 C C_r^1/2)^1/2)`` needs one symmetric eigenvalue problem per replicate."""

    def __init__(self, feats: np.ndarray):
        self.mu, self.cov = feats.mean(0), np.cov(feats, rowvar=False)
        w, v = np.linalg.eigh(self.cov)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    def frechet(self, feats: np.ndarray) -> float:
        """:func:`probes.quality.frechet_distance` against the reference, in the same form."""
        mu, cov = feats.mean(0), np.cov(feats, rowvar=False)
        middle = self.root @ cov @ self.root
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (middle + middle.T)), 0, None)).sum()
        return float(((mu - self.mu) ** 2).sum() + np.trace(cov) + np.trace(self.cov) - 2 * cross)


def diversity(leaf: np.ndarray, dist: np.ndarray, idx: np.ndarray) -> float:
    """Mean distance between two different samples of the same leaf, averaged over leaves; in a
    resample, pairs of two copies of one sample are left out (they would pull it toward 0)."""
    out = []
    lf = leaf[idx]
    for c in np.unique(leaf):
        members = idx[lf == c]
        distinct = members[:, None] != members[None]
        if distinct.any():
            out.append(dist[np.ix_(members, members)][distinct].mean())
    return float(np.mean(out))


def metrics(s: Scored, idx: np.ndarray, ref, dist) -> dict:
    row = {f"acc L{k + 1}": float(s.correct[idx, k].mean()) for k in range(s.correct.shape[1])}
    if ref is not None:
        row["Frechet"] = ref.frechet(s.features[idx])
    row["diversity"] = diversity(s.leaf, dist, idx)
    row["guided/sample"] = float(s.guided[idx].mean())
    for name, values in s.exact.items():
        row[name] = float(values[idx].mean())
    return row


def bootstrap(scored: dict, ref, n_boot: int, seed: int) -> tuple[dict, dict]:
    """``(point, replicates)``: each arm's metrics on all samples and on ``n_boot`` resamples of the
    sample indices, the same indices for every arm (so differences between arms are paired)."""
    n = len(next(iter(scored.values())).leaf)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, n) for _ in range(n_boot)]
    everything = np.arange(n)
    point, reps = {}, {}
    for name, s in scored.items():
        dist = np.sqrt(((s.features[:, None] - s.features[None]) ** 2).sum(-1))
        point[name] = metrics(s, everything, ref, dist)
        rows = [metrics(s, idx, ref, dist) for idx in draws]
        reps[name] = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        if "Frechet" in reps[name]:
            # Repeats in a resample inflate a Frechet distance (fewer distinct samples, a worse
            # covariance estimate): shift the replicates by their bias so the interval is around the
            # estimate. Differences between arms (same resamples) carry the same bias and need none.
            reps[name]["Frechet (shifted)"] = reps[name]["Frechet"] - (reps[name]["Frechet"].mean()
                                                                       - point[name]["Frechet"])
    return point, reps


def ci(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def fmt(value: float, interval, digits: int) -> str:
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


# --- the arms ------------------------------------------------------------------------------------------


@dataclass
class Arm:
    name: str
    where: str  # where in sigma it guides, for the table
    build: Callable[[], object]  # a fresh generation denoiser
    conditioner: object = None  # the generation cond's form, when not the model's leaf conditioner


def fmt_interval(iv) -> str:
    return "everywhere" if iv is None else f"({iv[0]:.3g}, {iv[1]:.3g}]"


def arms(parts, sigmas, interval, window, schedule, group_conditioner=None) -> list[Arm]:
    """The compared arms; ``group_conditioner`` (mixtures) adds per-node arms whose groups are exact."""
    base, tax, prior = parts.denoiser, parts.taxonomy, parts.prior
    leaf_only = parts.conditioner
    lookup = LeafLookup(leaf_only, tax.leaves)
    target_prior = (1 - parts.outside_mass) * prior

    def stopping(iv):
        return lambda: StoppingGuidedDenoiser(base, SCALE, STOP_THRESHOLD, lambda c: target_prior[lookup(c)], iv)

    windows = [NodeWindow(e["node"], *e["interval"], e["scale"]) for e in schedule]
    nodes = f"{len(windows)} node windows"
    delta, tau = fbg_parameters(sigmas, FBG["pi"], FBG["t0"], FBG["t1"])
    out = [Arm("no guidance", "–", lambda: base),
           Arm(f"guidance {SCALE:g} everywhere", "everywhere", lambda: GuidedDenoiser(base, SCALE)),
           Arm("single interval (pair rule)", fmt_interval(interval), lambda: GuidedDenoiser(base, SCALE, interval)),
           Arm("decision window", fmt_interval(window), lambda: GuidedDenoiser(base, SCALE, window))]
    if group_conditioner is not None:
        out.append(Arm("per-node, exact groups", nodes,
                       lambda: PerNodeGuidedDenoiser(base, tax, group_conditioner, windows, prior), group_conditioner))
    out += [Arm("per-node, filter-weighted groups", nodes,
                lambda: PerNodeGuidedDenoiser(base, tax, leaf_only, windows, prior, group_weights="filter")),
            Arm("per-node, prior-weighted groups", nodes,
                lambda: PerNodeGuidedDenoiser(base, tax, leaf_only, windows, prior, group_weights="prior")),
            Arm(f"stopping at {STOP_THRESHOLD:g}, from the start", "until committed", stopping(None)),
            Arm(f"stopping at {STOP_THRESHOLD:g}, in the single interval", fmt_interval(interval) + " until committed",
                stopping(interval)),
            Arm("FBG", f"scale 1 to {FBG['max_scale']:g} by feedback",
                lambda: FeedbackGuidedDenoiser(base, FBG["pi"], FBG["max_scale"], delta, tau))]
    return out


def arms_table(title, parts, ref_feats, sigmas, arm_list, n, seed, interval_arm="single interval (pair rule)"):
    scored = {}
    for arm in arm_list:
        x0, leaf, guided = draw(parts, sigmas, arm.build(), n, seed, conditioner=arm.conditioner)
        scored[arm.name] = score(parts, x0, leaf, guided, len(sigmas))
    ref = Reference(ref_feats.double().numpy()) if ref_feats is not None else None
    if ref is not None:  # the one-root form is the toolkit's Frechet distance
        first = next(iter(scored.values())).features
        expected = frechet_distance_of_features(torch.from_numpy(first), ref_feats)
        assert abs(ref.frechet(first) - expected) <= 1e-6 * max(1.0, expected)
    point, reps = bootstrap(scored, ref, N_BOOT, seed)
    everywhere = point[arm_list[1].name]["guided/sample"]
    levels = [k for k in point[arm_list[0].name] if k.startswith("acc L")]
    extra = list(next(iter(scored.values())).exact)
    cols = levels + (["Frechet"] if ref is not None else []) + ["diversity"] + extra
    print(f"\n{title} ({n} samples, {len(sigmas)} ancestral steps, same noise in every row; 95% bootstrap "
          f"intervals over samples, {N_BOOT} resamples, Frechet's shifted by the resamples' bias)")
    print("| arm | guides | " + " | ".join(cols) + " | guided calls (share of everywhere) | calls in total |")
    print("|---" * (len(cols) + 4) + "|")
    for arm in arm_list:
        p, r = point[arm.name], reps[arm.name]
        digits = {"Frechet": 3, "diversity": 3, "log-lik under target": 2}
        cells = [fmt(p[c], ci(r[c + " (shifted)" if c == "Frechet" else c]), digits.get(c, 3)) for c in cols]
        g = p["guided/sample"] * n
        share = f"{g / (everywhere * n):.1%} [{ci(r['guided/sample'])[0] / everywhere:.1%}, " \
                f"{ci(r['guided/sample'])[1] / everywhere:.1%}]" if everywhere else "–"
        total = len(sigmas) * n + g
        print(f"| {arm.name} | {arm.where} | " + " | ".join(cells) + f" | {g:.0f} ({share}) | {total:.0f} |")
    return point, reps, levels, arm_list[1].name


def goal_report(point, reps, levels, everywhere_name, interval_name, candidates):
    """Per candidate arm: the worst level's accuracy gap to guidance everywhere, the guided share and
    the Frechet gap to the single interval, each with its paired 95% interval; met or by how much missed."""
    print(f"\ngoal (digits): every level's accuracy within {GOAL['accuracy_points'] * 100:g} point of guidance "
          f"everywhere, at most {GOAL['guided_share']:.0%} of its guided calls, a Frechet distance below the single "
          "interval's (differences paired: arm minus reference, 95% bootstrap intervals)")
    print("| arm | worst level: accuracy gap | guided share | Frechet minus single interval's | goal |")
    print("|---|---|---|---|---|")
    every = point[everywhere_name]
    for name in candidates:
        p, r = point[name], reps[name]
        gaps = {lv: (p[lv] - every[lv], ci(r[lv] - reps[everywhere_name][lv])) for lv in levels}
        worst = min(gaps, key=lambda lv: gaps[lv][0])
        share = p["guided/sample"] / every["guided/sample"]
        share_ci = ci(r["guided/sample"] / reps[everywhere_name]["guided/sample"])
        dfd = p["Frechet"] - point[interval_name]["Frechet"]
        dfd_ci = ci(r["Frechet"] - reps[interval_name]["Frechet"])
        misses = []
        if gaps[worst][0] < -GOAL["accuracy_points"] - 1e-12:
            misses.append(f"accuracy by {(-gaps[worst][0] - GOAL['accuracy_points']) * 100:.1f} points ({worst})")
        if share > GOAL["guided_share"]:
            misses.append(f"calls by {(share - GOAL['guided_share']) * 100:.1f} points of share")
        if dfd >= 0:
            misses.append(f"Frechet by {dfd:.3f}")
        verdict = "met" if not misses else "missed: " + "; ".join(misses)
        print(f"| {name} | {worst}: {gaps[worst][0] * 100:+.1f} points [{gaps[worst][1][0] * 100:+.1f}, "
              f"{gaps[worst][1][1] * 100:+.1f}] | {share:.1%} [{share_ci[0]:.1%}, {share_ci[1]:.1%}] | "
              f"{dfd:+.3f} [{dfd_ci[0]:+.3f}, {dfd_ci[1]:+.3f}] | {verdict} |")


# --- the earlier checks: a grid of intervals, entropic grids -------------------------------------------


def quick(parts, reference, sigmas, scale, interval, n, seed):
    """``(leaf accuracy, Frechet distance)`` of ``n`` samples with plain guidance in ``interval``."""
    den = parts.denoiser if scale == 1.0 else GuidedDenoiser(parts.denoiser, scale, interval)
    x0, leaf, _ = draw(parts, sigmas, den, n, seed)
    s = score(parts, x0, leaf, torch.zeros(n), len(sigmas))
    return float(s.correct[:, -1].mean()), Reference(reference.double().numpy()).frechet(s.features)


def grid_search(parts, reference, sigmas, scale, n, seed, derived):
    smax = float(sigmas[0])
    print(f"\ngrid search over guidance intervals (lo, hi] at scale {scale:g}, {n} samples: accuracy / Frechet "
          "distance (fewer samples than above, so every distance is larger: compare within this table)")
    print("| lo \\ hi | " + " | ".join(f"{h if h is not None else smax:g}" for h in GRID_HI) + " |")
    print("|---" * (len(GRID_HI) + 1) + "|")
    for lo in GRID_LO:
        cells = []
        for hi in GRID_HI:
            a, b = 0.0 if lo is None else lo, smax if hi is None else hi
            acc, fd = quick(parts, reference, sigmas, scale, (a, b), n, seed)
            cells.append(f"{acc:.3f} / {fd:.3g}")
        print(f"| {lo if lo is not None else 0:g} | " + " | ".join(cells) + " |")
    same_n = [f"{k} {fmt_interval(v)}: " + "{:.3f} / {:.3g}".format(*quick(parts, reference, sigmas, scale, v, n, seed))
              for k, v in derived.items()]
    print(f"at the same {n} samples: " + "; ".join(same_n))


def _until_rule(text: str) -> str:
    """The derivation's lines up to its rule (without the recipe block after it)."""
    lines = text.splitlines()
    return "\n".join(lines[: next(i for i, line in enumerate(lines) if line.startswith("rule:")) + 1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=500, help="samples per scored arm")
    p.add_argument("--probe-samples", type=int, default=200, help="samples of each measuring run")
    p.add_argument("--runs", help="folder for the measuring runs (default: a temporary one)")
    p.add_argument("--extras", action="store_true", help="also the grid of intervals and the entropic step grids")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # small batches: extra threads only contend on a shared machine
    t0 = time.perf_counter()
    work = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="bench-control-"))
    work.mkdir(parents=True, exist_ok=True)

    # --- digits: measure, derive ---------------------------------------------------------------------------
    recipe_path = "digits-guidance"  # a shipped recipe, by name
    n_probe = f"sampling.samples={args.probe_samples}"
    for name, scale in (("digits-w1", 1.0), ("digits-w3", SCALE)):
        ensure_run(load_recipe(recipe_path, overrides=[n_probe, f"sampling.guidance.scale={scale}", "threads=1"]),
                   work / name)
    pair = derive_interval(work / "digits-w3", against=work / "digits-w1")
    window = derive_interval(work / "digits-w1")
    schedule = derive_schedule(load(work / "digits-w1"), work / "digits-w1", scale=SCALE)
    print(f"measuring runs: {args.probe_samples} samples each, bayes estimator, in {work}")
    print("derived from the guided/unguided pair:\n" + "\n".join(pair["text"].splitlines()[:-1]))
    print("derived from the decision window:\n" + "\n".join(window["text"].splitlines()[:-1]))
    print("derived per node:\n" + _until_rule(schedule["text"]))
    recipe = load_recipe(recipe_path)
    plan = resolve(recipe)
    parts = build(plan)
    reference = reference_features(plan, parts)
    s = recipe.sampling
    sigmas = make_grid(s.grid, s.sigma_max, s.sigma_min, s.steps)
    print(f"FBG: pi {FBG['pi']}, t0 {FBG['t0']}, t1 {FBG['t1']} (the paper's), largest scale {FBG['max_scale']:g}; "
          "offset {:.4g}, temperature {:.4g} on this grid".format(*fbg_parameters(sigmas, FBG["pi"], FBG["t0"],
                                                                                    FBG["t1"])))
    digit_arms = arms(parts, sigmas, pair["interval"], window["interval"], schedule["schedule"])
    point, reps, levels, every = arms_table("digits: guidance that follows the decisions", parts, reference, sigmas,
                                            digit_arms, args.samples, seed=11)
    goal_report(point, reps, levels, every, "single interval (pair rule)",
                [a.name for a in digit_arms[3:]])
    if args.extras:
        grid_search(parts, reference, sigmas, SCALE, args.samples // 2, 11,
                    {"the pair interval": pair["interval"], "the decision window": window["interval"]})
        print(f"\ndigits: step grids at equal steps, guidance 1, Frechet distance ({args.samples} samples; "
              "entropic: grid from_run the unguided run, half the steps log-uniform)")
        print("| steps | geometric | karras | from_run |")
        print("|---|---|---|---|")
        for steps in (12, 24):
            grids = {"geometric": make_grid("geometric", s.sigma_max, s.sigma_min, steps),
                     "karras": karras_grid(s.sigma_max, s.sigma_min, steps),
                     "from_run": grid_from_run(work / "digits-w1", s.sigma_max, s.sigma_min, steps)}
            fds = {k: quick(parts, reference, g, 1.0, None, args.samples, 23)[1] for k, g in grids.items()}
            print(f"| {steps} | " + " | ".join(f"{fds[k]:.4g}" for k in ("geometric", "karras", "from_run")) + " |")

    # --- a Gaussian mixture with a two-level taxonomy ----------------------------------------------------
    gmm_path = "gmm-hierarchy"
    # Within-class std 1 (not the recipe's 0.5), so that the fine split is not trivially separable
    # and accuracy has room to move.
    common = ["sampling.condition=leaf", "estimators=[exact]", f"sampling.samples={args.probe_samples * 2}",
              "analysis.n_boot=0", "model.std=1.0"]
    for name, scale in (("gmm-w1", 1.0), ("gmm-w3", SCALE)):
        ensure_run(load_recipe(gmm_path, overrides=common + [f"sampling.guidance.scale={scale}"]), work / name)
    g_pair = derive_interval(work / "gmm-w3", against=work / "gmm-w1")
    g_window = derive_interval(work / "gmm-w1")
    g_schedule = derive_schedule(load(work / "gmm-w1"), work / "gmm-w1", scale=SCALE)
    print("\nderived on the mixture from the pair:\n" + "\n".join(g_pair["text"].splitlines()[:-1]))
    print("derived per node:\n" + _until_rule(g_schedule["text"]))
    g_recipe = load_recipe(gmm_path, overrides=common)
    g_plan = resolve(g_recipe)
    g_parts = build(g_plan)
    g_ref = reference_features(g_plan, g_parts)
    gs = g_recipe.sampling
    g_sigmas = make_grid(gs.grid, gs.sigma_max, gs.sigma_min, gs.steps)
    # The mixture can be conditioned on groups (component masks): exact group denoisers. The leaf
    # class ids below make it a class-conditional model, for the mixtures of leaves digits need.
    masks = g_parts.conditioner
    leaf_ids = ClassLabelConditioner({leaf: i for i, leaf in enumerate(g_parts.taxonomy.leaves)})
    g_parts = g_parts.replace(conditioner=leaf_ids)
    gmm_arms = arms(g_parts, g_sigmas, g_pair["interval"], g_window["interval"], g_schedule["schedule"],
                    group_conditioner=masks)
    arms_table("Gaussian mixture (gmm-hierarchy with std 1, exact classifier, exact reference samples)", g_parts,
               g_ref, g_sigmas, gmm_arms, args.samples, seed=5)
    print(f"(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)  # stdout stays the same run to run
    return 0


if __name__ == "__main__":
    sys.exit(main())
