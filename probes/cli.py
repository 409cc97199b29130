"""The ``probes`` command (``python -m probes`` is the same).

Subcommands: ``run``, ``compare``, ``interval``, ``plot``, ``recipes``, ``taxonomies``, ``taxonomy``,
``wordnet``, ``train``. User errors (:class:`~probes.errors.ProbesError`) print one line and exit
with status 2; ``--quiet`` silences progress and the warnings of the libraries probes drives.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

from probes._compat import patch_torchvision
from probes.comparison import check_out
from probes.entropy.decisions import check_n_boot
from probes.entropy.difference import PAIRINGS
from probes.errors import ProbesError
from probes.families import FAMILIES
from probes.interval import add_interval_commands
from probes.recipe import DEVICE_PATTERN, load_recipe
from probes.report import plots
from probes.report.html import write_run_report
from probes.resources import RECIPES, TAXONOMIES, shipped_names, shipped_path
from probes.result import load
from probes.runner import run
from probes.taxonomy import load_taxonomy
from probes.taxonomy.cli import add_taxonomy_commands
from probes.version import __version__
from probes.yamlio import first_comment

PLOT_FORMATS = ("png", "pdf", "svg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probes",
        description="When does a diffusion model decide what it is drawing, and at which level of meaning? "
        "Entropy of class posteriors along sampling, restricted to the levels of a taxonomy, "
        "summarised as a decision-time tree.",
        epilog="Start with: probes run digits --out runs/digits  (shipped recipes run by name: probes recipes)",
    )
    parser.add_argument("--version", action="version", version=f"probes {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_compare(sub)
    add_interval_commands(sub)
    _add_plot(sub)
    _add_listings(sub)
    add_taxonomy_commands(sub)
    train = sub.add_parser("train", help="train an embedded model",
                           description="Train the models that ship inside probes (the default run's digits "
                                       "diffusion model and classifier).")
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    for family in FAMILIES.values():
        family.add_commands(models)
    return parser


# --- run ----------------------------------------------------------------------------------------


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="probe a model as a recipe says and write a run directory",
        description="Probe a model as RECIPE says: sample, estimate leaf posteriors along the noise levels, "
        "and write entropy curves, decision times, figures and report.html to --out.",
    )
    p.add_argument("recipe", help="a recipe YAML file, or the name of a shipped recipe (list them: probes recipes)")
    p.add_argument("--out", "-o", help="run directory (default: runs/<recipe name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace the run --out holds (never other files)")
    p.add_argument("--recompute-damaged", action="store_true",
                   help="with --resume: set damaged batch files aside and compute them again (without it a damaged "
                        "batch stops the run, naming it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sampling.guidance.scale=3 (repeatable)")
    p.add_argument("--samples", type=int, help="override sampling.samples")
    p.add_argument("--device", help="override the recipe's device (cpu, cuda, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress, summary or library warnings")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    overrides = list(args.overrides)
    # The flags are overrides like any other, so the recipe's checks apply; errors name the flag.
    if args.samples is not None:
        if args.samples < 1:
            raise ProbesError(f"--samples: must be a positive integer, got {args.samples}")
        overrides.append(f"sampling.samples={args.samples}")
    if args.device is not None:
        if not DEVICE_PATTERN.match(args.device):
            raise ProbesError(f"--device: {args.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        overrides.append(f"device={args.device}")
    recipe = load_recipe(args.recipe, overrides=overrides)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    result = run(recipe, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                 recompute_damaged=args.recompute_damaged)
    if result is not None and not args.quiet:
        print(result.summary())
        print(f"\nwrote {out}/ (report.html, run.json, curves.csv, decisions.csv, tree.*, figures: docs/outputs.md)")
    return 0


# --- compare ------------------------------------------------------------------------------------


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare two runs (e.g. two guidance scales) level by level along sigma",
        description="Per taxonomy level and node, the difference in mutual information I_B - I_A between two "
        "finished runs (or saved results) along sigma, its rate, where they peak (with joint bootstrap intervals), "
        "and how each node's decision sigma moved.",
    )
    p.add_argument("run_a", help="baseline run directory (e.g. guidance 1)")
    p.add_argument("run_b", help="run directory to compare against it")
    p.add_argument("--estimator", help="estimator to compare (default: run A's primary estimator)")
    p.add_argument("--pairing", choices=("auto",) + PAIRINGS, default="auto",
                   help="resample sample i of both runs together (paired) or apart (independent); auto pairs "
                   "runs drawn from the same seed, batch size and sample count")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates for the intervals (default 200)")
    p.add_argument("--out", "-o", help="directory for compare.csv, compare_nodes.csv, compare.json, figures and "
                                       "report.html")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    check_n_boot(args.n_boot, "--n-boot")
    if args.out is not None:
        check_out(Path(args.out))  # before the work
    a, b = load(args.run_a), load(args.run_b)
    comparison = a.compare(b, estimator=args.estimator, pairing=args.pairing, n_boot=args.n_boot)
    if args.out is not None:
        comparison.save(args.out, args.run_a, args.run_b)
    print(comparison.text(args.run_a, args.run_b))
    return 0


# --- plot ---------------------------------------------------------------------------------------


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="redraw a run's figures and report.html (e.g. as PDF for a paper)",
                       description="Redraw the figures of a finished run or saved result (curves, rates, "
                                   "decision-time tree) in the formats asked for, and rebuild its report.html.")
    p.add_argument("run", help="a run directory or a saved result")
    p.add_argument("--format", dest="formats", action="append", choices=PLOT_FORMATS,
                   help="figure format (repeatable; default: png)")
    p.add_argument("--out", "-o", help="folder for the figures (default: the run directory itself)")
    p.add_argument("--estimator", help="estimator whose curves the rates and tree show (default: the primary)")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    result = load(args.run)
    name = result._pick(args.estimator)
    out = Path(args.out) if args.out else Path(args.run)
    if out.exists() and not out.is_dir():
        raise ProbesError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    curves = {n: result.entropy(n) for n in result.estimates}
    decisions = result.decisions(estimator=name, kind="both")
    written = plots.write_figures(out, result.taxonomy, curves, decisions, primary=name,
                                  formats=tuple(args.formats or ["png"]))
    if args.out is None:
        written.append(write_run_report(out / "report.html", result, curves, {name: decisions}))
    print("\n".join(str(p) for p in written))
    return 0


# --- listings -----------------------------------------------------------------------------------


def _add_listings(sub) -> None:
    r = sub.add_parser("recipes", help="list the shipped recipes", description="The recipes that ship with "
                       "probes, each with what it runs (run one by name: probes run NAME).")
    r.set_defaults(func=lambda args: _list(RECIPES))
    t = sub.add_parser("taxonomies", help="list the shipped taxonomies", description="The taxonomies that ship "
                       "with probes, each with its size (show one: probes taxonomy show NAME).")
    t.set_defaults(func=lambda args: _list(TAXONOMIES))


def _list(kind: str) -> int:
    names = shipped_names(kind)
    width = max((len(n) for n in names), default=0)
    for name in names:
        path = shipped_path(kind, f"{name}.yaml")
        if kind == TAXONOMIES:
            tax = load_taxonomy(str(path))
            about = f"{len(tax.leaves)} leaves, depth {tax.max_depth}; " + (first_comment(path) or "")
        else:
            about = first_comment(path) or ""
        print(f"{name:<{width}}  {about}".rstrip())
    return 0


# --- the command --------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(enabled: bool):
    """With ``--quiet``, the libraries probes drives (open_clip, transformers, diffusers) keep their
    warnings to themselves; probes' own one-line errors still print."""
    if not enabled:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    patch_torchvision()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A command group without its subcommand prints that group's help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        _refuse_empty_arguments(parser, args)
        with _quiet(getattr(args, "quiet", False)):
            return int(args.func(args) or 0)
    except ProbesError as err:
        print(f"probes: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probes: interrupted; finished batches are kept (continue with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left early (`probes taxonomy show ... | head`): nothing is wrong. Point stdout at
        # /dev/null so that the interpreter's final flush does not report the closed pipe either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141                        # 128 + SIGPIPE, what a shell reports for such a reader
    except OSError as err:
        # The machine, not the toolkit: a full disk, a vanished directory, a permission.
        if args.debug:
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"probes: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: say so in one line, keep the traceback for --debug
        if args.debug:
            raise
        text = str(ProbesError(f"{type(err).__name__}: {err}"))
        print(f"probes: error: internal error ({text[:300]}); this is a bug in probes, please report it with the "
              "command you ran (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _refuse_empty_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--out ""`` (an unset shell variable) is no path: say so rather than fall back to a default."""
    names = {}
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest not in names:
                names[action.dest] = action.option_strings[0] if action.option_strings else action.dest.upper()
    for dest, value in vars(args).items():
        if isinstance(value, str) and not value.strip():
            raise ProbesError(f"{names.get(dest, dest)}: empty value; expected a path or a name")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
