"""Checkpoints as folders: ``<run_dir>/ckpt-<step:08d>/`` with weights, config, tokenizer, train state and meta.

Layout (design.md, Checkpoints): ``model.safetensors`` (every tensor once; aliases of shared modules, such as the
VATT-MA encoder registered under ``video``/``audio``/``text``, are listed in the safetensors metadata and restored on
load), ``config.yaml``, ``tokenizer.model`` or ``tokenizer.txt``, ``train_state.pt`` (optimizer, scheduler, step, RNG,
data position; only types ``torch.load(weights_only=True)`` accepts) and ``meta.json`` (versions, step, metrics,
sha256 of the weights, file list).

A checkpoint is written into ``.tmp-ckpt-<step>-<pid>`` next to its final name and renamed when complete, so a crash
never leaves a half checkpoint under a ``ckpt-*`` name. It counts as complete when ``meta.json`` exists and names
files that exist. ``find_checkpoint`` also verifies the weights' sha256 against ``meta.json`` unless told not to
(``--no-verify``): every load verifies (design.md, Checkpoints). Cost, measured on the 2-core CPU machine this was
written on: a VATT-BBS ``model.safetensors`` (854 MB) hashes in 0.5-1.1 s (median 0.69 s), while ``load_model``
without verification (build the model, copy the weights in) takes 2.5-4.7 s (median 2.9 s): verifying adds about a
fifth to a load, and a process hashes an unchanged file once however often it is found (``weights_hash``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

import vattcli
from vattcli.checkpoints.state import TRAIN_STATE, capture_rng, check_plain
from vattcli.checkpoints.weights import WEIGHTS, _write_weights, listed, weights_hash
from vattcli.errors import CheckpointError
from vattcli.locking import pid_alive

FORMAT_VERSION = 1
CONFIG = "config.yaml"
LABELS = "labels.txt"  # class names of a classifier, one a line, in its class order
META = "meta.json"
BEST = "best.json"
TOKENIZER_NAMES = {".model": "tokenizer.model", ".txt": "tokenizer.txt"}
TMP_PREFIX = ".tmp-ckpt-"
TOWER_KIND = "vatt-tower"  # meta.json of a tower folder written by `vatt export` (vattcli.export.KIND)
_CKPT_RE = re.compile(r"ckpt-(\d{8,})")
_TMP_PID_RE = re.compile(re.escape(TMP_PREFIX) + r"\d+-(\d+)(?:\.old)?")


# ---------------------------------------------------------------------------------------------- writing

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _config_text(config: str | Mapping) -> str:
    if isinstance(config, str):
        try:
            config = yaml.safe_load(config)
        except yaml.YAMLError as e:
            raise CheckpointError(f"config: not valid YAML ({e})") from e
    if not isinstance(config, Mapping):
        raise CheckpointError(f"config: expected a YAML mapping or a dict, got {type(config).__name__}")
    return yaml.safe_dump(dict(config), sort_keys=False)


def _tokenizer_name(tokenizer: Path) -> str:
    if not tokenizer.is_file():
        raise CheckpointError(f"{tokenizer}: tokenizer file not found")
    if tokenizer.suffix not in TOKENIZER_NAMES:
        raise CheckpointError(f"{tokenizer}: expected a SentencePiece .model or a word vocabulary .txt")
    return TOKENIZER_NAMES[tokenizer.suffix]


def _clean_leftovers(run_dir: Path) -> None:
    """Remove temp folders that crashed or killed writers left behind; live writers' folders are kept."""
    for entry in run_dir.glob(TMP_PREFIX + "*"):
        match = _TMP_PID_RE.fullmatch(entry.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _write_folder(folder: Path, step: int, model: nn.Module, config: str | Mapping | None, tokenizer: Path | None,
                  train_state: Mapping | None, metrics: Mapping | None) -> None:
    folder.mkdir()
    _write_weights(folder / WEIGHTS, model)
    if config is not None:
        (folder / CONFIG).write_text(_config_text(config), encoding="utf-8")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, folder / _tokenizer_name(tokenizer))
    if train_state is not None:
        state = {"rng": capture_rng(), **train_state, "step": step}
        check_plain(state, "train_state")
        _save_state(state, folder / TRAIN_STATE)
    write_meta(folder, step, weights_hash(folder), metrics)


def write_meta(folder: Path, step: int, weights_sha256: str, metrics: Mapping | None = None, **extra: Any) -> None:
    """Finish a checkpoint folder: ``meta.json`` (versions, step, metrics, weights hash, the file list, ``extra``),
    then every file and the folder flushed to disk. Every writer of checkpoint folders ends with this."""
    files = sorted([*(p.name for p in folder.iterdir()), META])
    meta = {"format_version": FORMAT_VERSION, "vattcli_version": vattcli.__version__,
            "torch_version": torch.__version__, "step": step, "metrics": dict(metrics or {}),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "weights_hash": weights_sha256, "files": files, **extra}
    (folder / META).write_text(json.dumps(meta, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    for name in files:
        _fsync(folder / name)
    _fsync(folder)


class _Sink:
    """The file ``torch.save`` writes through, keeping the ``OSError`` of a failed write: torch reports it as a
    ``RuntimeError`` without the errno, and a full disk must read as one."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def _save_state(state: Mapping[str, Any], path: Path) -> None:
    with open(path, "wb") as f:
        sink = _Sink(f)
        try:
            torch.save(state, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None


def _free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:,.1f} MiB free"
    except OSError:
        return "free space unknown"


def _undo_save(tmp: Path, trash: Path, final: Path) -> None:
    """Remove the half-written folder; put back the previous checkpoint of that step if it was moved aside."""
    shutil.rmtree(tmp, ignore_errors=True)
    if trash.exists() and not final.exists():
        os.replace(trash, final)


def save_checkpoint(run_dir: str | os.PathLike[str], step: int, model: nn.Module, *,
                    config: str | Mapping | None = None, tokenizer: str | os.PathLike[str] | None = None,
                    train_state: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/ckpt-<step:08d>/`` atomically and return it; an existing folder of that step is replaced.

    ``train_state`` (optimizer/scheduler state dicts, epoch, data position, ...) is stored with ``step`` and the
    RNG states from ``capture_rng`` added; without it no ``train_state.pt`` is written. An error of the operating
    system (a full disk, a read-only or vanished folder) is one ``CheckpointError`` naming the folder and its free
    space, with the temporary folder removed.
    """
    if step < 0:
        raise CheckpointError(f"checkpoint step: expected a non-negative integer, got {step}")
    run = Path(run_dir)
    final = run / f"ckpt-{step:08d}"
    tmp = run / f"{TMP_PREFIX}{step:08d}-{os.getpid()}"
    trash = tmp.with_name(tmp.name + ".old")
    try:
        run.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(run)
        for stale in (tmp, trash):
            shutil.rmtree(stale, ignore_errors=True)
        _write_folder(tmp, step, model, config, None if tokenizer is None else Path(tokenizer), train_state, metrics)
        if final.exists():
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, final)
        _fsync(run)
    except OSError as e:
        _undo_save(tmp, trash, final)
        if e.errno is None:  # raised by Python code, not by the system: not a condition of the disk
            raise
        raise CheckpointError(f"{run}: cannot save checkpoint {final.name}: {e.strerror or os.strerror(e.errno)} "
                              f"({_free_space(run)})") from e
    except BaseException:
        _undo_save(tmp, trash, final)
        raise
    return final


# ---------------------------------------------------------------------------------------------- reading

def read_meta(ckpt_dir: str | os.PathLike[str]) -> dict:
    """The checkpoint's ``meta.json``."""
    path = Path(ckpt_dir) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not found (incomplete or not a checkpoint folder)") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if isinstance(meta, dict) and meta.get("kind") == TOWER_KIND:
        raise CheckpointError(f"{path.parent}: an exported {meta.get('tower', '')} tower, not a checkpoint; export "
                              f"from the checkpoint folder ({meta.get('checkpoint') or 'the one that was exported'})")
    if not isinstance(meta, dict) or not isinstance(meta.get("weights_hash"), str):
        raise CheckpointError(f"{path}: expected a JSON object with a weights_hash")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta['format_version']} is newer than this vatt reads "
                              f"({FORMAT_VERSION}); upgrade vatt")
    return meta


def read_config(ckpt_dir: str | os.PathLike[str]) -> dict:
    """The resolved config stored with the checkpoint."""
    path = Path(ckpt_dir) / CONFIG
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read config ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping")
    return config


def tokenizer_path(ckpt_dir: str | os.PathLike[str]) -> Path | None:
    """The tokenizer file stored with the checkpoint, if any."""
    found = [Path(ckpt_dir) / n for n in TOKENIZER_NAMES.values() if (Path(ckpt_dir) / n).is_file()]
    return found[0] if found else None


def _incomplete_reason(ckpt: Path, verify: bool) -> str | None:
    try:
        meta = read_meta(ckpt)
    except CheckpointError as e:
        return str(e)
    absent = [name for name in meta.get("files", [WEIGHTS]) if not (ckpt / name).is_file()]
    if absent:
        return f"{ckpt}: files listed in {META} are missing: {listed(absent)}"
    if verify and weights_hash(ckpt) != meta["weights_hash"]:
        return (f"{ckpt / WEIGHTS}: sha256 does not match the weights_hash in {META} (corrupted or modified); "
                "--no-verify to load anyway")
    return None


def is_complete(ckpt_dir: str | os.PathLike[str], *, verify: bool = False) -> bool:
    """True when ``meta.json`` exists and its files are there (and, with ``verify``, the weights hash matches)."""
    return _incomplete_reason(Path(ckpt_dir), verify) is None


def _steps(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` for every ``ckpt-<step>`` folder, newest first; temp folders never match."""
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CKPT_RE.fullmatch(p.name))]
    return sorted(found, reverse=True)


def _latest(run_dir: Path, verify: bool) -> Path | None:
    """The newest complete checkpoint. With ``verify`` a corrupted newest one is an error: it is never passed over
    in silence for an older one."""
    if not run_dir.is_dir():
        return None
    found = next((p for _, p in _steps(run_dir) if _incomplete_reason(p, False) is None), None)
    return _checked(found, True) if found is not None and verify else found


def _towers(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder`` written by ``vatt export`` (a tower's ``meta.json`` has its kind)."""
    names = []
    for meta in sorted(folder.glob(f"*/{META}")):
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("kind") == TOWER_KIND:
                names.append(meta.parent.name)
        except (OSError, ValueError, AttributeError):
            continue
    return names


def _folder_of(file: Path) -> Path:
    """``--ckpt RUN/ckpt-X/model.safetensors`` (or another file of a checkpoint) stands for its folder."""
    if file.name in (WEIGHTS, META, CONFIG, TRAIN_STATE) or (file.parent / META).is_file():
        return file.parent
    raise CheckpointError(f"{file}: a file, not a checkpoint; pass the checkpoint folder (ckpt-<step>/, holding "
                          f"{WEIGHTS} and {META}) or its run folder")


def _best_record(run_dir: Path) -> dict | None:
    path = run_dir / BEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(record, dict) or not _CKPT_RE.fullmatch(str(record.get("checkpoint", ""))):
        raise CheckpointError(f"{path}: expected {{\"checkpoint\": \"ckpt-<step>\", ...}}")
    return record


def _checked(ckpt: Path, verify: bool) -> Path:
    reason = _incomplete_reason(ckpt, verify)
    if reason is not None:
        raise CheckpointError(reason)
    return ckpt


def find_checkpoint(spec: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None, *,
                    verify: bool = True) -> Path:
    """Resolve ``spec`` to a complete checkpoint folder, or raise ``CheckpointError`` naming what was looked at.

    ``spec`` is ``"latest"`` (highest step among complete ones in ``run_dir``), ``"best"`` (the one ``best.json`` in
    ``run_dir`` names), ``<run>/ckpt-latest`` or ``<run>/ckpt-best`` (the same for ``<run>``), a checkpoint folder, a
    file in one (``.../model.safetensors``), or a run folder (its latest). ``verify`` (the default; ``--no-verify``
    turns it off) checks the weights' sha256 against ``meta.json``: see the module docstring for its cost.
    """
    text = os.fspath(spec)
    if text in ("latest", "best"):
        if run_dir is None:
            raise CheckpointError(f"checkpoint {text!r}: needs a run folder to look in")
        run, which = Path(run_dir), text
    else:
        path = _folder_of(Path(text)) if Path(text).is_file() else Path(text)
        if path.name in ("ckpt-latest", "ckpt-best") and not path.exists():
            run, which = path.parent, path.name[len("ckpt-"):]
        elif not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint folder not found")
        elif _CKPT_RE.fullmatch(path.name) or (path / META).exists() or (path / WEIGHTS).exists():
            return _checked(path, verify)
        else:
            run, which = path, "latest"
    if which == "latest":
        found = _latest(run, verify)
        towers = _towers(run) if found is None and run.is_dir() else []
        if towers:
            raise CheckpointError(f"{run}: holds exported towers ({', '.join(towers)}), not a checkpoint; export from "
                                  "the checkpoint folder")
        if found is None:
            raise CheckpointError(f"{run}: no complete checkpoint (ckpt-<step>/ with {META}) found")
        return found
    record = _best_record(run)
    if record is None:
        raise CheckpointError(f"{run / BEST}: not found, so there is no best checkpoint (saved without a metric?)")
    return _checked(run / record["checkpoint"], verify)
