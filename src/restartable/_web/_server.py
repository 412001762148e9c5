"""Running the app: open the store, bind the socket, warn about exposure, serve until a signal."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

from restartable.errors import StoreNotFound, StoreUnavailable, UsageError
from restartable.stores import Store, open_store, resolve_store_url

#: A refresh must not wait a PostgreSQL or Redis store's whole retry budget (60 s by default)
#: for a down server: the page says so after this many intervals instead, and at least
#: this floor (``open_store(retry=)``: it wins over the URL's ``retry=``).
_RETRY_INTERVALS = 3
_RETRY_FLOOR = 5.0


def serve_retry(interval: float) -> float:
    """How long one refresh waits for an unreachable server: three intervals, at least 5 s."""
    return max(_RETRY_FLOOR, _RETRY_INTERVALS * interval)


def open_read_only(url: str, interval: float) -> Store:
    """The store at ``url``, read-only (nothing is ever created or written), with a refresh's wait."""
    return open_store(url, read_only=True, retry=serve_retry(interval))


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (unresolvable: no)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), or UsageError naming the fix."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise UsageError(f"--host {host!r} cannot be resolved ({exc}): give an address such as 127.0.0.1") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port, or stop what listens there"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run_server(
    *,
    store_url: str | None,
    host: str = "127.0.0.1",
    port: int = 8765,
    interval: float = 2.0,
    token: str | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the status page until SIGINT or SIGTERM (then return normally: exit 0).

    The store is opened and read once before the socket is announced, so a wrong URL
    or a missing driver ends the command with its one-line error; a store that is down
    or does not exist yet at that moment is served as such (the page shows why) and read
    again every interval. Nothing is ever created: the store is opened read-only.
    """
    import uvicorn

    from restartable._url import redact

    from ._app import create_app
    from ._snapshot import Refresher

    url = resolve_store_url(store_url)
    display = redact(url)
    try:
        open_read_only(url, interval).close()  # fail fast on a bad URL or a missing driver (ConfigError, MissingDriver)
    except (StoreNotFound, StoreUnavailable):
        pass  # not there yet, or down: the first refresh below reports it, and the page shows it
    refresher = Refresher(lambda: open_read_only(url, interval), display=display, interval=interval)
    first = refresher.refresh()
    if first.error is not None:
        echo(f"restartable serve: {display} cannot be read yet ({first.error}); serving anyway, the page says so")
    sock = bind(host, port)
    where = sock.getsockname()
    shown = f"[{where[0]}]" if ":" in str(where[0]) else str(where[0])
    if not is_loopback(host):
        echo(
            f"restartable serve: WARNING: listening on {host}, not loopback: "
            + (
                "every request needs the token; it travels in clear over plain HTTP, so put TLS in front"
                if token
                else "anyone who can reach this port can read every run's state; pass --token "
                "(or $RESTARTABLE_SERVE_TOKEN)"
            )
        )
    app = create_app(refresher, token=token)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", server_header=False, timeout_graceful_shutdown=3
    )
    server = uvicorn.Server(config)
    try:
        with _signals_end(server):
            echo(
                f"restartable serve: http://{shown}:{where[1]}/ reading {display} every {interval:g}s (Ctrl-C to stop)"
            )
            server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def _signals_end(server: Any) -> Iterator[None]:
    """SIGINT and SIGTERM end serving gracefully, and the command with exit 0, whenever they come.

    uvicorn installs its own handlers only once its loop runs, and raises the signals it
    caught again after shutting down; a signal before that (or raised again) lands here
    and only asks the server to exit, so it is never a KeyboardInterrupt mid-startup.
    """

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


__all__ = ["run_server", "serve_retry", "is_loopback", "bind", "open_read_only"]
