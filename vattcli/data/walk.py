"""Finding the media files an index is built from: a folder walked recursively, or a list file with one path a line.

Both return each file once, in an order that does not depend on the file system (a folder: sorted by relative POSIX
path; a list: the list's order), so ranks of a ``torchrun`` job that split the list by position agree on who takes
which file, and a resumed build sees the same list.
"""

from __future__ import annotations

import os
from pathlib import Path

from vattcli.data.media_io import open_input
from vattcli.errors import DataError, MediaError

MEDIA_SUFFIXES: frozenset[str] = frozenset({
    # video containers
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".qt", ".avi", ".mpg", ".mpeg", ".m2v", ".ts", ".mts", ".m2ts",
    ".flv", ".f4v", ".wmv", ".asf", ".3gp", ".3g2", ".ogv", ".vob", ".mxf", ".dv", ".divx", ".y4m",
    # audio containers
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff", ".ac3", ".amr",
    ".mka", ".caf", ".weba", ".mp2",
})

# FFmpeg demuxers that open things which are not footage: still images (also as *_pipe) and text shown as video.
_NOT_FOOTAGE_FORMATS = frozenset({"image2", "tty", "gif", "apng"})


def _file_id(path: Path) -> tuple[int, int]:
    """(device, inode) of what ``path`` points to: one id for a file, its hard links and the symlinks to it."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _opens_as_footage(path: Path) -> bool:
    """True when FFmpeg opens ``path`` with a video or audio stream and not as a still image or text."""
    try:
        with open_input(path) as container:
            names = set(container.format.name.split(","))
            if names & _NOT_FOOTAGE_FORMATS or any(name.endswith("_pipe") for name in names):
                return False
            return bool(container.streams.video or container.streams.audio)
    except MediaError:
        return False


def _raise_walk_error(err: OSError) -> None:
    raise DataError(f"{err.filename}: cannot list this folder ({err.strerror})") from err


def find_media(root: Path, *, probe_unknown: bool = False) -> list[Path]:
    """Media files under ``root`` (recursive), sorted by path relative to ``root`` (POSIX form).

    A file counts when its suffix (any case) is in ``MEDIA_SUFFIXES``; with ``probe_unknown`` also when FFmpeg opens
    it with a video or audio stream (still images and text that FFmpeg would show as video excepted). Skipped:
    hidden files and folders (name starting with '.'), anything that is not a regular file, folders reached through
    symlinks (never descended, so no loops; a symlink to a file is followed), and a second path to a file already
    found (a symlink or hard link to it): each file is indexed once, under the first path in sorted order.
    Raises DataError when ``root`` is not a folder or a folder under it cannot be listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a folder of video or audio files)")
    candidates = []
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=_raise_walk_error):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() in MEDIA_SUFFIXES or (probe_unknown and _opens_as_footage(path)):
                candidates.append(path)
    found, seen = [], set()
    for path in sorted(candidates, key=lambda p: p.relative_to(root).as_posix()):
        if _file_id(path) not in seen:
            seen.add(_file_id(path))
            found.append(path)
    return found


def _list_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file (expected one media path per line)") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read the file list ({err.strerror})") from err


def read_file_list(path: Path) -> list[Path]:
    """The media files a list file names, one path a line, in the list's order.

    Relative paths are relative to the list file's folder; '~' is expanded; surrounding blanks are dropped; blank
    lines and lines starting with '#' are ignored. A line naming a missing file, something that is not a regular
    file, or a file an earlier line already named (the same path, a symlink or a hard link to it) raises a one-line
    DataError naming ``list:line``: a wrong list fails before any work rather than indexing part of it.
    """
    path = Path(path)
    found, seen = [], {}
    for number, line in enumerate(_list_text(path).splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        media = Path(entry).expanduser()
        media = media if media.is_absolute() else path.parent / media
        if not media.exists():
            raise DataError(f"{path}:{number}: {entry}: no such file")
        if not media.is_file():
            raise DataError(f"{path}:{number}: {entry}: not a regular file (expected a video or audio file)")
        file_id = _file_id(media)
        if file_id in seen:
            raise DataError(f"{path}:{number}: {entry}: the same file as line {seen[file_id]} (list each file once)")
        seen[file_id] = number
        found.append(media)
    return found
