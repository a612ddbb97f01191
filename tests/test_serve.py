"""`vatt serve`: the HTTP API on a real uvicorn server (in a thread, on a free port) over an index written here with
known vectors, thumbnails and media files from mediagen. Expectations are computed here: rankings by float64 cosine
of the stored vectors against a query embedded by this test, bytes read from the files, names written by hand. Bad
queries get their 4xx and a one-line JSON error, and the server answers a good query after each. The command itself
runs as a subprocess: its refusals exit 2 with one line, and SIGINT stops it with 130 (the CLI's contract)."""
from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from vattcli.api import load_tokenizer  # noqa: E402
from vattcli.eval.query import encode_audio_file, encode_video_file  # noqa: E402
from vattcli.retrieval.index import RetrievalIndex  # noqa: E402
from vattcli.retrieval.store import IndexContent  # noqa: E402
from vattcli.retrieval.names import source_name  # noqa: E402
from vattcli.serve.service import SearchService  # noqa: E402

from servekit import LIMIT, check_results, expected, multipart, unit, world  # noqa: E402,F401  (world: the module fixture)

# ---------------------------------------------------------------------------------------------- searching


def test_text_search_ranks_the_stored_vectors_by_cosine_with_the_caption(world):
    text = "a blue circle moving left"
    ids = torch.from_numpy(load_tokenizer(world["ckpt"]).encode([text], max_len=world["spec"].text_len)).long()
    with torch.no_grad():
        query = world["model"](text=ids)["text_vt"][0].double().numpy()
    for k in (3, 2):
        status, answer = world["server"].json("GET", f"/api/search?q=a%20blue%20circle%20moving%20left&k={k}")
        assert status == 200
        assert answer["query"] == {"text": text} and answer["space"] == "vt"
        check_results(world, answer["results"], expected(world, "vt", query, k))


@pytest.mark.parametrize("name, kind", [("a.mp4", "video"), ("named-like-audio.m4a", "video"),
                                        ("c.m4a", "audio"), ("clip.mp4", "audio")])
def test_uploaded_file_is_a_video_or_audio_query_by_its_streams_not_its_name(world, name, kind):
    source = world["files"]["a"] if kind == "video" else world["files"]["c"]
    encode = encode_video_file if kind == "video" else encode_audio_file
    query = encode(world["model"], source, world["spec"]).double().numpy()
    body, headers = multipart([("file", name, source.read_bytes())])
    status, answer = world["server"].json("POST", "/api/search?k=5", body=body, headers=headers)
    assert status == 200, answer
    assert answer["query"] == {kind: name} and answer["space"] == "va"
    check_results(world, answer["results"], expected(world, "va", query, 5))
    assert not list(world["uploads"].iterdir())


def test_info_describes_the_index(world):
    status, info = world["server"].json("GET", "/api/info")
    assert status == 200
    assert (info["index"], info["model"], info["windows"], info["files"]) == ("index", "vatt-tiny", 5, 5)
    assert info["spaces"] == {"vt": {"vectors": 3, "dim": 32, "search": "exact"},
                              "va": {"vectors": 5, "dim": 64, "search": "exact"}}
    assert info["queries"] == ["text", "video", "audio"] and info["max_upload_bytes"] == LIMIT


@pytest.mark.parametrize("path, root, shown", [
    ("/data/films/day1/a.mp4", "/data/films", "day1/a.mp4"),
    ("/data/films/a.mp4", "/data/films/", "a.mp4"),
    ("/data/other/secret/b.mp4", "/data/films", "b.mp4"),
    ("/data/films/c.mp4", None, "c.mp4"),
    ("videos/v1.mp4", None, "videos/v1.mp4"),
    ("../../etc/v1.mp4", None, "v1.mp4"),
])
def test_source_names_never_show_paths_outside_the_indexed_folder(path, root, shown):
    assert source_name(path, root) == shown


def test_index_built_from_shards_has_no_media_or_thumbnails(world, tmp_path):
    """Items as a shard build writes them (a manifest's relative source, no source id), no sources, no thumbnails."""
    rng = np.random.default_rng(3)
    items = [{"key": f"clip{i}", "source": f"videos/v{i}.mp4", "start": 1.0, "end": 4.2, "caption": "a red square"}
             for i in range(3)]
    content = IndexContent(items, {"vt": unit(rng, 3, 32), "va": unit(rng, 3, 64)},
                           {"vt": torch.arange(3), "va": torch.arange(3)})
    RetrievalIndex.write(tmp_path / "shards-index", content, ckpt=world["ckpt"], tokenizer_sha256=None,
                         model_name="vatt-tiny")
    service = SearchService.open(str(tmp_path / "shards-index"))
    results = service.search_text("a red square", 3)["results"]
    assert sorted(r["source"] for r in results) == ["videos/v0.mp4", "videos/v1.mp4", "videos/v2.mp4"]
    assert {(r["media"], r["thumbnail"], r["kind"], r["caption"]) for r in results} == {(None, None, None,
                                                                                         "a red square")}
    assert service.media(0) is None and service.info()["files"] == 0


# ---------------------------------------------------------------------------------------------- bad queries


def bad_requests(world: dict) -> dict[str, tuple]:
    bad = world["bad"]

    def upload(parts, path="/api/search"):
        body, headers = multipart(parts)
        return "POST", path, {"body": body, "headers": headers}

    return {
        "no q": (400, "GET", "/api/search", {}),
        "empty q": (400, "GET", "/api/search?q=", {}),
        "blank q": (400, "GET", "/api/search?q=%20%20%09", {}),
        "long q": (400, "GET", "/api/search?q=" + "a" * 1001, {}),
        "k 0": (400, "GET", "/api/search?q=red&k=0", {}),
        "k 101": (400, "GET", "/api/search?q=red&k=101", {}),
        "k text": (400, "GET", "/api/search?q=red&k=ten", {}),
        "text file": (415, *upload([("file", "notes.mp4", bad["text"].read_bytes())])),
        "truncated video": (415, *upload([("file", "cut.mp4", bad["truncated"].read_bytes())])),
        "empty file": (400, *upload([("file", "empty.mp4", b"")])),
        "no file field": (400, *upload([("k", None, b"5")])),
        "file in another field": (400, *upload([("video", "a.mp4", world["files"]["a"].read_bytes())])),
        "not multipart": (400, "POST", "/api/search", {"body": b'{"q": "red"}',
                                                        "headers": {"Content-Type": "application/json"}}),
        "unclosed multipart": (400, "POST", "/api/search", {
            "body": b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\nxx",
            "headers": {"Content-Type": "multipart/form-data; boundary=b"}}),
        "huge part header": (400, "POST", "/api/search", {
            "body": b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + b"a" * 8000 + b'.mp4"\r\n\r\n'
                    b"xx\r\n--b--\r\n", "headers": {"Content-Type": "multipart/form-data; boundary=b"}}),
        "too big": (413, *upload([("file", "big.mp4", os.urandom(LIMIT + 1))])),
        "bad k on upload": (400, *upload([("file", "a.mp4", b"x")], "/api/search?k=-3")),
    }


CASES = ["no q", "empty q", "blank q", "long q", "k 0", "k 101", "k text", "text file", "truncated video",
         "empty file", "no file field", "file in another field", "not multipart", "unclosed multipart",
         "huge part header", "too big", "bad k on upload"]


@pytest.mark.parametrize("case", CASES)
def test_bad_query_gets_its_status_and_one_line_and_the_server_goes_on(world, case):
    status, method, path, kw = bad_requests(world)[case]
    got, answer = world["server"].json(method, path, **kw)
    assert got == status, answer
    assert set(answer) == {"error"} and answer["error"].strip() and "\n" not in answer["error"]
    assert "/tmp" not in answer["error"] and str(world["uploads"]) not in answer["error"]
    assert not list(world["uploads"].iterdir())
    assert world["server"].json("GET", "/api/search?q=a%20red%20square&k=2")[0] == 200


def test_errors_name_what_was_wrong(world):
    server = world["server"]
    assert "empty" in server.json("GET", "/api/search?q=")[1]["error"]
    assert "1001 characters" in server.json("GET", "/api/search?q=" + "b" * 1001)[1]["error"]
    assert "k=0" in server.json("GET", "/api/search?q=red&k=0")[1]["error"]
    body, headers = multipart([("file", "notes.mp4", b"plain text, no media here\n" * 10)])
    error = server.json("POST", "/api/search", body=body, headers=headers)[1]["error"]
    assert error.startswith("notes.mp4: ") and "video or audio" in error
    body, headers = multipart([("file", "big.mp4", b"0" * (LIMIT + 1))])
    assert "0.3 MB" in server.json("POST", "/api/search", body=body, headers=headers)[1]["error"]


# ---------------------------------------------------------------------------------------------- uploads streamed


def raw_post(port: int, headers: str, chunks: list[bytes] = ()) -> socket.socket:
    """A POST sent by hand: ``headers`` (without the request line), then ``chunks`` in chunked encoding; the body is
    left unfinished (no last chunk), so only a server that reads as it goes can answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    for chunk in chunks:
        sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    try:
        while not (b"\r\n\r\n" in data and data.endswith(b"}")):
            block = sock.recv(65536)
            if not block:
                break
            data += block
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


FILE_HEAD = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
             b"Content-Type: video/mp4\r\n\r\n")
MULTIPART = "Content-Type: multipart/form-data; boundary=xyz\r\n"


def test_upload_is_refused_as_soon_as_it_passes_the_limit(world):
    chunks = [FILE_HEAD] + [b"\0" * 50_000] * (LIMIT // 50_000) + [b"\0"]
    sock = raw_post(world["server"].port, MULTIPART + "Transfer-Encoding: chunked\r\n", chunks)
    status, answer = read_response(sock)
    assert status == 413 and "limit" in answer["error"]
    assert not list(world["uploads"].iterdir())
    assert world["server"].json("GET", "/api/search?q=red")[0] == 200


def test_upload_announced_too_big_is_refused_before_its_body(world):
    sock = raw_post(world["server"].port, MULTIPART + f"Content-Length: {100 * LIMIT}\r\n")
    status, answer = read_response(sock)
    assert status == 413 and "limit" in answer["error"]
    assert not list(world["uploads"].iterdir())


def test_a_flood_of_small_fields_is_refused_without_being_kept(world):
    field = b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + b"n" * 20_000 + b"\r\n"
    sock = raw_post(world["server"].port, MULTIPART + "Transfer-Encoding: chunked\r\n", [field] * 4)
    status, answer = read_response(sock)
    assert status == 413 and "besides the file" in answer["error"]
    assert not list(world["uploads"].iterdir())


def test_upload_whose_client_goes_away_leaves_no_temporary_file(world):
    sock = raw_post(world["server"].port, MULTIPART + "Transfer-Encoding: chunked\r\n", [FILE_HEAD, b"\0" * 100_000])
    deadline = time.monotonic() + 10
    while not list(world["uploads"].iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p.name.startswith("vatt-serve-upload-") for p in world["uploads"].iterdir()] == [True]
    sock.close()
    while list(world["uploads"].iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not list(world["uploads"].iterdir())
    assert world["server"].json("GET", "/api/search?q=red")[0] == 200


# ---------------------------------------------------------------------------------------------- files


def test_thumbnails_are_the_stored_jpegs(world):
    server = world["server"]
    for row, jpeg in enumerate(world["thumbs"]):
        status, headers, body = server.request("GET", f"/thumb/{row}")
        if jpeg is None:
            assert status == 404 and set(json.loads(body)) == {"error"}
        else:
            assert (status, headers["content-type"], body) == (200, "image/jpeg", jpeg)
            assert body[:2] == b"\xff\xd8"
    assert server.request("GET", "/thumb/5")[0] == 404
    assert server.request("GET", "/thumb/99999999")[0] == 404


def test_media_range_request_gives_exactly_the_bytes_asked_for(world):
    server, data = world["server"], world["files"]["a"].read_bytes()
    status, headers, body = server.request("GET", "/media/0", headers={"Range": "bytes=100-1099"})
    assert (status, body) == (206, data[100:1100])
    assert headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert headers["content-type"] == "video/mp4" and headers["accept-ranges"] == "bytes"
    status, headers, body = server.request("GET", "/media/0", headers={"Range": "bytes=-500"})
    assert (status, body, headers["content-range"]) == (206, data[-500:], f"bytes {len(data) - 500}-{len(data) - 1}"
                                                                         f"/{len(data)}")
    assert server.request("GET", "/media/0")[::2] == (200, data)
    status, headers, body = server.request("GET", "/media/2")
    assert (status, headers["content-type"], body) == (200, "audio/mp4", world["files"]["c"].read_bytes())
    assert server.request("GET", "/media/1")[2] == world["files"]["b"].read_bytes()


@pytest.mark.parametrize("path", ["/media/5", "/media/6", "/media/99999999", "/media/-1", "/media/1e3",
                                  "/media/../../etc/passwd", "/media/..%2f..%2fetc%2fpasswd",
                                  "/media/0/../../../../etc/passwd", "/media//etc/passwd", "/thumb/../../etc/passwd",
                                  "/static/../service.py", "/static/..%2fservice.py", "/static/index.html"])
def test_only_recorded_sources_by_id_are_served(world, path):
    status, headers, body = world["server"].request("GET", path)
    assert status == 404 and set(json.loads(body)) == {"error"}
    assert b"root:" not in body and b"import" not in body


def test_a_source_deleted_or_replaced_since_indexing_is_not_served(world):
    server = world["server"]
    assert server.request("GET", "/media/3")[0] == 200 and server.request("GET", "/media/4")[0] == 200
    world["files"]["gone"].unlink()
    with open(world["files"]["changed"], "ab") as f:
        f.write(b"appended since the index was built")
    for source in (3, 4):
        status, _, body = server.request("GET", f"/media/{source}")
        assert status == 404 and "no media file" in json.loads(body)["error"]
    assert server.request("GET", "/media/0")[0] == 200


def test_a_foreign_host_name_is_refused(world):
    assert world["server"].request("GET", "/api/info", headers={"Host": "attacker.example"})[0] == 400
    assert world["server"].request("GET", "/api/info", headers={"Host": "localhost:8000"})[0] == 200


def test_page_and_assets_are_served_and_fetch_nothing_elsewhere(world):
    status, headers, page = world["server"].request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    for marker in (b'id="query"', b'id="search-form"', b'id="drop-zone"', b'id="results"', b'/static/app.js'):
        assert marker in page
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = world["server"].request("GET", f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind)
        assert b"http://" not in body and b"https://" not in body
    assert b"http://" not in page and b"https://" not in page


