"""The command line: options and thin commands (`app`), and rendering (`render`), the only place
that prints."""

from aidsafe.cli.app import app, main

__all__ = ["app", "main"]
