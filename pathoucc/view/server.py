"""The read-only web server of ``pathoucc view``: Starlette (an ASGI app) served by uvicorn.

Every GET answers a :class:`~pathoucc.view.site.Site` path; unknown paths, malformed tile addresses and anything
outside the site are a plain-text 404 (410 when the slide can no longer be read), other methods 405. Tiles are
rendered in Starlette's thread pool (OpenSlide and Pillow release the GIL while decoding and encoding) and sent
with a cache lifetime, as the files never change while the server runs.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pathoucc.errors import PathouccError
from pathoucc.view.site import Site, SiteError

__all__ = ["bind", "create_app", "serve", "serving"]


def create_app(site: Site) -> Starlette:
    """The ASGI app serving ``site`` (GET and HEAD only)."""

    async def answer(request: Request) -> Response:
        raw = request.scope.get("raw_path", b"").split(b"?")[0].decode("latin-1")
        path = unquote(raw or request.url.path)
        if "\\" in path or "\x00" in path or any(part in ("..", ".") for part in path.split("/")):
            return PlainTextResponse("not found\n", status_code=404)
        try:  # a cached tile is answered on the event loop; anything else is made in the thread pool
            content, media_type = site.cached(path) or await run_in_threadpool(site.get, path)
        except SiteError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=exc.status)
        cache = "no-cache" if path.rstrip("/") in ("", "/index.html", "/data/slides.js") else "max-age=3600"
        return Response(content, media_type=media_type, headers={"Cache-Control": cache,
                                                                  "X-Content-Type-Options": "nosniff"})

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "HEAD"])])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0 = any free port); a port in use is a one-line error."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise PathouccError(f"cannot resolve the host ({exc.strerror})", f"{host}:{port}") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        sock.close()
        what = "port in use; give another --port (or --port 0 for any free one)" if exc.errno == errno.EADDRINUSE \
            else f"cannot listen ({exc.strerror or exc})"
        raise PathouccError(what, f"{host}:{port}") from None
    sock.set_inheritable(True)
    return sock


def serve(site: Site, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve ``site`` on the bound socket ``sock`` until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(create_app(site), log_level=log_level, access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def serving(site: Site, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``site`` in a background thread for the block; yields its base URL (``http://host:port/``)."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(site), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        if not server.started:
            raise PathouccError("the server did not start", f"{host}:{port}")
        h, p = sock.getsockname()[:2]
        yield f"http://{h}:{p}/"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
