"""Where the training DataLoader's per-worker rate goes as workers are added (issue 13), and the data wait it leaves
a training step that runs at a given rate.

Writes synthetic web videos (``bench_data.write_web_video``, 640x360 H.264 + AAC, one process per video),
preprocesses them with the real ``howto100m`` adapter on every core (10 fps, short side 256, 48 kHz FLAC, 2 samples
per shard), then reads them with the trainer's loader (``ResumableLoader`` over a resampled ``ShardDataset``, so
every worker has shards, with ``PretrainDecoder(train=True)``: 32 frames at 224 px, 3.2 s of audio, 5 captions),
batches of ``--batch``, once per worker count. For each count, after every worker has delivered once, it times
``--seconds`` of batches taken as fast as they come and reports, per clip:

  decode      PyAV decoding of the clip's frames and audio, in the worker
  transform   crop/resize/flip (+ colour and scaling with ``--video finished``), audio noise, caption ids
  collate     ``default_collate`` in the worker: the copy of each sample into the batch's shared memory
  other       the rest of a worker's time per clip (reading the tar, handing the batch over, idle)
  MB/clip     bytes each clip moves through shared memory to the training process
and, per batch, the main process's wait for it and the worker processes' CPU use (``/proc``; 100 % = busy), the
main process's CPU use (it unpickles batches and, on CUDA, pins them in a thread), and the cost of pinning one
batch and copying it to the GPU. A per-worker rate that falls while the workers stay at 100 % CPU points at shared
resources (SMT siblings, memory bandwidth, turbo clocks); workers below 100 % are waiting.

``--step-samples-per-s R`` then feeds a simulated training step of ``batch / R`` seconds (on CUDA a GPU sleep
kernel after the batch's copy and ``finish_batch``, as the trainer does; on the CPU a sleep) with the largest worker
count and reports the data wait as a share of the step time, as the trainer logs it (``data_wait``), and the share of
the wall time not spent stepping; on CUDA once as the trainer does it (copy and ``finish_batch`` on the step's
stream) and once with the next batch copied on a side stream during the step.

    python bench/bench_loader.py --workers 1,2 --seconds 10                       # CPU, raw clips
    python bench/bench_loader.py --workers 1,2,4,8,16 --device cuda --step-samples-per-s 535 --json loader.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import default_collate

from bench_data import caption_entry, make_tokenizer, write_web_video
from timing import emit

from vattcli.data.adapters.howto100m import HowTo100M
from vattcli.data.folders import shard_urls
from vattcli.data.media import set_decoder_threads
from vattcli.data.pipeline import ClipSpec, PretrainDecoder, finish_batch
from vattcli.data.preprocess import Settings, run_preprocess
from vattcli.data.reader import ResumableLoader, ShardDataset

TIMING = ("bench_s", "collate_s")  # what the timed decoder and collate add to a batch


class TimedDecoder(PretrainDecoder):
    """PretrainDecoder whose samples also carry (decode s, rest s) in ``bench_s``; ``threads`` > 0 overrides the
    reader's one FFmpeg thread per worker."""

    def __init__(self, spec: ClipSpec, tokenizer: Any, threads: int = 0) -> None:
        super().__init__(spec, tokenizer, train=True)
        self.threads, self.decode_s = threads, 0.0

    def clip(self, sample: dict[str, Any], gen: torch.Generator, start: float | None = None):
        started = time.perf_counter()
        clip = super().clip(sample, gen, start)
        self.decode_s = time.perf_counter() - started
        return clip

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.threads:
            set_decoder_threads(self.threads)
        started = time.perf_counter()
        item = super().__call__(sample)
        total = time.perf_counter() - started
        return {**item, "bench_s": torch.tensor([self.decode_s, total - self.decode_s], dtype=torch.float64)}


class TimedCollate:
    """``default_collate`` (in the worker), with its own duration in ``collate_s``."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        batch = default_collate(items)
        batch["collate_s"] = torch.tensor(time.perf_counter() - started, dtype=torch.float64)
        return batch


def make_shards(tmp: Path, videos: int, seconds: int, cores: int) -> tuple[list[str], Any]:
    """Synthetic web videos and captions, preprocessed into shards of 2 samples; returns (shard urls, tokenizer)."""
    root = tmp / "raw"
    root.mkdir()
    jobs = [(root / f"web{v:03d}.mp4", seconds, (30, 25)[v % 2], v) for v in range(videos)]
    with multiprocessing.get_context("fork").Pool(min(cores, videos)) as pool:
        pool.starmap(write_web_video, jobs)
    rng = np.random.default_rng(0)
    captions = {f"web{v:03d}": caption_entry(rng, seconds) for v in range(videos)}
    (root / "caption.json").write_text(json.dumps(captions))
    tokenizer = make_tokenizer(captions, tmp)
    run_preprocess(HowTo100M(), root, tmp / "shards", "train", settings=Settings(fps=HowTo100M.fps), workers=cores,
                   max_samples=2, console=Console(file=io.StringIO()))
    return shard_urls(tmp / "shards" / "train"), tokenizer


def cpu_info() -> dict[str, Any]:
    """Logical CPUs usable here and physical cores (SMT siblings share one), from /proc/cpuinfo where it exists."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores, physical = set(), "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            physical = value if key == "physical id" else physical
            if key == "core id":
                cores.add((physical, value))
    except OSError:
        pass
    return {"logical_cpus": os.cpu_count(), "usable_cpus": usable, "physical_cores": len(cores) or None}


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes so far (Linux /proc), None elsewhere."""
    tick, total = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / tick


def batch_bytes(batch: dict[str, Any]) -> int:
    return sum(v.nbytes for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in TIMING)


def open_loader(urls: list[str], tokenizer: Any, workers: int, args, cuda: bool) -> Any:
    spec = ClipSpec(raw_video=args.video == "raw")
    dataset = ShardDataset(urls, decode=TimedDecoder(spec, tokenizer, args.decoder_threads), resampled=True)
    return ResumableLoader(dataset, batch_size=args.batch, num_workers=workers, pin_memory=cuda,
                           collate_fn=TimedCollate(), prefetch_factor=args.prefetch)


def free_run(urls: list[str], tokenizer: Any, workers: int, args, cuda: bool) -> dict[str, Any]:
    """Batches taken as fast as ``workers`` workers deliver them: rate and where each worker's time goes."""
    batches = iter(open_loader(urls, tokenizer, workers, args, cuda))
    for _ in range(workers):  # every worker has started and delivered once
        batch = next(batches)
    pids = [p.pid for p in multiprocessing.active_children()]
    clips, waits, decode, transform, collate = 0, [], 0.0, 0.0, 0.0
    worker_cpu0, main_cpu0, started = cpu_seconds(pids), time.process_time(), time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        t0 = time.perf_counter()
        batch = next(batches)
        waits.append(time.perf_counter() - t0)
        clips += len(batch["video"])
        decode += float(batch["bench_s"][:, 0].sum())
        transform += float(batch["bench_s"][:, 1].sum())
        collate += float(batch["collate_s"])
    wall = time.perf_counter() - started
    worker_cpu1, main_cpu = cpu_seconds(pids), time.process_time() - main_cpu0
    del batches
    ms = {"decode": 1000 * decode / clips, "transform": 1000 * transform / clips, "collate": 1000 * collate / clips}
    ms["other"] = 1000 * workers * wall / clips - sum(ms.values())
    return {"workers": workers, "clips": clips, "clips_per_s": clips / wall, "clips_per_s_per_worker":
            clips / wall / workers, "worker_ms_per_clip": {k: round(v, 2) for k, v in ms.items()},
            "worker_cpu_util": None if worker_cpu0 is None or worker_cpu1 is None else
            (worker_cpu1 - worker_cpu0) / (wall * workers), "main_cpu_util": main_cpu / wall,
            "main_wait_ms_per_batch": 1000 * statistics.mean(waits), "mb_per_clip": batch_bytes(batch) / 1e6 / len(
                batch["video"]), "sample_batch": {k: v for k, v in batch.items() if k not in TIMING}}


def transfer_costs(batch: dict[str, Any], device: torch.device, repeats: int = 3) -> dict[str, Any]:
    """ms to pin one batch (the DataLoader's pin thread does this) and to copy it to the GPU and finish it there."""
    if device.type != "cuda":
        return {"pin_ms_per_batch": None, "h2d_finish_ms_per_batch": None}
    plain = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    started = time.perf_counter()
    for _ in range(repeats):
        pinned = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in plain.items()}
    pin_ms = 1000 * (time.perf_counter() - started) / repeats
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        finish_batch({k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                      for k, v in pinned.items()})
    torch.cuda.synchronize()
    h2d_ms = 1000 * (time.perf_counter() - started) / repeats
    return {"pin_ms_per_batch": pin_ms, "h2d_finish_ms_per_batch": h2d_ms,
            "h2d_gb_per_s": batch_bytes(plain) / 1e6 / h2d_ms}


def gpu_sleeper(device: torch.device) -> tuple[float, Any]:
    """GPU clock cycles per second of ``torch.cuda._sleep`` (a kernel that spins), for a simulated step."""
    torch.cuda._sleep(1000)
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    torch.cuda._sleep(50_000_000)
    torch.cuda.synchronize(device)
    return 50_000_000 / (time.perf_counter() - started), torch.cuda._sleep


def fed_run(urls: list[str], tokenizer: Any, workers: int, args, device: torch.device,
            overlap: bool = False) -> dict[str, Any]:
    """The trainer's consumption at ``--step-samples-per-s``: each batch copied to the device and finished
    (``finish_batch``), then a step of ``batch / rate`` s and a synchronise; the data wait as the trainer logs it, and
    the share of wall time that is not step (on CUDA the copy and finishing sit on the step's stream). ``overlap``
    instead copies and finishes the next batch on a side stream while the step runs (what a prefetching loop would
    do), to measure what that would win."""
    step_s = args.batch / args.step_samples_per_s
    cuda = device.type == "cuda"
    cycles_per_s, sleep = gpu_sleeper(device) if cuda else (0.0, None)
    side = torch.cuda.Stream(device) if overlap and cuda else None
    batches = iter(open_loader(urls, tokenizer, workers, args, cuda))
    for _ in range(workers):
        next(batches)

    def upload() -> dict[str, torch.Tensor]:
        return finish_batch({k: v.to(device, non_blocking=True) for k, v in next(batches).items() if k not in TIMING})

    pending = None
    if side is not None:
        with torch.cuda.stream(side):
            pending = upload()
    data_s, steps, started = 0.0, 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        t0 = time.perf_counter()
        if side is None:
            batch = upload()
        else:
            torch.cuda.current_stream(device).wait_stream(side)
            batch = pending
            for tensor in batch.values():
                tensor.record_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                pending = upload()
        data_s += time.perf_counter() - t0
        if cuda:
            sleep(int(step_s * cycles_per_s))
            torch.cuda.synchronize(device)
        else:
            time.sleep(step_s)
        steps += 1
        del batch
    wall = time.perf_counter() - started
    batches = pending = None  # the workers stop before the next run starts its own
    return {"workers": workers, "overlap": side is not None, "step_samples_per_s": args.step_samples_per_s,
            "step_s": step_s, "steps": steps, "data_wait_share": data_s / wall,
            "samples_per_s": steps * args.batch / wall, "step_overhead_share": 1 - steps * step_s / wall}


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'workers':>7} {'clips/s':>8} {'/worker':>8} {'decode':>7} {'transf':>7} {'collate':>7} {'other':>7} "
            f"{'wrk CPU':>7} {'main CPU':>8} {'wait/batch':>10} {'MB/clip':>7}")
    lines = [head, f"{'':>25}{'(ms per clip, in a worker)':^30}"]
    for r in rows:
        ms, util = r["worker_ms_per_clip"], r["worker_cpu_util"]
        lines.append(f"{r['workers']:>7} {r['clips_per_s']:>8.2f} {r['clips_per_s_per_worker']:>8.2f} "
                     f"{ms['decode']:>7.1f} {ms['transform']:>7.1f} {ms['collate']:>7.1f} {ms['other']:>7.1f} "
                     f"{'?' if util is None else f'{util:.0%}':>7} {r['main_cpu_util']:>8.0%} "
                     f"{r['main_wait_ms_per_batch']:>8.0f}ms {r['mb_per_clip']:>7.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma list of DataLoader worker counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per worker count")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--video", choices=("raw", "finished"), default=None, help="raw: uint8 clips finished on "
                        "the device (data.augment_on=auto on a GPU); finished: colour and scaling in the workers "
                        "(auto on a CPU); default: as auto on --device")
    parser.add_argument("--prefetch", type=int, default=2, help="batches each worker prepares ahead")
    parser.add_argument("--decoder-threads", type=int, default=0, help="FFmpeg threads per worker (0: the "
                        "reader's 1)")
    parser.add_argument("--videos", type=int, default=0, help="source videos to write (default: usable CPUs, >= 2)")
    parser.add_argument("--video-seconds", type=int, default=24)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--step-samples-per-s", type=float, default=0.0, help="also feed a simulated step at this "
                        "rate with the largest worker count")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device, info = torch.device(args.device), cpu_info()
    args.video = args.video or ("raw" if device.type == "cuda" else "finished")
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    result: dict[str, Any] = {**info, "device": args.device, "batch": args.batch, "video": args.video,
                              "prefetch": args.prefetch, "decoder_threads": args.decoder_threads or 1, "runs": []}
    with tempfile.TemporaryDirectory(prefix="vatt-bench-loader-") as tmp:
        started = time.perf_counter()
        urls, tokenizer = make_shards(Path(tmp), args.videos or max(2, info["usable_cpus"]), args.video_seconds,
                                      info["usable_cpus"])
        result.update(shards=len(urls), make_shards_s=time.perf_counter() - started)
        for workers in counts:
            run = free_run(urls, tokenizer, workers, args, device.type == "cuda")
            sample = run.pop("sample_batch")
            result["runs"].append(run)
        result.update(transfer_costs(sample, device))
        if args.step_samples_per_s > 0:
            result["fed"] = [fed_run(urls, tokenizer, max(counts), args, device, overlap)
                             for overlap in ((False, True) if device.type == "cuda" else (False,))]
    print(table(result["runs"]))
    transfer = ("" if result["pin_ms_per_batch"] is None else f"; pin {result['pin_ms_per_batch']:.1f} ms and copy + "
                f"finish {result['h2d_finish_ms_per_batch']:.1f} ms per batch of {args.batch}")
    print(f"{args.video} clips; CPUs: {info['usable_cpus']} usable, {info['logical_cpus']} logical, "
          f"{info['physical_cores']} physical cores; {result['shards']} shards{transfer}")
    for fed in result.get("fed", []):
        print(f"fed {fed['workers']} workers' batches to a {fed['step_s'] * 1000:.0f} ms step "
              f"({fed['step_samples_per_s']:.0f} samples/s){', next batch copied on a side stream' * fed['overlap']}:"
              f" data wait {fed['data_wait_share']:.1%} of the step time, not stepping {fed['step_overhead_share']:.1%}"
              f" of the wall time, {fed['samples_per_s']:.1f} samples/s reached")
    emit(result, args.json)


if __name__ == "__main__":
    main()
