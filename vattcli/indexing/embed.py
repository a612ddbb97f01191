"""Embedding decoded windows in batches on the device, and keeping each file's windows until it is whole."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vattcli.data.transforms import center_crop, normalize_uint8, to_model_range
from vattcli.indexing.chunks import FileWindows


class WindowBatcher:
    """Collects windows into batches (video windows and audio-only windows apart), runs the model on a full batch,
    and files each result with its window. ``files`` maps a file number to its ``FileWindows`` and its state."""

    def __init__(self, model: torch.nn.Module, device: torch.device, size: int, batch: int) -> None:
        self.model, self.device, self.size, self.batch = model, device, size, batch
        self.video: list[tuple[FileWindows, int, torch.Tensor]] = []
        self.audio: list[tuple[FileWindows, int, torch.Tensor]] = []
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def add(self, fw: FileWindows, sample: dict[str, Any]) -> None:
        position = len(fw.items)
        fw.items.append({"start": sample["start"], "end": sample["end"]})
        fw.thumbs.append(sample.get("thumb"))
        fw.has_vt.append(sample["video"] is not None)
        fw.vt.append(None)
        fw.va.append(None)  # type: ignore[arg-type]
        if sample["video"] is not None:
            self.video.append((fw, position, sample["video"]))
            if len(self.video) >= self.batch:
                self.run_video()
        else:
            self.audio.append((fw, position, sample["audio"]))
            if len(self.audio) >= self.batch:
                self.run_audio()

    def flush(self) -> None:
        self.run_video()
        self.run_audio()

    def waiting(self, fw: FileWindows) -> bool:
        return any(entry[0] is fw for entry in self.video) or any(entry[0] is fw for entry in self.audio)

    def drop(self, fw: FileWindows) -> None:
        self.video = [e for e in self.video if e[0] is not fw]
        self.audio = [e for e in self.audio if e[0] is not fw]

    @torch.inference_mode()
    def run_video(self) -> None:
        if not self.video:
            return
        clips = torch.stack([to_model_range(self._clip(frames.numpy())) for _, _, frames in self.video])
        out = self._forward(video=clips.to(self.device, non_blocking=True))
        vt, va = F.normalize(out["video_vt"].float(), dim=-1).cpu(), F.normalize(out["video_va"].float(), dim=-1).cpu()
        for (fw, position, _), row_vt, row_va in zip(self.video, vt, va):
            fw.vt[position], fw.va[position] = row_vt, row_va
        self.video = []

    @torch.inference_mode()
    def run_audio(self) -> None:
        if not self.audio:
            return
        waves = torch.stack([audio for _, _, audio in self.audio]).float()
        va = F.normalize(self._forward(audio=waves.to(self.device))["audio_va"].float(), dim=-1).cpu()
        for (fw, position, _), row in zip(self.audio, va):
            fw.va[position] = row
        self.audio = []

    def _clip(self, frames: Any) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> float (3, T, size, size) in [0, 1]: the windows arrive cropped already (as
        ``center_crop`` cuts the query windows); anything else is cropped here."""
        if frames.shape[1] == frames.shape[2] == self.size:
            return normalize_uint8(frames)
        return center_crop(frames, self.size)

    def _forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.autocast is None:
            return self.model(**inputs)
        with self.autocast:
            return self.model(**inputs)
