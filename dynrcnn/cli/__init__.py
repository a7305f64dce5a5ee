"""The ``dynrcnn`` command line: ``data``, ``train``, ``eval``, ``runs``, ``predict``, ``report``, ``convert``, ``export``,
``premise``.

Each group of subcommands lives next to the code it drives (``cli.data``, ``cli.train``, ``cli.eval``,
``cli.predict``, ``cli.report``, ``cli.convert``) and registers itself here; this module only assembles the parser and turns
:class:`~dynrcnn.errors.DynrcnnError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dynrcnn import __version__
from dynrcnn.cli.help import HelpFormatter
from dynrcnn.errors import DynrcnnError

COMMAND_MODULES = ("dynrcnn.cli.data", "dynrcnn.cli.train", "dynrcnn.cli.eval", "dynrcnn.cli.predict", "dynrcnn.cli.report", "dynrcnn.cli.convert",
                   "dynrcnn.cli.premise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynrcnn",
        description="Dynamic R-CNN reproducibility report: data, training, evaluation and the report.",
        formatter_class=HelpFormatter,
        epilog="Run 'dynrcnn COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dynrcnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. An error raised in a data-loader worker arrives with
    PyTorch's worker banner and traceback in its message: its last line is the original."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and any("Original Traceback" in line for line in lines):
        last = lines[-1]
        name = type(e).__module__ + "." + type(e).__name__ + ": "
        return last[len(name):] if last.startswith(name) else last
    return " ".join(line.strip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except DynrcnnError as e:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
