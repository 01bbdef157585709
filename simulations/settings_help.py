"""Every run setting with its default, for the epilog of `fedssl simulate --help`.

The defaults come from RunConfig (which a test keeps equal to pyproject.toml's), so the help
cannot drift from what a run uses; what each setting means is in docs/settings.md.
"""

from __future__ import annotations

import textwrap

from common.run_config import RunConfig


def show_value(value: object) -> str:
    """A default as it would be typed after `--set key=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value == "":
        return '""'
    return str(value)


def settings_epilog(width: int = 90) -> str:
    """`key=default` for every run setting, wrapped, under a one-line header."""
    pairs = [f"{key}={show_value(value)}" for key, value in RunConfig().to_mapping().items()]
    body = textwrap.fill("  ".join(pairs), width=width, initial_indent="  ",
                         subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
    return ("run settings for --set KEY=VALUE, with their defaults (a --preset changes some;\n"
            "docs/settings.md says what each one means):\n" + body)
