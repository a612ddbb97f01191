"""How fast `vatt index build` gets through raw media, as media time per second of compute on ONE core (a real-time
factor: 100x means one core indexes 100 s of video in 1 s), measured side by side in one run:

1. decode only: each file decoded once, sequentially (``data.windows.iter_windows``: frames picked at the clip's frame
   rate, centre-cropped, one JPEG thumbnail per window), no model;
2. the whole pipeline in one process (``indexing.build.index_part`` with 0 workers): decode + embed + chunks, for the
   model ``--model`` (random weights: speed does not depend on them);
3. the model alone on the windows: windows per second of the video tower at ``--model``'s size and clip.

Media: ``--videos`` files of ``--seconds`` s at 640x360, 25 fps, H.264 + AAC, written by PyAV (tests/mediagen.py).
Windows: the model's clip (3.2 s for VATT: 32 frames at 10 fps, 224 px), stride half a window. Threads: one torch
thread and one decoder thread, so the figures are per core; a machine with C cores and C workers scales them by about
C while decoding is the limit (see the DataLoader scaling in bench_loader.py). On a GPU the model part is the device's.

    python bench/bench_index.py                          # vatt-tiny (the toy model's clip)
    python bench/bench_index.py --model vatt-bbs --windows 8
    python bench/bench_index.py --model vatt-bbs --device cuda --workers 16 --videos 16   # per GPU (gpu_check.sh index)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mediagen import make_video  # noqa: E402

from vattcli.api import build_model, model_config  # noqa: E402
from vattcli.data.media import set_decoder_threads  # noqa: E402
from vattcli.data.pipeline import ClipSpec  # noqa: E402
from vattcli.data.transforms import center_crop, to_model_range  # noqa: E402
from vattcli.data.windows import iter_windows, summarize  # noqa: E402
from vattcli.indexing.build import BuildSettings, index_part  # noqa: E402

CLIPS = {"vatt-tiny": ClipSpec(frames=8, fps=10.0, size=64, audio_rate=16_000)}


def decode_only(files: list[Path], spec: ClipSpec, stride: float) -> tuple[float, int]:
    start, windows = time.perf_counter(), 0
    for path in files:
        windows += sum(1 for _ in iter_windows(path, spec, stride=stride))
    return time.perf_counter() - start, windows


def pipeline(files: list[Path], spec: ClipSpec, stride: float, model: torch.nn.Module, folder: Path,
             device: torch.device, workers: int) -> float:
    settings = BuildSettings(window=spec.seconds, stride=stride, batch=16, workers=workers)
    start = time.perf_counter()
    index_part(files, folder, model, spec, settings, device=device,
               dims={"vt": model.config.d_vt, "va": model.config.d_va}, console=Console(stderr=True, quiet=True),
               resume_hint="", every=1e9)
    return time.perf_counter() - start


@torch.inference_mode()
def model_only(files: list[Path], spec: ClipSpec, stride: float, model: torch.nn.Module, count: int,
               device: torch.device) -> float:
    windows = []
    for w in iter_windows(files[0], spec, stride=stride):
        windows.append(to_model_range(center_crop(w.frames, spec.size)))
        if len(windows) == count:
            break
    batch = torch.stack(windows).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        model(video=batch[:1])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(video=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vatt-tiny")
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--windows", type=int, default=16, help="windows timed through the model alone")
    parser.add_argument("--device", default="cpu", help="cpu (figures per core) or cuda (the model on the GPU, "
                        "decoding in --workers processes)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes for the pipeline (0: in process)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    set_decoder_threads(1)
    torch.manual_seed(0)
    cfg = model_config(args.model, droptoken_rate=0.0)
    spec = CLIPS.get(args.model, ClipSpec())
    device = torch.device(args.device)
    model = build_model(cfg, device=device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.videos):
            path = Path(tmp) / f"v{i}.mp4"
            make_video(path, fps=25.0, duration=args.seconds, size=(360, 640), audio_rate=48_000)
            files.append(path)
        media = sum(summarize(p).duration for p in files)
        stride = spec.seconds / 2
        decode_s, windows = decode_only(files, spec, stride)
        full_s = pipeline(files, spec, stride, model, Path(tmp) / "part", device, args.workers)
        per_window = model_only(files, spec, stride, model, args.windows, device)
    result = {
        "model": cfg.name, "device": str(device), "workers": args.workers, "clip": {"frames": spec.frames, "fps": spec.fps, "size": spec.size},
        "media_seconds": round(media, 1), "windows": windows, "source": "640x360 25 fps H.264 + AAC",
        "realtime_per_core": {"decode_only": round(media / decode_s, 1), "pipeline": round(media / full_s, 1),
                              "model_only": round(media / (per_window * windows), 1)},
        "media_hours_per_core_hour": round(media / full_s, 1),
        "model_share_of_pipeline": round(per_window * windows / full_s, 3),
        "note": "one torch thread, one decoder thread; ratios of media time to compute time in one run",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
