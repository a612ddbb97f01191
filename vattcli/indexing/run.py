"""``vatt index build`` / ``add`` / ``merge`` end to end: which files, which part, the build folder's settings, the
lock, indexing the part, and the merge (by the single process, or rank 0 of a ``torchrun`` job once every rank's
part is done; ``vatt index merge`` after separate ``--part`` jobs)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from vattcli.data.parts import Part, part_of
from vattcli.errors import VattError
from vattcli.indexing.build import BuildSettings, PartReport, index_part
from vattcli.indexing.chunks import BUILD, DONE, part_folders, part_name, write_json
from vattcli.indexing.merge import NothingIndexed, complete_chunks, merge_into, skipped_sources
from vattcli.locking import FolderLock
from vattcli.retrieval.index import RetrievalIndex
from vattcli.retrieval.names import build_folder

POLL_SECONDS = 2.0


@dataclass
class Job:
    """One run of ``vatt index build`` or ``add``: the index, its build folder, this process's part."""

    target: Path
    files: list[Path]
    settings: BuildSettings
    part: Part
    from_torchrun: bool
    resume: bool
    overwrite: bool
    base: RetrievalIndex | None  # the index ``add`` extends
    recorded: dict[str, Any]  # what build.json holds: every part and every resume must agree on it
    command: str  # the command line to repeat (resume hints)
    write: dict[str, Any]  # how the merge writes the index (RetrievalIndex.write's keywords, dims), kept in build.json

    @property
    def build(self) -> Path:
        return build_folder(self.target)

    @property
    def part_folder(self) -> Path:
        return self.build / part_name(self.part.index, self.part.count)


def share(files: list[Path], part: Part, root: Path | None) -> list[Path]:
    """This part's files: the split is a hash of each path (relative to ``root`` when given), so every part computes
    the same split whatever the order of the listing."""
    if part.count == 1:
        return files
    def name(path: Path) -> str:
        return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else str(path)
    return [f for f in files if part_of(name(f), part.count) == part.index]


def settings_hash(recorded: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]


def prepare(job: Job) -> None:
    """Check or write the build folder's settings; ``--overwrite`` clears this part (and parts of another split)."""
    build, path = job.build, job.build / BUILD
    if job.overwrite:
        for index, (count, folder) in part_folders(build).items():
            if count != job.part.count or index == job.part.index:
                shutil.rmtree(folder, ignore_errors=True)
    elif path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if not job.resume and job.part.count == 1:
            raise VattError(f"{build}: a build of index {job.target.name!r} is in progress there; pass --resume to go "
                            "on with it or --overwrite to start again")
        if found.get("hash") != settings_hash(job.recorded):
            changed = sorted(k for k in job.recorded if found.get("settings", {}).get(k) != job.recorded[k])
            raise VattError(f"{build}: the build in progress was started with other settings ({', '.join(changed)}); "
                            "repeat its command with --resume, or pass --overwrite to start again")
    build.mkdir(parents=True, exist_ok=True)
    write_json(path, {"settings": job.recorded, "hash": settings_hash(job.recorded), "index": job.write})


def run_job(job: Job, model: Any, spec: Any, *, device: Any, console: Console, every: float = 10.0,
            on_window: Callable[[int], None] | None = None) -> tuple[RetrievalIndex | None, PartReport]:
    """Index this process's part, then merge when this process is the one that merges (returns the index), else
    None (a ``--part`` job, or a torchrun rank other than 0)."""
    prepare(job)
    write = dict(job.write)
    dims = write.pop("dims")
    hint = f"{job.command} --resume"
    with FolderLock(job.part_folder, what="index build", name=".vatt.lock"):
        mine = share(job.files, job.part, job.recorded.get("root") and Path(job.recorded["root"]))
        report = index_part(mine, job.part_folder, model, spec, job.settings, device=device, dims=dims,
                            console=console, resume_hint=hint, every=every, on_window=on_window)
    if job.part.count > 1 and not (job.from_torchrun and job.part.index == 1):
        return None, report
    if job.part.count > 1:
        wait_for_parts(job.build, job.part.count, console)
    index = merge(job.target, base=job.base, dims=dims, resume_hint=job.command, overwrite=job.overwrite,
                  console=console, **write)
    return index, report


def merge_recorded(target: Path, search: str | None, memory_budget: int | None, console: Console,
                   resume_hint: str) -> RetrievalIndex:
    """``vatt index merge``: the parts of separate ``--part`` jobs, written as their ``build.json`` says (``search``
    and ``memory_budget``: as recorded unless given)."""
    build = build_folder(target)
    try:
        recorded = json.loads((build / BUILD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VattError(f"{target.name}: no build in progress to merge (no {build / BUILD})") from None
    write = dict(recorded["index"])
    write.update({k: v for k, v in (("search", search), ("memory_budget", memory_budget)) if v is not None})
    dims = write.pop("dims")
    extends = recorded["settings"].get("extends")
    base = RetrievalIndex.load(extends) if extends else None
    return merge(target, base=base, dims=dims, resume_hint=resume_hint, overwrite=base is None and target.exists(),
                 console=console, **write)


def wait_for_parts(build: Path, count: int, console: Console, timeout: float | None = None) -> None:
    """Rank 0 of a torchrun job waits for every other rank's ``done.json`` (a rank that fails ends the whole job)."""
    started = last = time.monotonic()
    while True:
        missing = [i for i in range(1, count + 1) if not (build / part_name(i, count) / DONE).is_file()]
        if not missing:
            return
        now = time.monotonic()
        if timeout is not None and now - started > timeout:
            raise VattError(f"{build}: parts {missing[:5]} still not finished after {timeout:.0f} s")
        if now - last > 60:
            console.print(f"waiting for {len(missing)} more part(s) to finish before merging", markup=False)
            last = now
        time.sleep(POLL_SECONDS)


def merge(target: Path, *, base: RetrievalIndex | None, dims: dict[str, int], resume_hint: str, overwrite: bool,
          console: Console, **write: Any) -> RetrievalIndex:
    """Join the finished parts into ``target`` and remove the build folder. The skipped files are reported first;
    a build whose every file was skipped is removed too (each file was tried: there is nothing to resume)."""
    build = build_folder(target)
    with FolderLock(build, what="index merge", name=".vatt.merge.lock"):
        chunks = complete_chunks(build, resume_hint)
        for reason, sources in sorted(skipped_sources(chunks).items()):
            message = sources[0].get("message") or reason
            example = message if message.startswith(sources[0]["path"]) else f"{sources[0]['path']}: {message}"
            console.print(f"skipped {len(sources)} file(s) ({reason}), e.g. {example}", markup=False,
                          highlight=False, soft_wrap=True)
        try:
            index = merge_into(chunks, target, base=base, dims=dims, overwrite=overwrite, **write)
        except NothingIndexed:
            shutil.rmtree(build, ignore_errors=True)
            raise
    shutil.rmtree(build, ignore_errors=True)
    return index


def describe_search(index: RetrievalIndex) -> str:
    parts = []
    for space, plan in (index.info.get("search") or {}).items():
        if plan.get("kind") == "exact":
            parts.append(f"{space}: exact")
        else:
            parts.append(f"{space}: {plan.get('factory', plan.get('kind'))}, nprobe {plan.get('nprobe')}, "
                         f"recall@10 {plan.get('recall_at_10', float('nan')):.3f}")
    return "; ".join(parts)


def recall_warnings(index: RetrievalIndex) -> list[str]:
    """One line per space whose approximate index did not reach its recall target (the measured recall is kept and
    used: the user decides whether exact search is worth its time)."""
    return [f"warning: {space}: the approximate index reaches recall@10 {plan.get('recall_at_10', 0):.3f}, below "
            f"the target {plan.get('target_recall', 0.95):.2f}, even scanning {plan.get('nprobe')} of "
            f"{plan.get('nlist')} lists; rebuild with --search exact for exact results"
            for space, plan in (index.info.get("search") or {}).items()
            if plan.get("kind") != "exact" and plan.get("target_met") is False]
