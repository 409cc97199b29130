"""``probes taxonomy show|export`` and ``probes wordnet setup``.

:func:`add_taxonomy_commands` registers the commands on the main CLI's subparsers. Each handler
takes the parsed ``args`` and returns an exit code; user errors raise :class:`ProbesError`, which
the main CLI reports as ``probes: error: ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probes.errors import ProbesError
from probes.taxonomy import load_taxonomy
from probes.taxonomy.export import FORMATS, format_for, write_taxonomy
from probes.taxonomy.wordnet_data import setup_wordnet

SOURCE_HELP = ("a YAML file, a shipped name (digits-shape), an exported .json/.graphml/.nwk, "
               "or a WordNet spec: wordnet:imagenet-1k, wordnet:dog.n.01,cat.n.01,n02958343")


def add_taxonomy_commands(subparsers) -> None:
    """Register ``taxonomy show``, ``taxonomy export`` and ``wordnet setup``."""
    tax = subparsers.add_parser("taxonomy", help="inspect and export taxonomies",
                                description="Inspect and export taxonomies.")
    tax_sub = tax.add_subparsers(dest="taxonomy_command", metavar="{show,export}", required=True)

    show = tax_sub.add_parser("show", help="print a taxonomy as a text tree",
                              description="Print a taxonomy as a text tree (and, with --levels, the cells of "
                                          "every level cut).")
    show.add_argument("source", help=SOURCE_HELP)
    show.add_argument("--levels", action="store_true", help="also list the cells of every level cut")
    show.set_defaults(func=cmd_show)

    export = tax_sub.add_parser("export", help="write a taxonomy as node-link JSON, GraphML or Newick",
                                description="Write a taxonomy as networkx node-link JSON, GraphML or Newick (what "
                                            "load_taxonomy and other tools read back).")
    export.add_argument("source", help=SOURCE_HELP)
    export.add_argument("--format", choices=FORMATS, default=None,
                        help="output format (default: from the suffix of -o)")
    export.add_argument("-o", "--output", required=True, help="output file")
    export.set_defaults(func=cmd_export)

    wordnet = subparsers.add_parser("wordnet", help="WordNet data for nltk",
                                    description="Manage the WordNet data nltk reads.")
    wn_sub = wordnet.add_subparsers(dest="wordnet_command", metavar="{setup}", required=True)
    setup = wn_sub.add_parser(
        "setup", help="lay out WordNet for nltk from local files, or download it",
        description="Copy WordNet 3.0 database files (Debian/Ubuntu: wordnet-base, "
                    "wordnet-sense-index in /usr/share/wordnet) into nltk's layout; without local "
                    "files, fall back to nltk.download('wordnet').")
    setup.add_argument("--source", default=None,
                       help="directory holding data.noun, index.noun, ... (default /usr/share/wordnet)")
    setup.add_argument("--dest", default=None,
                       help="nltk data directory to install into (default <sys.prefix>/share/nltk_data)")
    setup.set_defaults(func=cmd_wordnet_setup)


def cmd_show(args: argparse.Namespace) -> int:
    print(load_taxonomy(args.source).render(levels=args.levels))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    fmt = format_for(args.output, args.format)
    if Path(args.source).is_file() and Path(args.output).resolve() == Path(args.source).resolve():
        raise ProbesError(f"-o {args.output}: is the taxonomy being exported; write to another file")
    tax = load_taxonomy(args.source)
    path = write_taxonomy(tax, args.output, fmt)
    print(f"wrote {fmt} taxonomy '{tax.name}' ({len(tax.leaves)} leaves) to {path}")
    return 0


def cmd_wordnet_setup(args: argparse.Namespace) -> int:
    print(setup_wordnet(source=args.source, dest=args.dest))
    return 0
