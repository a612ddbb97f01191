"""Data pipeline throughput: preprocessed shards against decoding the original long videos with seeking.

Writes a few synthetic "long web videos" (640x360, 25/30 fps H.264 with a keyframe every ~5 s, AAC 44.1 kHz
stereo) and a HowTo100M-style ``caption.json`` (a caption every ~4 s), preprocesses them with the real ``howto100m``
adapter (``run_preprocess``, one worker: 10 fps, short side 256, 48 kHz FLAC) and reports its speed in multiples of
real time per core. Then times, in one process and alternating rounds, training-ready samples (32 frames at 10 fps,
Inception crop to 224 px with flip and colour jitter, 3.2 s of 48 kHz audio with noise, 5 captions as (5, 16) ids):

  (a) shards: ``ShardDataset`` over the shards with ``PretrainDecoder(train=True)``;
  (b) original: the same caption windows cut from the original MP4 with ``decode_clip`` (seek, 10 fps, short side
      256 so the transforms see the same frame size as from shards, AAC resampled to 48 kHz), then the same steps.

Both are timed twice: finished on the CPU (``data.augment_on=workers``: float clips in [-1, 1], colour jitter done)
and raw (``augment_on=device``, the default when training on a GPU: uint8 clips and their colour rows, which
``vattcli.data.color.finish_video`` completes on the GPU; ``bench/bench_finish.py`` times that part).

Everything after the media is written runs pinned to ONE CPU (``os.sched_setaffinity``) with
``torch.set_num_threads(1)``: ``open_input`` asks FFmpeg for automatic threading, which sizes its pool from the CPU
affinity, so decoding and the x264 encoder of preprocessing each get one thread; the figures are per core. The target
(16 cores feeding one GPU at 500 clips/s) is ~30 clips/s per core from shards and >= 3x the original's rate.

    python bench/bench_data.py                                   # 4 videos of 60 s, 3 rounds of 24 clips
    python bench/bench_data.py --videos 8 --seconds 90 --rounds 5 --clips 40 --out-json data_bench.json
    python bench/bench_data.py --videos 16 --seconds 40 --loader-workers 8,16   # also DataLoaders over all cores

The videos are written with PyAV directly: ``write_av`` makes a keyframe every second and mono audio, unlike a web
download.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from vattcli.data.adapters.howto100m import HowTo100M
from vattcli.data.media import decode_clip
from vattcli.data.media_write import video_codec
from vattcli.data.pipeline import ClipSpec, PretrainDecoder, sample_generator
from vattcli.data.preprocess import Settings, run_preprocess
from vattcli.data.reader import ShardDataset, iter_tar_samples
from vattcli.data.text import TextTokenizer, train_tokenizer
from vattcli.data.transforms import add_gaussian_noise
from vattcli.data.folders import shard_urls

WIDTH, HEIGHT = 640, 360
SOURCE_RATE = 44_100
KEYFRAME_S = 5.0  # web uploads: a keyframe every few seconds
SHORT_SIDE = 256  # what preprocessing stores (Settings default)
WORDS = ("cut the onion into small pieces then add salt and pepper to the pan stir gently for two minutes "
         "now take the wrench loosen the bolt remove the wheel and check the brake pads before you fold the paper "
         "along the edge press firmly glue it here wait until it dries paint the wood with a thin coat").split()


# ------------------------------------------------------------------------------------------- synthetic media


def _plane(rng: np.random.Generator, height: int, width: int, grain: float) -> np.ndarray:
    """A smooth random field with fine grain: detail an encoder must spend bits on, like real footage."""
    coarse = rng.uniform(30, 225, size=(height // 20 + 2, width // 20 + 2))
    ys, xs = np.linspace(0, coarse.shape[0] - 1.001, height), np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    smooth = ((c[y0][:, x0] * (1 - fx) + c[y0][:, x0 + 1] * fx) * (1 - fy)
              + (c[y0 + 1][:, x0] * (1 - fx) + c[y0 + 1][:, x0 + 1] * fx) * fy)
    return np.clip(smooth + rng.normal(0, grain, size=smooth.shape), 0, 249).astype(np.uint8)  # + grain < 256


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V planes (4:2:0) of a scene 160 px wider than the frame, to pan over."""
    width = WIDTH + 160
    half = (HEIGHT // 2, width // 2)
    return _plane(rng, HEIGHT, width, 12), _plane(rng, *half, 4), _plane(rng, *half, 4)


def _frame(scene: tuple[np.ndarray, ...], grain: np.ndarray, t: float) -> np.ndarray:
    """A yuv420p frame, (H * 3/2, W): the scene panned slowly, a moving block (a hand, a tool), sensor noise."""
    y, u, v = scene
    pan = 2 * int((y.shape[1] - WIDTH) / 2 * (0.5 + 0.5 * np.sin(2 * np.pi * t / 11.0)))
    bx = 2 * int((WIDTH - 96) / 2 * (0.5 + 0.5 * np.sin(2 * np.pi * t / 3.7)))
    by = 2 * int((HEIGHT - 96) / 2 * (0.5 + 0.5 * np.cos(2 * np.pi * t / 5.3)))
    luma = y[:, pan : pan + WIDTH] + grain
    luma[by : by + 96, bx : bx + 96] = int(200 * t) % 200 + 30
    chroma = [p[:, pan // 2 : (pan + WIDTH) // 2].copy() for p in (u, v)]
    chroma[0][by // 2 : (by + 96) // 2, bx // 2 : (bx + 96) // 2] = 90
    chroma[1][by // 2 : (by + 96) // 2, bx // 2 : (bx + 96) // 2] = 170
    return np.concatenate([luma, chroma[0].reshape(-1, WIDTH), chroma[1].reshape(-1, WIDTH)])


def _audio_second(rng: np.random.Generator, k: int) -> np.ndarray:
    """One second of stereo (2, 44100): syllable-rate modulated noise (speech-like) over two music tones."""
    t = k + np.arange(SOURCE_RATE) / SOURCE_RATE
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + np.sin(2 * np.pi * 0.3 * t)), 0, None) ** 2
    voice = 0.25 * envelope * np.convolve(rng.normal(0, 1, SOURCE_RATE + 7), np.ones(8) / 8, "valid")
    music = 0.08 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.sin(2 * np.pi * 330.5 * t)
    return np.stack([voice + music, 0.8 * voice + music]).astype(np.float32)


def write_web_video(path: Path, seconds: int, fps: int, seed: int) -> None:
    """H.264 (keyframe every KEYFRAME_S, scene cuts every 20 s) + AAC 44.1 kHz stereo, interleaved per second."""
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng) for _ in range(3)]
    grains = [rng.integers(0, 6, size=(HEIGHT, WIDTH), dtype=np.uint8) for _ in range(7)]
    codec = video_codec()
    with av.open(str(path), "w", format="mp4") as out:
        options = {"preset": "veryfast", "crf": "23"} if codec == "libx264" else {}
        vstream = out.add_stream(codec, rate=Fraction(fps), options=options)
        vstream.width, vstream.height, vstream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vstream.codec_context.gop_size = round(KEYFRAME_S * fps)
        if codec != "libx264":
            vstream.codec_context.bit_rate = 1_000_000
        astream = out.add_stream("aac", rate=SOURCE_RATE, layout="stereo")
        for k in range(seconds):
            for i in range(k * fps, (k + 1) * fps):
                yuv = _frame(scenes[(i // (20 * fps)) % len(scenes)], grains[i % len(grains)], i / fps)
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                frame.pts = i
                out.mux(vstream.encode(frame))
            chunk = av.AudioFrame.from_ndarray(_audio_second(rng, k), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts, chunk.time_base = SOURCE_RATE, k * SOURCE_RATE, Fraction(1, SOURCE_RATE)
            out.mux(astream.encode(chunk))
        out.mux(vstream.encode())
        out.mux(astream.encode())


def keyframe_interval(path: Path) -> float:
    """Mean seconds between video keyframes, from the packets (demux only)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys = [p for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
        times = [float(p.pts * stream.time_base) for p in keys]
    return (times[-1] - times[0]) / max(1, len(times) - 1)


def caption_entry(rng: np.random.Generator, seconds: int) -> dict[str, list]:
    """HowTo100M ASR-style captions: one every ~4 s, 2-4.5 s long, 4-9 words."""
    starts = [round(float(s), 2) for s in np.arange(0.0, seconds - 4.5, 4.0) + rng.uniform(0, 0.8)]
    ends = [round(s + float(rng.uniform(2.0, 4.5)), 2) for s in starts]
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 10)))) for _ in starts]
    return {"start": starts, "end": ends, "text": texts}


def make_dataset(root: Path, videos: int, seconds: int) -> dict[str, Any]:
    """Videos <id>.mp4 and caption.json under root; returns what they look like."""
    rng = np.random.default_rng(0)
    captions, fps, interval, size = {}, [], [], 0
    for v in range(videos):
        video_id = f"web{v:03d}"
        rate = (30, 25)[v % 2]
        path = root / f"{video_id}.mp4"
        write_web_video(path, seconds, rate, seed=v)
        captions[video_id] = caption_entry(rng, seconds)
        fps.append(rate)
        interval.append(keyframe_interval(path))
        size += path.stat().st_size
    (root / "caption.json").write_text(json.dumps(captions))
    return {"captions": captions, "fps": fps, "keyframe_interval_s": statistics.mean(interval),
            "bitrate_mbps": size * 8 / (videos * seconds) / 1e6}


def make_tokenizer(captions: dict[str, dict[str, list]], folder: Path) -> TextTokenizer:
    """A SentencePiece model of the bench captions; their small corpus caps the vocabulary (its warning is muted)."""
    texts = [text for entry in captions.values() for text in entry["text"]]
    logging.getLogger("vattcli.data.text").setLevel(logging.ERROR)
    return TextTokenizer.load(train_tokenizer(texts, folder / "bench_sp", vocab_size=96))


# ------------------------------------------------------------------------------------------- one core


def pin_to_one_cpu() -> int | None:
    """Run this process, and every thread it starts from now on, on one CPU; None where the OS cannot."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def ffmpeg_decode_threads(path: Path) -> int:
    """The thread count FFmpeg picks for a video decoder opened as ``open_input`` opens it (thread_type AUTO)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next(container.decode(stream))
        return int(stream.codec_context.thread_count)


def preprocess(root: Path, out: Path, source_seconds: float, max_samples: int) -> dict[str, Any]:
    """run_preprocess with the howto100m adapter, one worker; speeds per core, of source and of output media."""
    started = time.perf_counter()
    summary = run_preprocess(HowTo100M(), root, out, "train", settings=Settings(fps=HowTo100M.fps), workers=1,
                             max_samples=max_samples, console=Console(file=io.StringIO()))
    wall = time.perf_counter() - started
    shard_bytes = sum(p.stat().st_size for p in (out / "train").glob("*.tar"))
    return {"windows": summary["written"], "skipped": summary["skipped"], "preprocess_wall_s": wall,
            "preprocess_x_realtime_per_core": source_seconds / wall,
            "preprocess_output_x_realtime_per_core": summary["realtime_per_core"],
            "output_hours": summary["hours"], "shard_mb": shard_bytes / 1e6}


# ------------------------------------------------------------------------------------------- clips


class Phases:
    """Seconds spent in named steps, summed over the clips timed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, name: str, started: float) -> None:
        self.seconds[name] += time.perf_counter() - started


class TimedDecoder(PretrainDecoder):
    """PretrainDecoder with its media decoding and video augmentation timed; what it returns is unchanged."""

    def __init__(self, spec: ClipSpec, tokenizer: TextTokenizer) -> None:
        super().__init__(spec, tokenizer, train=True)
        self.phases = Phases()

    def clip(self, sample: dict[str, Any], gen: torch.Generator, start: float | None = None):
        started = time.perf_counter()
        clip = super().clip(sample, gen, start)
        self.phases.add("decode", started)
        return clip

    def video_fields(self, frames: np.ndarray, gen: torch.Generator) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        video = super().video_fields(frames, gen)
        self.phases.add("video_transform", started)
        return video


def source_windows(urls: list[str], root: Path) -> list[dict[str, Any]]:
    """Every shard sample's window on its original video, in shard order (the order ShardDataset reads)."""
    windows = []
    for url in urls:
        for sample in iter_tar_samples(url, Counter()):
            meta = sample["json"]
            windows.append({"key": sample["__key__"], "path": root / meta["source"], "start": float(meta["start"]),
                            "duration": float(meta["duration"]), "meta": meta})
    return windows


def original_sample(decoder: TimedDecoder, window: dict[str, Any]) -> dict[str, Any]:
    """PretrainDecoder.__call__'s steps, the clip cut from the original video: same random draws, same outputs."""
    spec = decoder.spec
    gen = sample_generator(decoder.seed, {"__key__": window["key"]})
    slack = max(0.0, window["duration"] - spec.seconds)
    offset = float(torch.rand((), generator=gen)) * slack if slack > 0 else 0.0
    started = time.perf_counter()
    clip = decode_clip(window["path"], window["start"] + offset, spec.frames, spec.fps, audio_rate=spec.audio_rate,
                       short_side=SHORT_SIDE, name=str(window["path"]))
    decoder.phases.add("decode", started)
    audio = torch.from_numpy(clip.audio)
    if spec.audio_noise > 0:
        audio = add_gaussian_noise(audio, spec.audio_noise, generator=gen)
    text, has_text = decoder.text_tensor(window["meta"])
    return {**decoder.video_fields(clip.frames, gen), "audio": audio.float(), "text": text,
            "has_text": has_text, "has_audio": clip.has_audio}


def check_sample(item: dict[str, Any], spec: ClipSpec, what: str) -> None:
    raw = item["video"].dtype == torch.uint8  # (T, H, W, 3) frames for finish_video on the GPU
    video = (spec.frames, spec.size, spec.size, 3) if raw else (3, spec.frames, spec.size, spec.size)
    expected = {"video": video, "audio": (spec.audio_samples,),
                "text": (spec.num_captions, spec.text_len)}
    shapes = {k: tuple(item[k].shape) for k in expected}
    if shapes != expected or not (item["has_text"] and item["has_audio"]):
        raise RuntimeError(f"{what}: expected shapes {expected} with text and audio, got {shapes}")


def clips_per_second(next_clip, clips: int) -> tuple[float, float]:
    started = time.perf_counter()
    for _ in range(clips):
        next_clip()
    wall = time.perf_counter() - started
    return clips / wall, wall


def measure(urls: list[str], root: Path, tokenizer: TextTokenizer, rounds: int, clips: int) -> dict[str, Any]:
    """Alternating rounds (the order reversed every round) of `clips` samples from shards and from the originals,
    each finished on the CPU (``augment_on=workers``: float clips in [-1, 1]) and raw (``augment_on=device``: uint8
    clips and colour rows, which ``finish_video`` completes on the GPU)."""
    specs = {"": ClipSpec(), "_raw": ClipSpec(raw_video=True)}
    decoders, sources = {}, {}
    for suffix, spec in specs.items():
        shard_decoder, original_decoder = TimedDecoder(spec, tokenizer), TimedDecoder(spec, tokenizer)
        decoders[f"shards{suffix}"], decoders[f"original{suffix}"] = shard_decoder, original_decoder
        shard_items = iter(ShardDataset(urls, decode=shard_decoder))  # endless, in shard order
        windows = itertools.cycle(source_windows(urls, root))
        sources[f"shards{suffix}"] = lambda items=shard_items: next(items)
        sources[f"original{suffix}"] = lambda d=original_decoder, w=windows: original_sample(d, next(w))
    for name, next_clip in sources.items():  # warm-up, and the outputs are what training needs
        item = next_clip()
        check_sample(item, ClipSpec(), name)
        if (item["video"].dtype == torch.uint8) != name.endswith("_raw"):
            raise RuntimeError(f"{name}: unexpected video dtype {item['video'].dtype}")
        decoders[name].phases = Phases()
    rates: dict[str, list[float]] = {name: [] for name in sources}
    walls: dict[str, float] = defaultdict(float)
    order = list(sources)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            rate, wall = clips_per_second(sources[name], clips)
            rates[name].append(rate)
            walls[name] += wall
    result: dict[str, Any] = {}
    for name in sources:
        phases = decoders[name].phases.seconds
        ms = {k: 1000 * v / (rounds * clips) for k, v in phases.items()}
        ms["other"] = 1000 * walls[name] / (rounds * clips) - sum(ms.values())
        result[f"{name}_clips_per_s"] = statistics.median(rates[name])
        result[f"{name}_rounds_clips_per_s"] = [round(x, 2) for x in rates[name]]
        result[f"{name}_ms_per_clip"] = {k: round(v, 1) for k, v in ms.items()}
    for suffix in specs:
        shards, original = f"shards{suffix}", f"original{suffix}"
        result[f"ratio{suffix}"] = result[f"{shards}_clips_per_s"] / result[f"{original}_clips_per_s"]
        result[f"round_ratios{suffix}"] = [round(a / b, 2) for a, b in zip(rates[shards], rates[original])]
    result["decode_ratio"] = result["original_ms_per_clip"]["decode"] / result["shards_ms_per_clip"]["decode"]
    return result


def loader_throughput(urls: list[str], tokenizer: TextTokenizer, workers: int, seconds: float,
                      kinds: tuple[str, ...] = ("raw", "cpu_finished")) -> dict[str, Any]:
    """Clips/s out of a DataLoader with ``workers`` processes, raw and finished on the CPU, batches of 32, after the
    workers' first batches; no training step consumes them."""
    result: dict[str, Any] = {"loader_workers": workers, "loader_shards": len(urls)}
    for name, raw in (("raw", True), ("cpu_finished", False)):
        if name not in kinds:
            continue
        dataset = ShardDataset(urls, decode=PretrainDecoder(ClipSpec(raw_video=raw), tokenizer, train=True))
        loader = DataLoader(dataset, batch_size=32, num_workers=workers, prefetch_factor=2)
        batches = iter(loader)
        for _ in range(workers):  # every worker has started and delivered once
            next(batches)
        clips, started, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            clips += len(next(batches)["video"])
        wall = time.perf_counter() - started
        result[f"loader_{name}_main_process_cpu_share"] = (time.process_time() - cpu0) / wall
        del batches
        result[f"loader_{name}_clips_per_s"] = clips / wall
        result[f"loader_{name}_clips_per_s_per_worker"] = clips / wall / workers
    return result


# ------------------------------------------------------------------------------------------- report


def summary_lines(r: dict[str, Any]) -> list[str]:
    def line(label: str, name: str) -> str:
        ms = r[f"{name}_ms_per_clip"]
        return (f"{label}: {r[f'{name}_clips_per_s']:.2f} clips/s per core (rounds {r[f'{name}_rounds_clips_per_s']}); "
                f"ms/clip: decode {ms['decode']}, video transform {ms['video_transform']}, rest {ms['other']}")

    return [
        f"source: {r['videos']} videos x {r['seconds_per_video']} s, {r['source_size']} at {r['source_fps']} fps, "
        f"keyframe every {r['source_keyframe_interval_s']:.1f} s, {r['source_bitrate_mbps']:.2f} Mb/s, AAC 44.1 kHz stereo",
        f"preprocess (1 worker, CPU {r['cpu']}): {r['windows']} windows in {r['preprocess_wall_s']:.1f} s = "
        f"{r['preprocess_x_realtime_per_core']:.2f}x real time per core of source "
        f"({r['preprocess_output_x_realtime_per_core']:.2f}x of output, {r['output_hours']:.4f} h written, "
        f"{r['shard_mb']:.1f} MB of shards)",
        "finished on the CPU (augment_on=workers: float clips in [-1, 1]):",
        line("  (a) shards  ", "shards"),
        line("  (b) original", "original"),
        f"  shards / original: {r['ratio']:.2f}x (per round {r['round_ratios']}; decoding alone {r['decode_ratio']:.2f}x)",
        "raw, colour jitter on the GPU (augment_on=device, the default on CUDA: uint8 clips + colour rows):",
        line("  (a) shards  ", "shards_raw"),
        line("  (b) original", "original_raw"),
        f"  shards / original: {r['ratio_raw']:.2f}x (per round {r['round_ratios_raw']})",
        "target: >= 3x, and ~30 clips/s per core from shards (480 clips/s from 16 cores)",
        f"one core: torch threads {r['torch_threads']}, FFmpeg decoder threads {r['ffmpeg_decode_threads']}",
    ] + [loader_line(x) for x in r.get("loaders", [])]


def loader_line(x: dict[str, Any]) -> str:
    parts = [f"{name.replace('_', ' ')} {x[f'loader_{name}_clips_per_s']:.0f} clips/s "
             f"({x[f'loader_{name}_clips_per_s_per_worker']:.1f} per worker)"
             for name in ("raw", "cpu_finished") if f"loader_{name}_clips_per_s" in x]
    return f"DataLoader, {x['loader_workers']} workers over {x['loader_shards']} shards, batches of 32: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4, help="synthetic long videos to write")
    parser.add_argument("--seconds", type=int, default=60, help="length of each video (s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--clips", type=int, default=24, help="clips per round and per source")
    parser.add_argument("--out-json", default=None, help="also write the result to this file")
    parser.add_argument("--loader-workers", default="", help="also time a DataLoader with these worker counts, comma "
                        "separated, e.g. 8,16 (the last also finished on the CPU); the shards are cut to 8 samples "
                        "each so every worker reads")
    parser.add_argument("--loader-seconds", type=float, default=20.0, help="timed seconds per DataLoader run")
    parser.add_argument("--source-size", default="640x360", help="WxH of the synthetic source videos (web downloads "
                        "range from 360p to 1080p; decoding cost grows with it)")
    args = parser.parse_args()
    global WIDTH, HEIGHT
    WIDTH, HEIGHT = (int(v) for v in args.source_size.lower().split("x"))
    if args.videos < 1 or args.seconds < 10 or args.rounds < 1 or args.clips < 1:
        parser.error("need --videos >= 1, --seconds >= 10, --rounds >= 1, --clips >= 1")

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="vatt-bench-data-") as tmp:
        root, out = Path(tmp) / "raw", Path(tmp) / "shards"
        root.mkdir()
        media = make_dataset(root, args.videos, args.seconds)
        tokenizer = make_tokenizer(media["captions"], Path(tmp))
        all_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        cpu = pin_to_one_cpu()
        result: dict[str, Any] = {
            "videos": args.videos, "source_size": f"{WIDTH}x{HEIGHT}", "seconds_per_video": args.seconds,
            "source_fps": sorted(set(media["fps"])),
            "source_keyframe_interval_s": media["keyframe_interval_s"], "source_bitrate_mbps": media["bitrate_mbps"],
            "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "ffmpeg_decode_threads": ffmpeg_decode_threads(next(root.glob("*.mp4"))),
            "rounds": args.rounds, "clips": args.clips,
        }
        counts = [int(n) for n in args.loader_workers.split(",") if n.strip()]
        result |= preprocess(root, out, args.videos * args.seconds, 8 if counts else 1000)
        result |= measure(shard_urls(out / "train"), root, tokenizer, args.rounds, args.clips)
        if all_cpus is not None:
            os.sched_setaffinity(0, all_cpus)
        result["loaders"] = [
            loader_throughput(shard_urls(out / "train"), tokenizer, n, args.loader_seconds,
                              ("raw", "cpu_finished") if i == len(counts) - 1 else ("raw",))
            for i, n in enumerate(counts)]
    print(json.dumps(result))
    print("\n".join(summary_lines(result)))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
