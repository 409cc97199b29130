"""The ``probes`` command.

Each subcommand lives next to the code it drives and registers itself here. User errors
(:class:`~probes.errors.ProbesError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from probes import __version__
from probes.errors import ProbesError


def build_parser() -> argparse.ArgumentParser:
    from probes.compare import add_compare_commands
    from probes.interval import add_interval_commands
    from probes.models.train_digits import add_train_commands
    from probes.run import add_run_commands
    from probes.taxonomy.cli import add_taxonomy_commands

    parser = argparse.ArgumentParser(
        prog="probes",
        description="When does a diffusion model decide what it is drawing, and at which level of meaning? "
        "Entropy of class posteriors along sampling, restricted to the levels of a taxonomy, "
        "summarised as a decision-time tree.",
        epilog="Start with: probes run digits --out runs/digits  (shipped recipes run by name; a path works too)",
    )
    parser.add_argument("--version", action="version", version=f"probes {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_commands(sub)
    add_compare_commands(sub)
    add_interval_commands(sub)
    add_taxonomy_commands(sub)
    add_train_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from probes._compat import patch_torchvision

    patch_torchvision()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A command group without its subcommand prints that group's help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        _refuse_empty_arguments(parser, args)
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
