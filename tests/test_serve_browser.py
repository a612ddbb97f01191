"""`vatt serve` in a real headless browser (Debian's chromium through Playwright): an index of three toy videos built
with `vatt index build`, the server as a subprocess, and the page used as a person would: type a caption, submit,
see the expected top clip first (found here by brute-force float64 cosine over the index's stored vectors, with the
caption embedded by this test), its thumbnail loaded, a click plays the matched segment and pauses at its end; a
file chosen in the drop zone searches S_va; an empty query shows the API's one-line error. The page fetches nothing
but the server's own URLs. Skipped without chromium or playwright, unless VATT_REQUIRE_BROWSER=1 (CI) makes that a
failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mediagen import make_audio_only, make_video
from safetensors.numpy import load_file

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CAPTIONS = ["a red square moving left", "a green circle moving right", "a blue square moving right",
            "a red circle moving left", "a green square moving left", "a blue circle moving right"]


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    for module in ("starlette", "uvicorn", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} (the serve extra) is not installed"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing and os.environ.get("VATT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VATT_REQUIRE_BROWSER=1 but {missing}")
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    """Three toy videos (one in a subfolder, one audio only), indexed by `vatt index build`."""
    from servekit import make_checkpoint

    root = tmp_path_factory.mktemp("serve-browser")
    videos = root / "videos"
    (videos / "day2").mkdir(parents=True)
    make_video(videos / "kitchen.mp4", duration=2.0, audio_rate=16000)
    make_video(videos / "day2" / "garden.mp4", duration=1.6, size=(48, 64), fps=15, audio_rate=16000)
    make_audio_only(videos / "radio.m4a", duration=1.6, rate=16000)
    ckpt = make_checkpoint(root)
    home = root / "home"
    vatt = Path(sys.executable).parent / "vatt"
    done = subprocess.run([str(vatt), "index", "build", "toys", "--videos", str(videos), "--ckpt", str(ckpt),
                           "--index-home", str(home), "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    folder = home / "toys"
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    return {"root": root, "videos": videos, "ckpt": ckpt, "home": home, "items": items,
            "stored": load_file(str(folder / "embeddings.safetensors"))}


def ranking(collection: dict, space: str, query: np.ndarray) -> list[tuple[int, float]]:
    """(item, cosine) of every row of ``space``, best first, in float64."""
    matrix = collection["stored"][f"video_{space}"].astype(np.float64)
    scores = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")
    return [(int(collection["stored"][f"rows_{space}"][i]), float(scores[i])) for i in order]


def pick_caption(collection: dict, model, tokenizer, text_len: int) -> tuple[str, int]:
    """A caption with a clear expected answer: its best window wins by the widest margin, preferring one that does
    not start at 0 s (so the player's seek is seen); returns the caption and that window."""
    ids = torch.from_numpy(tokenizer.encode(CAPTIONS, max_len=text_len)).long()
    with torch.no_grad():
        queries = model(text=ids)["text_vt"].double().numpy()
    ranked = [ranking(collection, "vt", q) for q in queries]

    def clarity(i: int) -> tuple[bool, float]:
        return collection["items"][ranked[i][0][0]]["start"] > 0, ranked[i][0][1] - ranked[i][1][1]

    best = max(range(len(CAPTIONS)), key=clarity)
    return CAPTIONS[best], ranked[best][0][0]


def expected_card(collection: dict, item: int) -> dict:
    entry = collection["items"][item]
    return {"source": Path(entry["source"]).relative_to(collection["videos"]).as_posix(),
            "time": f"{entry['start']:.1f}–{entry['end']:.1f} s", "media": f"/media/{entry['source_id']}",
            "start": entry["start"], "end": entry["end"]}


def first_card(page) -> dict:
    page.wait_for_selector("#results .result")
    card = page.locator("#results .result").first
    return {"source": card.locator(".source").inner_text(), "time": card.locator(".time").inner_text(),
            "media": card.get_attribute("data-media")}


def test_page_finds_plays_and_reports_errors(browser, collection):
    from servekit import Running

    from vattcli.api import load_model, load_tokenizer
    from vattcli.eval.query import clip_spec_from_checkpoint, encode_audio_file

    model, spec = load_model(collection["ckpt"]), clip_spec_from_checkpoint(collection["ckpt"])
    caption, top = pick_caption(collection, model, load_tokenizer(collection["ckpt"]), spec.text_len)
    audio_query = encode_audio_file(model, collection["videos"] / "radio.m4a", spec).double().numpy()
    audio_top = ranking(collection, "va", audio_query)[0][0]

    server = Running(["--index", "toys", "--index-home", str(collection["home"]), "--port", "0"],
                     {"TMPDIR": str(collection["root"])})
    try:
        assert server.url is not None, server.lines
        page = browser.new_page()
        foreign, problems = [], []
        page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(server.url) else None)
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(server.url)
        page.wait_for_function("() => document.querySelector('#info').textContent.includes('toys')")

        page.fill("#query", caption)
        page.press("#query", "Enter")
        want = expected_card(collection, top)
        assert first_card(page) == {k: want[k] for k in ("source", "time", "media")}
        page.wait_for_function("() => { const img = document.querySelector('#results .result img.thumb');"
                               " return img && img.complete && img.naturalWidth > 0; }")

        page.locator("#results .result").first.click()
        page.wait_for_function(
            "([media, start]) => { const v = document.querySelector('#results .result video');"
            " return v && new URL(v.currentSrc).pathname === media && v.currentTime >= start; }",
            arg=[want["media"], want["start"]], timeout=15_000)
        page.wait_for_function(
            "end => { const v = document.querySelector('#results .result video');"
            " return v.paused && v.currentTime >= end - 0.1; }", arg=want["end"], timeout=15_000)
        assert page.evaluate("() => document.querySelector('#results .result video').currentTime") <= want["end"] + 0.3

        page.set_input_files("#file-input", str(collection["videos"] / "radio.m4a"))
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('radio.m4a')")
        assert first_card(page) == {k: expected_card(collection, audio_top)[k] for k in ("source", "time", "media")}

        page.fill("#query", "   ")
        page.press("#query", "Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert page.inner_text("#error") == "q: the text query is empty; type a few words describing the clip"
        assert foreign == []
        assert sorted(problems) == [f"400 {server.url}api/search?q=+++&k=12",  # the refused empty query only
                                    "Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    finally:
        code, lines = server.stop(signal.SIGINT)
    assert code == 130 and lines[-1] == "stopped by SIGINT", lines
    assert not [p.name for p in collection["root"].iterdir() if p.name.startswith("vatt-serve-upload-")]

