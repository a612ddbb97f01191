"""``vatt convert`` of a full-size official checkpoint against plainly reading its bytes, side by side in one process.

Writes a VATT-BBS (``--model vatt-ma-medium``: VATT-MA-Medium) checkpoint in the official TensorFlow layout to a
temporary folder: every key and shape from ``official_keys`` (tests/tfckpt.py, checked against the checkpoints the
official code wrote), random float32 values, one ``.data`` shard and an uncompressed one-block ``.index`` written by
the minimal writer of tests/tfbundle.py; the object graph (a string the converter skips) is left out. ``--optimizer``
adds Adam's ``m``/``v`` slots of every trainable variable, as the official training loop saves them
[C experiments/base.py], which triples the file. Then, pinned to one CPU with ``torch.set_num_threads(1)``, it times
in alternating rounds (median reported):

  (a) plain: the ``.data`` file read in 16 MiB chunks into one reused buffer (the floor for touching every byte);
  (b) ``convert_checkpoint``: crc32c of every model tensor, the layout changes, the streamed safetensors with its
      sha256, the sha256 of the source files, fsync of the output folder.

The files were just written, so (a) and (b) read from the page cache; (b) also writes ~0.9 GB and fsyncs it, so the
disk shows in (b). Memory, before the rounds: one conversion in a ``spawn`` child started while this process held only
its imports (a child's ``ru_maxrss`` starts at its parent's resident size at fork); its resident size before converting
(imports done), its peak (``RUSAGE_CHILDREN.ru_maxrss`` here once it is joined) and its anonymous and file-backed
resident memory sampled every 20 ms (``/proc/self/status``). Pages of the memory-mapped bundle that the conversion
touched count as file-backed RSS while the bundle is open. Target [issue 9]: VATT-BBS under a minute on one core, peak
memory (over the imports) under 1.5x the checkpoint size.

    python bench/bench_convert.py                          # VATT-BBS, 3 rounds
    python bench/bench_convert.py --model vatt-ma-medium --optimizer --rounds 1 --json convert.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench_convert_read import CHUNK, plain_read, resident_mb
from timing import emit, timed

from vattcli.convert.run import convert_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tfbundle import CODES, BundleWriter, numeric  # noqa: E402  (the minimal TensorBundle writer of the tests)
from tfckpt import GRAPH, dtype_of, official_keys  # noqa: E402  (the official layout, tested against the fixtures)

CPU = torch.device("cpu")
MODELS = {"vatt-bbs": ("pretrain-ms", {}),  # 12/12/6 layers, 65536 x 300 words [P Tab 7]
          "vatt-ma-medium": ("pretrain-ma", {"video": (12, 1024, 4096), "post_proj": 1024})}


def write_official(prefix: Path, keys: dict[str, tuple[int, ...]], seed: int = 0) -> int:
    """Random float32 (int64 counters) for every key but the object graph; returns the ``.data`` bytes."""
    rng = np.random.default_rng(seed)
    with BundleWriter(prefix, per_block=None) as bundle:
        for key in sorted(k for k in keys if k != GRAPH):
            shape, dtype = keys[key], dtype_of(key)
            array = np.ones(shape, "<i8") if dtype == "int64" else rng.standard_normal(shape, dtype=np.float32)
            bundle.add(key, numeric(array, CODES[dtype]))
    return bundle.nbytes


def pin_one_cpu() -> int | None:
    """Run on one CPU (inherited by the child), so the figures are per core."""
    torch.set_num_threads(1)
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def convert(prefix: Path, out: Path) -> None:
    convert_checkpoint(prefix, out)
    shutil.rmtree(out)


def _status_mb(*fields: str) -> dict[str, float]:
    """Fields of /proc/self/status in MiB (Linux): VmRSS is the resident set now, VmHWM its peak since exec."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[key] = int(value.split()[0]) / 1024
    return found


def _child(conn) -> None:
    """One conversion in a fresh process, started before the parent grew (a forked child's ``ru_maxrss`` starts at
    the parent's resident size): waits for the paths, then reports its resident size before converting (imports
    done), its sampled anonymous/file-backed growth, its own peak and its time."""
    torch.set_num_threads(1)
    prefix, out = conn.recv()
    baseline_mb = _status_mb("VmRSS")["VmRSS"]
    start_rss, peak, stop = resident_mb(), {"RssAnon": 0.0, "RssFile": 0.0}, threading.Event()

    def sample() -> None:
        while True:
            for key, value in resident_mb().items():
                peak[key] = max(peak[key], value - start_rss[key])
            if stop.wait(0.02):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    convert_checkpoint(prefix, out)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    conn.send({"baseline_mb": baseline_mb, "growth_mb": peak, "seconds": seconds,
               "hwm_mb": _status_mb("VmHWM")["VmHWM"]})
    conn.close()


def start_child():
    """The memory child, spawned while this process holds only its imports."""
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    process = ctx.Process(target=_child, args=(child_conn,), daemon=True)
    process.start()
    child_conn.close()
    return process, conn


def child_memory(process, conn, prefix: Path, out: Path) -> dict:
    conn.send((prefix, out))
    report = conn.recv()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"the conversion child failed with exit code {process.exitcode}")
    report["peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    shutil.rmtree(out)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="vatt-bbs")
    parser.add_argument("--optimizer", action="store_true", help="add Adam slots (the file triples)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args()

    cpu = pin_one_cpu()
    process, conn = start_child()
    parent_rss_at_spawn_mb = _status_mb("VmRSS")["VmRSS"]
    kind, sizes = MODELS[args.model]
    keys = official_keys(kind, optimizer=args.optimizer, **sizes)
    with tempfile.TemporaryDirectory(prefix="vatt-bench-convert-") as tmp:
        prefix = Path(tmp) / "src" / "ckpt-500000"
        prefix.parent.mkdir()
        start = time.perf_counter()
        data_bytes = write_official(prefix, keys)
        write_s = time.perf_counter() - start
        ckpt_mb = (data_bytes + Path(f"{prefix}.index").stat().st_size) / (1 << 20)
        data_file, buffer, out = Path(f"{prefix}.data-00000-of-00001"), bytearray(CHUNK), Path(tmp) / "out"
        memory = child_memory(process, conn, prefix, out)  # before this process grows, see _child
        ways = {"plain": lambda: plain_read(data_file, buffer), "convert": lambda: convert(prefix, out)}
        ways["plain"]()  # warm-up: the page cache already holds the file
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                times[name].append(timed(fn, CPU, 1))
        med = {name: statistics.median(t) for name, t in times.items()}
    growth_mb = memory["peak_mb"] - memory["baseline_mb"]
    result = {"model": args.model, "optimizer": args.optimizer, "tensors": len(keys) - 1, "cpu": cpu,
              "checkpoint_mb": round(ckpt_mb, 1), "write_s": round(write_s, 1), "rounds": args.rounds,
              "seconds_this_machine": {k: round(v, 3) for k, v in med.items()},
              "all_rounds_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
              "convert_over_plain": round(med["convert"] / med["plain"], 2),
              "child_convert_s": round(memory["seconds"], 2),
              "rss_before_convert_mb": round(memory["baseline_mb"], 1), "peak_rss_mb": round(memory["peak_mb"], 1),
              "peak_growth_over_checkpoint": round(growth_mb / ckpt_mb, 3),
              "peak_rss_over_checkpoint": round(memory["peak_mb"] / ckpt_mb, 3),
              "sampled_growth_over_checkpoint": {k.removeprefix("Rss").lower(): round(v / ckpt_mb, 3)
                                                 for k, v in memory["growth_mb"].items()},
              "child_vm_hwm_mb": round(memory["hwm_mb"], 1), "parent_rss_at_spawn_mb": round(parent_rss_at_spawn_mb, 1)}
    emit(result, args.json)
    print(f"{args.model}{' + Adam slots' if args.optimizer else ''}, {ckpt_mb:.0f} MiB, one core, this machine: "
          f"convert {med['convert']:.1f} s (in a fresh process, with its first-call imports: "
          f"{memory['seconds']:.1f} s), plain 16 MiB reads {med['plain']:.2f} s, ratio "
          f"{result['convert_over_plain']:.1f}x; conversion peak RSS {memory['peak_mb']:.0f} MiB = "
          f"{memory['baseline_mb']:.0f} MiB before converting (imports) + {growth_mb:.0f} MiB "
          f"({result['peak_growth_over_checkpoint']:.2f}x the checkpoint; sampled: anonymous "
          f"{result['sampled_growth_over_checkpoint']['anon']:.2f}x, file-backed map pages "
          f"{result['sampled_growth_over_checkpoint']['file']:.2f}x)")


if __name__ == "__main__":
    main()
