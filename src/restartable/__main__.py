"""``python -m restartable`` runs the CLI."""

from .cli import run

run()
