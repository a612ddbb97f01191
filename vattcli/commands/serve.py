"""``vatt serve``: search an index from a web page (and a small JSON API) with the model loaded once.

Starlette and uvicorn come with the ``serve`` extra and are imported only when the command runs. The server listens
on loopback unless ``--host`` says otherwise (design.md, Security), and then warns: the index's files become
reachable from the network. Ctrl-C (SIGINT) or SIGTERM stop it after the requests in flight (uvicorn's graceful
shutdown, at most ``SHUTDOWN_S``); the exit code is then 130 or 143, the CLI's contract for a stop by signal.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from vattcli.errors import ConfigError, VattError

err = Console(stderr=True, soft_wrap=True, highlight=False)
EXTRA_MESSAGE = "vatt serve needs the serve extra: pip install 'vattcli[serve]'"
SHUTDOWN_S = 5
BACKLOG = 2048  # uvicorn's default


def _require_extra() -> None:
    try:
        import python_multipart  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise VattError(EXTRA_MESSAGE) from None


def _check(port: int, max_upload_mb: float) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected 0 (any free port) to 65535")
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb {max_upload_mb:g}: expected a size above 0")


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (handed to uvicorn), so a busy port or an unknown host is a one-line error
    here, before the model is loaded, rather than uvicorn's log and exit 1 after."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address this machine can listen on ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return sock


def _is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _run(app: Any, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            timeout_graceful_shutdown=SHUTDOWN_S)
    uvicorn.Server(config).run(sockets=[sock])


def serve(
    index: str = typer.Option(..., "--index", "-i", metavar="NAME_OR_PATH",
                              help="The index to serve: a name under the index home, or a folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback makes the "
                             "index's files reachable from the network."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port, printed at start)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint to encode queries with (default: the one "
                                        "that built the index; another must have the same weights)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for the model (cpu, cuda, cuda:1)."),
    index_home: Optional[Path] = typer.Option(None, "--index-home", help="Where index names live (default: "
                                              "$VATT_HOME/indexes, with VATT_HOME defaulting to ~/.vatt)."),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", help="Largest query file accepted, in MB "
                                        "(10^6 bytes); larger uploads are refused with 413 while they stream."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking the checkpoint's weights against the "
                                   "sha256 in its meta.json."),
) -> None:
    """A web page and a JSON API to search an index: a caption, or a video or audio file dropped on the page; the
    results show thumbnails and play the matched segment. Build the index first: [bold]vatt index build NAME
    --videos DIR --ckpt RUN[/]."""
    _require_extra()
    _check(port, max_upload_mb)
    from vattcli.serve.app import LOOPBACK_HOSTS, create_app
    from vattcli.serve.service import Limits, SearchService

    sock = _bind(host, port)
    try:
        loopback = _is_loopback(sock)
        if not loopback:
            err.print(f"warning: listening on {host}, not loopback: the index's media files and thumbnails are "
                      "reachable from the network", markup=False)
        service = SearchService.open(index, home=index_home, ckpt=ckpt, device=device, verify=not no_verify,
                                     limits=Limits(max_upload=int(max_upload_mb * 10**6)))
        sock.listen(BACKLOG)  # connections made once the address is printed wait here until uvicorn accepts them
        allowed = [*LOOPBACK_HOSTS, sock.getsockname()[0], host] if loopback else None
        app = create_app(service, allowed_hosts=allowed)
        info = service.info()
        err.print(f"serving index {info['index']!r} ({info['windows']} windows, {info['files']} files) at "
                  f"{_url(sock)} (Ctrl-C stops)", markup=False)
        _run(app, sock)
    finally:
        sock.close()
