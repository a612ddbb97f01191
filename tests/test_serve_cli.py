"""`vatt serve` as a command: refusals exit 2 with one line, a non-loopback host warns first, SIGINT stops it with
130 and SIGTERM with 143 (the CLI's exit-code contract)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


from servekit import Running, expected, serve_command, world  # noqa: E402,F401  (world: the module fixture)

# ---------------------------------------------------------------------------------------------- the command


def run_serve(args: list[str], env: dict | None = None) -> tuple[int, str]:
    done = subprocess.run(serve_command() + args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    return done.returncode, (done.stderr.splitlines() or [""])[0]


def test_without_the_serve_extra_the_command_says_what_to_install(tmp_path):
    blocked = tmp_path / "blocked" / "starlette"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('starlette is not installed')\n")
    code, first = run_serve(["--index", "toy"], {"PYTHONPATH": str(blocked.parent)})
    assert (code, first) == (2, "error: vatt serve needs the serve extra: pip install 'vattcli[serve]'")


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "error: --port 70000: expected 0 (any free port) to 65535"),
    (["--max-upload-mb", "0"], "error: --max-upload-mb 0: expected a size above 0"),
    (["--index-home", "{home}", "--port", "0"], "error: index 'nope' not found in {home}; available: none"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, args, message):
    home = str(tmp_path / "home")
    code, first = run_serve(["--index", "nope", *[a.format(home=home) for a in args]])
    assert code == 2 and first.startswith(message.format(home=home))


def test_a_busy_port_is_a_one_line_error(world):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, first = run_serve(["--index", str(world["root"] / "index"), "--port", str(port)])
    assert code == 2 and first == f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"


def test_non_loopback_host_warns_first_and_sigint_stops_with_130(world, tmp_path):
    server = Running(["--index", str(world["root"] / "index"), "--host", "0.0.0.0", "--port", "0"],
                     {"TMPDIR": str(tmp_path)})
    try:
        assert server.url is not None, server.lines
        assert server.lines[0].startswith("warning: listening on 0.0.0.0, not loopback: the index's media files")
        assert server.get("/api/info", host="127.0.0.1")[0] == 200
        assert server.get("/api/search?q=")[0] == 400
    finally:
        code, lines = server.stop(signal.SIGINT)
    assert code == 130 and lines[-1] == "stopped by SIGINT"
    assert not list(tmp_path.iterdir())


def test_loopback_server_answers_and_sigterm_stops_with_143(world):
    server = Running(["--index", str(world["root"] / "index"), "--port", "0"])
    try:
        assert server.url is not None and server.url.startswith("http://127.0.0.1:"), server.lines
        assert server.lines[0].startswith("serving index 'index' (5 windows, 5 files) at http://127.0.0.1:")
        status, body = server.get("/api/search?q=a%20red%20square&k=1")
        assert status == 200 and len(json.loads(body)["results"]) == 1
    finally:
        code, lines = server.stop(signal.SIGTERM)
    assert code == 143 and lines[-1] == "stopped by SIGTERM"

