"""Optional subcommands of `prunelab`, one module each, registered if present.

A command module defines `register(subparsers) -> None`, adding its parser with
`set_defaults(func=...)`; the function takes the parsed args and returns an exit code.
"""

from __future__ import annotations

import importlib
import importlib.util

COMMAND_MODULES = ("landscape", "hessian", "sweep", "report", "analyze")


def register_all(subparsers) -> None:
    """Register every command module that exists."""
    for name in COMMAND_MODULES:
        module = f"prunelab.commands.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(subparsers)
