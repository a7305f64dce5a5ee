"""The help formatter of every ``dynrcnn`` command: prose wrapped to the terminal, examples kept."""

from __future__ import annotations

import argparse
import textwrap


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wrap each line of a description or epilog that starts at the margin (prose) to the
    terminal's width; keep lines that start with a space (examples, lists, aligned tables) as
    written, as :class:`argparse.RawDescriptionHelpFormatter` keeps them all."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if line and not line[0].isspace() and len(indent + line) > width:
                lines.append(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent,
                                           break_on_hyphens=False, break_long_words=False))
            else:
                lines.append(indent + line)
        return "\n".join(lines)
