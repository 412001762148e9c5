"""``restartable serve``: a live, read-only status page (``pip install 'restartable[web]'``).

The command only parses options and checks them; the app lives in :mod:`restartable._web`,
imported when the command runs, so the CLI works without the ``web`` extra.
"""

from __future__ import annotations

import click

from ..errors import MissingDriver, UsageError

__all__ = ["serve"]

ENV_TOKEN = "RESTARTABLE_SERVE_TOKEN"


@click.command()
@click.option(
    "--store",
    "store_url",
    envvar="RESTARTABLE_STORE",
    default=None,
    metavar="URL",
    help="Store URL (default: $RESTARTABLE_STORE, else sqlite:///.restartable/checkpoints.db).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback warns (use --token).",
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.2),
    help="Seconds between reads of the store (and page updates).",
)
@click.option(
    "--token",
    default=None,
    envvar=ENV_TOKEN,
    metavar="T",
    help=f"Require 'Authorization: Bearer T' or ?token=T (default: ${ENV_TOKEN}).",
)
def serve(store_url: str | None, host: str, port: int, interval: float, token: str | None) -> None:
    """A live, read-only status page: runs, a run's positions and chart, /api/runs, /metrics.

    The store is read once per --interval however many pages are open, with read-only
    calls only. Ctrl-C (or SIGTERM) stops the server with exit 0.
    """
    try:
        from .._web import run_server
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("starlette", "uvicorn", "jinja2", "markupsafe", "prometheus_client"):
            raise MissingDriver(f"`restartable serve` needs {exc.name}: pip install 'restartable[web]'") from None
        raise
    if token is not None and not token.strip():
        raise UsageError(f"--token (or ${ENV_TOKEN}) is empty: give a secret, or leave it unset")
    run_server(
        store_url=store_url,
        host=host,
        port=port,
        interval=interval,
        token=token or None,
        echo=lambda line: click.echo(line, err=True),
    )
