"""What the server answers, apart from HTTP: queries checked, encoded and searched, results made safe to show.

The model and the index are loaded once (``SearchService.open``); queries are encoded as ``vatt retrieve`` encodes
them (``vattcli.eval.query``): a caption into S_vt, a video file (its middle window) or an audio file into S_va
[P §3.3; reference §4]. Whether an uploaded file is a video or an audio query is decided by probing it (a video
stream: video), not by its name. Paths of the indexed files never leave the server: a result names its file relative
to the folder the index was built from (else by its base name) and points at it by source id (``/media/ID``).
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vattcli.errors import ConfigError, MediaError, VattError
from vattcli.retrieval.names import source_name

# Content types of the media a browser can play, by suffix (the system's mime.types is not always installed).
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo", ".ogv": "video/ogg", ".ts": "video/mp2t",
               ".mpg": "video/mpeg", ".mpeg": "video/mpeg", ".flv": "video/x-flv", ".3gp": "video/3gpp",
               ".m4a": "audio/mp4", ".aac": "audio/aac", ".mp3": "audio/mpeg", ".wav": "audio/wav",
               ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg",
               ".weba": "audio/webm"}


class RequestError(VattError):
    """A query the server refuses; ``status`` is the HTTP status it answers with (400 unless said)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_text: int = 1000  # characters of a text query
    max_k: int = 100  # results per query
    max_upload: int = 200 * 10**6  # bytes of a query file


@dataclass(frozen=True)
class MediaFile:
    path: Path
    content_type: str


def media_type(path: str | os.PathLike[str]) -> str:
    return MEDIA_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


class SearchService:
    """One index, the model that built it and its tokenizer; thread-safe (one query is encoded at a time)."""

    def __init__(self, index: Any, model: Any, spec: Any, tokenizer: Any, limits: Limits = Limits()) -> None:
        self.index, self.model, self.spec, self.tokenizer, self.limits = index, model, spec, tokenizer, limits
        self.root = (index.info.get("settings") or {}).get("root")
        self._lock = threading.Lock()

    @classmethod
    def open(cls, name: str, *, home: Path | None = None, ckpt: Path | None = None, device: str = "cpu",
             verify: bool = True, limits: Limits = Limits()) -> "SearchService":
        """Load index ``name`` and its checkpoint (``ckpt``: a copy with the same weights) once."""
        from vattcli.api import load_tokenizer, open_index
        from vattcli.checkpoints import tokenizer_path
        from vattcli.eval.query import clip_spec_from_checkpoint

        index, folder, model = open_index(name, home=home, ckpt=ckpt, device=device, verify=verify)
        if not hasattr(model, "head"):
            raise ConfigError(f"{folder}: a fine-tuned classifier has no common spaces to search")
        tokenizer = load_tokenizer(folder, verify=verify) if tokenizer_path(folder) is not None else None
        if tokenizer is not None and index.tokenizer_sha256 and tokenizer.sha256 != index.tokenizer_sha256:
            raise VattError(f"{folder}: tokenizer sha256 {tokenizer.sha256} differs from {index.tokenizer_sha256}, "
                            f"the one index {index.name!r} was built with")
        return cls(index, model, clip_spec_from_checkpoint(folder), tokenizer, limits)

    # ---------------------------------------------------------------------------------------------- queries

    def info(self) -> dict[str, Any]:
        """What ``GET /api/info`` shows: the index, its model, its spaces and what can be asked."""
        info = self.index.info
        counts = info.get("counts") or {s: info["num_items"] for s in info["dims"]}
        files = sum(1 for s in self.index.sources if not s.get("skipped"))
        spaces = {s: {"vectors": int(counts[s]), "dim": int(info["dims"][s]), "search": self.index.search_kind(s)}
                  for s in info["dims"]}
        return {"index": self.index.name, "model": info.get("model_name"), "windows": len(self.index),
                "files": files, "spaces": spaces,
                "queries": (["text"] if self.tokenizer is not None else []) + ["video", "audio"],
                "max_k": self.limits.max_k, "max_text_chars": self.limits.max_text,
                "max_upload_bytes": self.limits.max_upload}

    def top_k(self, value: str | None) -> int:
        """The ``k`` query parameter (default 10), 1..max_k."""
        if value is None:
            return min(10, self.limits.max_k)
        try:
            k = int(value)
        except ValueError:
            raise RequestError(f"k={value[:20]!r}: expected a whole number from 1 to {self.limits.max_k}") from None
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(f"k={k}: expected a whole number from 1 to {self.limits.max_k}")
        return k

    def search_text(self, text: str | None, k: int) -> dict[str, Any]:
        """A caption -> the windows nearest in S_vt."""
        from vattcli.eval.query import encode_text

        if text is None or not text.strip():
            raise RequestError("q: the text query is empty; type a few words describing the clip")
        if len(text) > self.limits.max_text:
            raise RequestError(f"q: the text query has {len(text)} characters; at most {self.limits.max_text}")
        if self.tokenizer is None:
            raise RequestError("this index's checkpoint has no tokenizer: query with a video or audio file")
        with self._lock:
            vector = encode_text(self.model, self.tokenizer, [text], max_len=self.spec.text_len)[0]
            return self._answer({"text": text}, "vt", vector, k)

    def search_file(self, path: Path, k: int, name: str) -> dict[str, Any]:
        """A query file -> the windows nearest in S_va: its video tower when it has a video stream, else its
        audio tower. ``name`` is the file's name as the client gave it (shown back, never opened)."""
        from vattcli.data.media import probe
        from vattcli.eval.query import encode_audio_file, encode_video_file

        if path.stat().st_size == 0:
            raise RequestError(f"{name}: the uploaded file is empty")
        try:
            has_video = probe(path, name).has_video
            with self._lock:
                encode = encode_video_file if has_video else encode_audio_file
                vector = encode(self.model, path, self.spec)
                return self._answer({"video" if has_video else "audio": name}, "va", vector, k)
        except MediaError as e:
            message = str(e).replace(str(path), name).splitlines()[0]
            raise RequestError(f"{message}; expected a video or audio file", 415) from e

    def _answer(self, query: dict[str, str], space: str, vector: Any, k: int) -> dict[str, Any]:
        hits = self.index.search(vector, space=space, top_k=k)
        return {"query": query, "space": space, "results": [self._result(h) for h in hits]}

    def _result(self, hit: Any) -> dict[str, Any]:
        item = hit.item
        sid = item.get("source_id")
        record = self._source(sid)
        path = record["path"] if record else item.get("source") or ""
        result = {"rank": hit.rank, "score": float(hit.score), "key": item.get("key"),
                  "source": source_name(str(path), self.root), "start": item.get("start"), "end": item.get("end")}
        for field in ("caption", "label"):
            if item.get(field) is not None:
                result[field] = item[field]
        result["thumbnail"] = f"/thumb/{hit.row}" if self.index.thumbnail(hit.row) is not None else None
        result["media"] = f"/media/{sid}" if record else None
        result["kind"] = ("video" if record.get("has_video", True) else "audio") if record else None
        return result

    # ---------------------------------------------------------------------------------------------- files

    def _source(self, source_id: Any) -> dict[str, Any] | None:
        """The recorded source ``source_id`` if it was indexed (not skipped), else None."""
        sources = self.index.sources
        if not isinstance(source_id, int) or not 0 <= source_id < len(sources):
            return None
        record = sources[source_id]
        return None if record.get("skipped") or not os.path.isabs(record.get("path", "")) else record

    def media(self, source_id: int) -> MediaFile | None:
        """The indexed file ``source_id`` as it was recorded: None when unknown, skipped, gone, no longer a regular
        file, or of another size than when it was indexed (replaced since)."""
        record = self._source(source_id)
        if record is None:
            return None
        try:
            st = os.stat(record["path"])
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or ("size" in record and st.st_size != record["size"]):
            return None
        return MediaFile(Path(record["path"]), media_type(record["path"]))

    def thumbnail(self, row: int) -> bytes | None:
        return self.index.thumbnail(row)
