"""Reading a TensorFlow checkpoint with ``TensorBundle`` against plainly reading its bytes, side by side in one process.

Writes a synthetic TensorBundle (``--tensors`` float32 tensors totalling ``--mb`` MiB in one shard; the ``.index`` is
an uncompressed one-block SSTable from the minimal writer of tests/tfbundle.py) to a temporary folder, then times, in
alternating rounds (median reported):

  (a) plain: the ``.data`` file read in 16 MiB chunks into one reused buffer (the floor for touching every byte once);
  (b) ``TensorBundle(prefix)`` and ``read(name)`` of every tensor with ``verify=True`` (crc32c over every byte);
  (c) the same with ``verify=False``: read-only views of the memory map, no byte touched;
  (d) ``verify=False`` and every view copied into a fresh array (what a converter does when it builds torch tensors).

The file was just written, so it is in the page cache for all of them: this measures CPU cost, not the disk. Memory:
``ru_maxrss`` of the whole process, and for (b) and (d) the largest growth of the process' anonymous and file-backed
resident memory over the pass (``/proc/self/status``, sampled after each tensor) relative to the data size. Pages of
the map that were touched count as file-backed resident memory while the bundle is open; they are clean page cache
the kernel can drop, unlike anonymous memory.

    python bench/bench_convert_read.py                    # 256 MiB in 200 tensors, 3 rounds
    python bench/bench_convert_read.py --mb 1024 --rounds 5 --json convert_read.json
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import google_crc32c
import numpy as np
import torch

from timing import emit, timed

from vattcli.convert.bundle import TensorBundle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tfbundle import CODES, BundleWriter, numeric  # noqa: E402  (the minimal TensorBundle writer of the tests)

CHUNK = 16 << 20
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------- the bundle

def write_random(prefix: Path, tensors: int, total: int, seed: int = 0) -> int:
    """``tensors`` random float32 (rows, 256) tensors of about ``total`` bytes in all; returns the bytes written."""
    rng, rows = np.random.default_rng(seed), max(1, total // tensors // 1024)
    with BundleWriter(prefix, per_block=None) as bundle:
        for i in range(tensors):
            array = rng.standard_normal((rows, 256), dtype=np.float32)
            bundle.add(f"model/layer_{i:04d}/kernel", numeric(array, CODES["float32"]))
    return bundle.nbytes


# ------------------------------------------------------------------------------------------- the readings

def plain_read(path: Path, buffer: bytearray) -> None:
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass


def bundle_read(prefix: Path, verify: bool, copy: bool, after_each=None) -> None:
    with TensorBundle(prefix) as bundle:
        for name in bundle.keys():
            a = bundle.read(name, verify=verify)
            if copy:
                a = np.array(a)
            if after_each:
                after_each()
        del a


def resident_mb() -> dict[str, float]:
    """Current anonymous and file-backed resident memory (MiB), from /proc/self/status (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def memory_growth(prefix: Path, verify: bool, copy: bool, data_mb: float) -> dict[str, float]:
    """The largest growth of anonymous and file-backed resident memory over one pass, relative to the data size."""
    start, peak = resident_mb(), dict.fromkeys(("RssAnon", "RssFile"), 0.0)

    def sample() -> None:
        for key, value in resident_mb().items():
            peak[key] = max(peak[key], value - start[key])

    bundle_read(prefix, verify, copy, sample)
    return {"anon_over_data": round(peak["RssAnon"] / data_mb, 3),
            "file_over_data": round(peak["RssFile"] / data_mb, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=256, help="total tensor data (MiB)")
    parser.add_argument("--tensors", type=int, default=200, help="number of float32 tensors")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vatt-bench-convert-") as tmp:
        prefix = Path(tmp) / "ckpt-1"
        nbytes = write_random(prefix, args.tensors, args.mb << 20)
        data_mb, data_file = nbytes / (1 << 20), Path(f"{prefix}.data-00000-of-00001")
        rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports, writing
        buffer = bytearray(CHUNK)
        ways = {"plain": lambda: plain_read(data_file, buffer),
                "verify": lambda: bundle_read(prefix, True, False),
                "no_verify": lambda: bundle_read(prefix, False, False),
                "no_verify_copy": lambda: bundle_read(prefix, False, True)}
        for fn in ways.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                times[name].append(timed(fn, CPU, 1))
        med = {name: statistics.median(t) for name, t in times.items()}
        memory = ({name: memory_growth(prefix, verify, copy, data_mb)
                   for name, verify, copy in (("verify", True, False), ("no_verify_copy", False, True))}
                  if Path("/proc/self/status").is_file() else {})
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"tensors": args.tensors, "data_mb": round(data_mb, 1), "rounds": args.rounds,
              "crc32c": google_crc32c.implementation,
              "s": {k: round(v, 4) for k, v in med.items()},
              "gb_per_s": {k: round(nbytes / v / 1e9, 2) for k, v in med.items()},
              "verify_over_plain": med["verify"] / med["plain"],
              "no_verify_over_plain": med["no_verify"] / med["plain"],
              "no_verify_copy_over_plain": med["no_verify_copy"] / med["plain"],
              "peak_rss_mb": round(peak_rss_mb, 1), "peak_rss_before_reads_mb": round(rss_before_mb, 1),
              "peak_rss_over_data": round(peak_rss_mb / data_mb, 3),
              "peak_rss_growth_over_data": round((peak_rss_mb - rss_before_mb) / data_mb, 3),
              "resident_growth": memory}
    emit(result, args.json)
    print(f"TensorBundle / plain 16 MiB reads of {data_mb:.0f} MiB: verify=True {result['verify_over_plain']:.2f}x, "
          f"verify=False {result['no_verify_over_plain']:.3f}x (views only), "
          f"verify=False + copy {result['no_verify_copy_over_plain']:.2f}x; peak RSS {peak_rss_mb:.0f} MiB "
          f"({peak_rss_mb - rss_before_mb:.0f} MiB more than before reading = "
          f"{result['peak_rss_growth_over_data']:.2f}x the data, file-backed map pages)")


if __name__ == "__main__":
    main()
