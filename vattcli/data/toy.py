"""The toy dataset: procedurally drawn clips whose picture, sound and caption name the same attributes.

Every toy clip shows ONE shape (circle, square, triangle) of one colour (red, green, blue, yellow) moving (left,
right, up, down) across a dark, slightly noisy 96x96 background. Its mono soundtrack follows the same attributes:

- pitch from the colour: red 440 Hz, green 660 Hz, blue 880 Hz, yellow 330 Hz;
- rhythm from the shape: circle a steady tone, square 2 pulses a second, triangle 4 (raised-cosine gates);
- shape of the sound from the motion: up a rising glide (pitch x 0.96 -> 1.04), down a falling one, right an
  amplitude ramp up (0.3 -> 1), left a ramp down;

and its caption names them ("a red circle moving left", a few wordings chosen by the seed). Three sets are written
as real MP4 files (H.264 + AAC at 16 kHz) with official-style annotation files under ``out/raw/``, then read by the
real adapters through ``run_preprocess`` into ``out/shards/<dataset>/<split>/``:

- ``howto100m``: long videos at 10 fps of back-to-back segments, each a different attribute combination with its own
  caption in ``caption.json``. Segments last 1.6-2.0 s and the adapter's windows are at least 0.8 s (the demo's
  clip length, ``CLIP_SECONDS``), so each caption's window shows only its own segment, and the shape crosses half
  the frame within a segment: fast enough for 4-frame tubelets to see its direction;
- ``kinetics``: 2 s clips at 25 fps in ``train.csv`` / ``validate.csv`` (Kinetics columns), labelled with the 12
  colour-shape classes ``LABELS`` ("blue_circle", ..., sorted as the adapter indexes them); the motion varies within
  a class (by default 3 training clips and 1 validation clip per class, 48 in all);
- ``youcook2``: videos at 25 fps whose segments are all in the ``validation`` subset: the retrieval pool, one
  segment per colour x shape x motion combination with the default sizes (48, chance R@1 = 1/48).

All sets are stored at 10 fps with the short side at 64 px and 16 kHz audio (``TOY_SETTINGS``), unlike the real
fine-tuning sets (25 fps): the demo model reads 8-frame 64x64 clips at 10 fps from every set with stride 1.
Same seed => byte-identical annotation files and identical frames and audio.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vattcli.errors import ConfigError

SIZE = 96  # raw frame side (px)
AUDIO_RATE = 16_000
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (230, 210, 40)}
PITCH = {"red": 440.0, "green": 660.0, "blue": 880.0, "yellow": 330.0}  # Hz
PULSE_RATE = {"circle": 0.0, "square": 2.0, "triangle": 4.0}  # pulses per second (0: steady)
MOTIONS = ("left", "right", "up", "down")
LABELS = tuple(sorted(f"{c}_{s}" for c in COLOURS for s in PULSE_RATE))  # 12 classes, in the adapter's order
TEMPLATES = ("a {c} {s} moving {m}", "{c} {s} moves {m}", "a {c} {s} going {p}", "the {c} {s} slides {p}")
PHRASES = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}
SEGMENT_SECONDS = (1.6, 1.8, 2.0)
CLIP_SECONDS = 0.8  # what the demo model reads (8 frames at 10 fps): the howto caption windows' minimum length
KINETICS_SECONDS = 2
GLIDE = 0.04  # relative pitch change over a clip for up/down


@dataclass(frozen=True)
class Combo:
    """One attribute combination: what a clip shows, sounds like and is captioned with."""

    colour: str
    shape: str
    motion: str

    @property
    def label(self) -> str:
        return f"{self.colour}_{self.shape}"

    def caption(self, template: int) -> str:
        return TEMPLATES[template % len(TEMPLATES)].format(c=self.colour, s=self.shape, m=self.motion,
                                                           p=PHRASES[self.motion])


ALL_COMBOS = tuple(Combo(c, s, m) for c in COLOURS for s in PULSE_RATE for m in MOTIONS)


@dataclass(frozen=True)
class VideoSpec:
    """A toy video to write: back-to-back segments (combination, seconds) at ``fps``; ``seed`` fixes its noise."""

    path: Path
    fps: float
    segments: tuple[tuple[Combo, float], ...]
    seed: tuple[int, ...]


def shape_mask(shape: str, cx: float, cy: float, radius: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred at (cx, cy) (pixels; x to the right, y down)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = 0.85 * radius
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # apex up, base 2r wide at the bottom
        return (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def draw_segment(combo: Combo, n_frames: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """uint8 (T, size, size, 3) frames: the shape crosses the middle half of the frame in its direction."""
    radius = 0.15 * size
    across = size * rng.uniform(0.35, 0.65)  # the coordinate that does not move
    noise = rng.integers(-6, 7, size=(n_frames, size, size, 1), dtype=np.int16)
    frames = np.clip(np.array([18, 18, 26], np.int16) + noise, 0, 255).astype(np.uint8)
    colour = np.array(COLOURS[combo.colour], np.uint8)
    for i in range(n_frames):
        progress = (i + 0.5) / n_frames
        along = size * (0.25 + 0.5 * (progress if combo.motion in ("right", "down") else 1 - progress))
        cx, cy = (along, across) if combo.motion in ("left", "right") else (across, along)
        frames[i][shape_mask(combo.shape, cx, cy, radius, size)] = colour
    return frames


def soundtrack(combo: Combo, seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """float32 mono audio of one segment: colour -> pitch, shape -> pulse rate, motion -> glide or loudness ramp."""
    t = np.arange(round(seconds * rate)) / rate
    u = t / seconds
    glide = {"up": 2 * u - 1, "down": 1 - 2 * u}.get(combo.motion, np.zeros_like(u))
    phase = 2 * np.pi * np.cumsum(PITCH[combo.colour] * (1 + GLIDE * glide)) / rate
    pulses = PULSE_RATE[combo.shape]
    gate = 0.5 * (1 - np.cos(2 * np.pi * pulses * t)) if pulses else np.ones_like(t)
    ramp = {"right": 0.3 + 0.7 * u, "left": 1.0 - 0.7 * u}.get(combo.motion, np.ones_like(u))
    return (0.5 * np.sin(phase) * gate * ramp).astype(np.float32)


def render(spec: VideoSpec) -> tuple[np.ndarray, np.ndarray]:
    """The frames and audio of a toy video (deterministic from ``spec.seed``)."""
    rng = np.random.default_rng(list(spec.seed))
    frames = [draw_segment(combo, round(seconds * spec.fps), rng) for combo, seconds in spec.segments]
    audio = [soundtrack(combo, seconds) for combo, seconds in spec.segments]
    return np.concatenate(frames), np.concatenate(audio)


def write_video(spec: VideoSpec) -> None:
    from vattcli.data.media_write import write_av

    frames, audio = render(spec)
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    write_av(spec.path, frames, spec.fps, audio, AUDIO_RATE)


# ------------------------------------------------------------------------------- annotation files


def _combos(rng: np.random.Generator, n: int) -> list[Combo]:
    """n combinations: every one of the 48 once per round, each round in a seeded order."""
    out: list[Combo] = []
    while len(out) < n:
        out += [ALL_COMBOS[i] for i in rng.permutation(len(ALL_COMBOS))]
    return out[:n]


def _segments(rng: np.random.Generator, combos: list[Combo]) -> list[tuple[Combo, float]]:
    return [(c, float(rng.choice(SEGMENT_SECONDS))) for c in combos]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")


def howto_set(raw: Path, seed: int, videos: int, segments: int) -> tuple[list[VideoSpec], list[str]]:
    """Write ``caption.json``; return the videos to draw and every caption in file order."""
    rng = np.random.default_rng([seed, 1])
    combos = _combos(rng, videos * segments)
    specs, data, captions = [], {}, []
    for v in range(videos):
        video_id = f"toyhowto{v:03d}"
        parts = _segments(rng, combos[v * segments:(v + 1) * segments])
        ends = np.round(np.cumsum([s for _, s in parts]), 6)
        texts = [combo.caption(int(rng.integers(len(TEMPLATES)))) for combo, _ in parts]
        data[video_id] = {"start": [round(e - s, 6) for e, (_, s) in zip(ends, parts)], "end": ends.tolist(),
                          "text": texts}
        captions += texts
        specs.append(VideoSpec(raw / f"{video_id}.mp4", 10.0, tuple(parts), (seed, 1, v)))
    _write_text(raw / "caption.json", json.dumps(data, indent=1) + "\n")
    return specs, captions


def kinetics_set(raw: Path, seed: int, per_class: dict[str, int]) -> tuple[list[VideoSpec], dict[str, int]]:
    """Write ``train.csv`` / ``validate.csv`` (label, youtube_id, time_start, time_end, split); 2 s clips.

    Within a class the motions follow on from a seeded first one across train then val, so with 3 training clips
    a class's validation clip moves in the direction its training clips did not.
    """
    rng = np.random.default_rng([seed, 2])
    first = {label: int(rng.integers(len(MOTIONS))) for label in LABELS}
    specs, counts, n = [], {}, 0
    for split, csv_name, offset in (("train", "train.csv", 0), ("val", "validate.csv", per_class["train"])):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for label in LABELS:
            colour, shape = label.split("_")
            for j in range(per_class[split]):
                combo = Combo(colour, shape, MOTIONS[(first[label] + offset + j) % len(MOTIONS)])
                video_id, start = f"toykin{n:05d}", int(rng.integers(0, 300))
                end = start + KINETICS_SECONDS
                writer.writerow([label, video_id, start, end, split])
                path = raw / split / label / f"{video_id}_{start:06d}_{end:06d}.mp4"
                specs.append(VideoSpec(path, 25.0, ((combo, float(KINETICS_SECONDS)),), (seed, 2, n)))
                n += 1
        _write_text(raw / csv_name, buf.getvalue())
        counts[split] = per_class[split] * len(LABELS)
    return specs, counts


def youcook2_set(raw: Path, seed: int, videos: int, segments: int) -> tuple[list[VideoSpec], int]:
    """Write ``youcookii_annotations_trainval.json`` with every video in the validation subset."""
    rng = np.random.default_rng([seed, 3])
    combos = _combos(rng, videos * segments)
    specs, database = [], {}
    for v in range(videos):
        video_id, recipe = f"toyyc{v:06d}", str(101 + v % 3)
        parts = _segments(rng, combos[v * segments:(v + 1) * segments])
        ends = np.round(np.cumsum([s for _, s in parts]), 6).tolist()
        annotations = [{"segment": [round(end - s, 6), end], "id": i,
                        "sentence": combo.caption(int(rng.integers(len(TEMPLATES))))}
                       for i, ((combo, s), end) in enumerate(zip(parts, ends))]
        database[video_id] = {"duration": ends[-1], "subset": "validation", "recipe_type": recipe,
                              "annotations": annotations, "video_url": ""}
        specs.append(VideoSpec(raw / "validation" / recipe / f"{video_id}.mp4", 25.0, tuple(parts), (seed, 3, v)))
    _write_text(raw / "youcookii_annotations_trainval.json", json.dumps({"database": database}, indent=1) + "\n")
    return specs, videos * segments


# ------------------------------------------------------------------------------- the build


def _write_all(specs: Sequence[VideoSpec], workers: int) -> None:
    if workers <= 1:
        for spec in specs:
            write_video(spec)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(write_video, specs, chunksize=max(1, len(specs) // (4 * workers)))


def toy_settings():
    """Stored format of every toy set: 10 fps, short side 64, 16 kHz audio (what the demo model reads)."""
    from vattcli.data.preprocess import Settings

    return Settings(fps=10.0, short_side=64, audio_rate=AUDIO_RATE)


def build_toy(out: Path, *, seed: int = 0, workers: int = 1, howto_videos: int = 24, howto_segments: int = 8,
              kinetics_train_per_class: int = 3, kinetics_val_per_class: int = 1, youcook2_videos: int = 12,
              youcook2_segments: int = 4, vocab_size: int | None = None) -> dict[str, Any]:
    """Write the toy raw data under ``out/raw``, preprocess it with the real adapters into ``out/shards``, write
    ``out/captions.txt`` (the howto captions) and train a SentencePiece tokenizer on them (``out/tokenizer.model``):
    word-level like VATT's vocabulary [P §4.1], with one piece per caption word plus pad and unk by default.

    Returns a summary: per set and split the shard folder, the number of annotated samples, written and skipped.
    """
    from vattcli.data.adapters import get_adapter
    from vattcli.data.preprocess import run_preprocess
    from vattcli.data.text import train_tokenizer

    sizes = (howto_videos, howto_segments, kinetics_train_per_class, kinetics_val_per_class, youcook2_videos,
             youcook2_segments)
    if seed < 0 or min(sizes) < 1:
        raise ConfigError(f"toy: expected a seed >= 0 and sizes >= 1, got seed {seed} and sizes {sizes}")
    started = time.perf_counter()
    out = Path(out)
    raw = out / "raw"
    howto, captions = howto_set(raw / "howto100m", seed, howto_videos, howto_segments)
    kinetics, kinetics_counts = kinetics_set(raw / "kinetics", seed,
                                             {"train": kinetics_train_per_class, "val": kinetics_val_per_class})
    youcook2, youcook2_count = youcook2_set(raw / "youcook2", seed, youcook2_videos, youcook2_segments)
    _write_all(howto + kinetics + youcook2, workers)
    _write_text(out / "captions.txt", "".join(f"{c}\n" for c in captions))
    jobs = [("howto100m", "howto100m", "train", len(captions)),
            ("kinetics400", "kinetics", "train", kinetics_counts["train"]),
            ("kinetics400", "kinetics", "val", kinetics_counts["val"]),
            ("youcook2", "youcook2", "val", youcook2_count)]
    sets: dict[str, dict[str, Any]] = {}
    for name, folder, split, expected in jobs:
        options = {"clip_seconds": CLIP_SECONDS} if name == "howto100m" else {}
        summary = run_preprocess(get_adapter(name, **options), raw / folder, out / "shards" / folder, split,
                                 settings=toy_settings(), workers=workers, overwrite=True)
        sets.setdefault(name, {})[split] = {"shards": summary["out"], "annotated": expected,
                                            "written": summary["written"], "skipped": summary["skipped"]}
    words = {w for caption in captions for w in caption.lower().split()}
    tokenizer = train_tokenizer(captions, out / "tokenizer", vocab_size=vocab_size or len(words) + 2,
                                model_type="word", seed=seed)
    return {"seed": seed, "out": str(out), "raw": str(raw), "sets": sets, "classes": list(LABELS),
            "captions": str(out / "captions.txt"), "tokenizer": str(tokenizer),
            "fps": toy_settings().fps, "short_side": toy_settings().short_side, "audio_rate": AUDIO_RATE,
            "seconds": time.perf_counter() - started}
