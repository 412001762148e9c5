"""``restartable run SCRIPT [ARGS]``: run a Python script under the exit-code contract."""

from __future__ import annotations

import sys

import click

from .._entry import run_script

__all__ = ["run"]


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=True,
)
@click.argument("script", type=click.Path(dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(script: str, args: tuple[str, ...]) -> None:
    """Run SCRIPT with ARGS like `python SCRIPT ARGS`, exiting with restartable's codes.

    A library error the script lets escape ends in one line and its documented code
    (75 held by another runner or store down, 2 usage, 65 data, 77 permission, 78
    configuration); the script's own exceptions exit 1 with their traceback.
    """
    sys.exit(run_script(script, list(args)))
