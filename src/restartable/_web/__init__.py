"""``restartable serve``: a live, read-only status page over any store (``pip install 'restartable[web]'``).

Built on Starlette (the app, :mod:`._app`) and uvicorn (the server, :mod:`._server`).
One thread reads the store once per interval (:mod:`._snapshot`); every page, the JSON
API and ``/metrics`` are served from its latest read. Nothing here writes to a store.
"""

from __future__ import annotations

from ._app import create_app
from ._server import run_server
from ._snapshot import Refresher, Snapshot

__all__ = ["create_app", "run_server", "Refresher", "Snapshot"]
