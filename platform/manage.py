#!/usr/bin/env python
"""Django's command-line utility for Tailor; the installed `tailor` console script does the same."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    """Run a management command with Tailor's settings."""
    # From a checkout that is not pip-installed, `tailor` lives here and `workers`/`gpu_runner` one
    # level up; appending (not prepending) the root keeps the standard library's `platform` first.
    here = Path(__file__).resolve().parent
    for path in (str(here), str(here.parent)):
        if path not in sys.path:
            sys.path.append(path)
    from tailor.cli import main as tailor_main

    raise SystemExit(tailor_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
