"""Latency of one text query against a 100k-clip retrieval index on CPU, once the model is loaded.

A query is: tokenise -> text tower -> g_t->vt -> L2-normalise (``encode_text``) -> exact search (one matmul and a
top-k over every item, ``RetrievalIndex.search``). Reported over ``--queries`` captions after a warm-up, as p50/p90
milliseconds for the whole query and for its two parts. The index holds random unit vectors (the search cost does
not depend on their values); the model is randomly initialised at the size ``--model`` names. For a modality-specific
model only the text tower matters, so the video and audio towers are built at a token size to save memory and time.

    python bench/bench_retrieve.py                      # vatt-tiny
    python bench/bench_retrieve.py --model vatt-bbs     # the Small T5 text tower of VATT-BBS (also MBS, LBS)
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vattcli.api import build_model, model_config
from vattcli.core.model import BackboneSpec
from vattcli.data.text import TextTokenizer, train_tokenizer
from vattcli.retrieval.index import RetrievalIndex
from vattcli.eval.query import encode_text

WORDS = {"colour": ["red", "green", "blue", "yellow", "purple", "orange"],
         "shape": ["square", "circle", "triangle", "star", "cross"],
         "motion": ["left", "right", "up", "down", "in a circle"]}
_TOKEN = BackboneSpec(1, 64, 128, 4, 16)


def captions() -> list[str]:
    return [f"a {c} {s} moving {m} while the sound rises" for c, s, m in itertools.product(*WORDS.values())]


def random_index(n: int, d_vt: int, d_va: int, seed: int = 0) -> RetrievalIndex:
    gen = torch.Generator().manual_seed(seed)
    vt = F.normalize(torch.randn(n, d_vt, generator=gen), dim=1)
    va = F.normalize(torch.randn(n, d_va, generator=gen), dim=1)
    items = [{"key": f"clip{i:06d}", "source": f"videos/{i // 20:05d}.mp4", "start": float(i % 20) * 3.2,
              "end": float(i % 20) * 3.2 + 3.2, "caption": "a clip"} for i in range(n)]
    info = {"num_items": n, "dims": {"vt": d_vt, "va": d_va}, "weights_hash": "", "checkpoint": ""}
    return RetrievalIndex(Path("bench"), info, items, matrices={"vt": vt, "va": va})


def percentiles(times_s: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times_s)
    return {"p50": round(statistics.median(ms), 3), "p90": round(ms[int(0.9 * (len(ms) - 1))], 3),
            "mean": round(statistics.fmean(ms), 3)}


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vatt-tiny", help="model recipe name (vatt-tiny, vatt-bbs, ...)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config(args.model, droptoken_rate=0.0)
    if not cfg.shared:
        cfg = cfg.replace(video=_TOKEN, audio=_TOKEN)
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = TextTokenizer.load(train_tokenizer(captions() * 3, Path(tmp) / "sp", vocab_size=128))
    index = random_index(args.items, cfg.d_vt, cfg.d_va)
    texts = captions()
    queries = [texts[(7 * i) % len(texts)] for i in range(args.queries)]

    def full(i: int) -> None:
        index.search(encode_text(model, tokenizer, [queries[i]])[0], top_k=args.top_k)

    timed(full, args.warmup)
    embedded = encode_text(model, tokenizer, queries)
    result = {
        "model": cfg.name, "text_tower": f"{cfg.text.num_layers} layers x {cfg.text.d_model}",
        "text_tower_params_m": round(model.num_params(model.text) / 1e6, 2), "items": args.items,
        "dim": cfg.d_vt, "queries": args.queries, "top_k": args.top_k, "threads": torch.get_num_threads(),
        "full_ms": percentiles(timed(full, args.queries)),
        "encode_ms": percentiles(timed(lambda i: encode_text(model, tokenizer, [queries[i]]), args.queries)),
        "search_ms": percentiles(timed(lambda i: index.search(embedded[i], top_k=args.top_k), args.queries)),
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
