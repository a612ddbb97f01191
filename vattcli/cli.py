"""The ``vatt`` command line: one thin function per subcommand (parse, call the library, print)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import typer
import typer.main
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vattcli import __version__
from vattcli.commands import convert as convert_commands
from vattcli.commands import evaluate as evaluate_commands
from vattcli.commands import export as export_commands
from vattcli.commands import retrieve as retrieve_commands
from vattcli.commands import serve as serve_commands
from vattcli.commands import train as train_commands
from vattcli.commands.index import app as index_app
from vattcli.commands.preprocess import app as preprocess_app
from vattcli.errors import VattError

app = typer.Typer(name="vatt", rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
                  help="VATT: Transformers for multimodal self-supervised learning from raw video, audio and text.")
recipes_app = typer.Typer(no_args_is_help=True, help="List, show and copy the shipped YAML recipes.")
app.add_typer(recipes_app, name="recipes")
app.add_typer(preprocess_app, name="preprocess")
app.add_typer(index_app, name="index")
app.command("pretrain")(train_commands.pretrain)
app.command("finetune")(train_commands.finetune)
app.command("evaluate")(evaluate_commands.evaluate)
app.command("retrieve")(retrieve_commands.retrieve)
app.command("serve")(serve_commands.serve)
app.command("export")(export_commands.export)
app.command("convert")(convert_commands.convert)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

OVERRIDES_HELP = "Dotted overrides such as [bold]model.droptoken_rate=0.25[/] or [bold]model.video=medium[/]."


def _version(value: bool) -> None:
    if value:
        console.print(f"vatt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                                  help="Print the version and exit.")) -> None:
    """VATT in PyTorch: [bold]preprocess[/] data, [bold]pretrain[/], [bold]finetune[/], [bold]evaluate[/],
    [bold]retrieve[/] and [bold]export[/]. Each command takes a YAML recipe plus key=value overrides."""


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes."""
    from vattcli.config import RECIPES_DIR, list_recipes

    table = Table("recipe", "first line", title=f"recipes in {RECIPES_DIR}")
    for name in list_recipes():
        first = (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[:1]
        table.add_row(name, first[0].lstrip("# ") if first else "")
    console.print(table)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="A recipe name (e.g. models/vatt-bbs) or a YAML path."),
                 overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP)) -> None:
    """Print a recipe fully resolved (defaults filled in, overrides applied, types checked)."""
    from vattcli.config import ModelRecipe, dump_yaml, load_config, recipe_path
    from vattcli.train.config import FinetuneConfig, PretrainConfig

    path = recipe_path(name)
    kind = path.parent.name
    cls = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}.get(kind, ModelRecipe)
    console.print(f"# {path}", style="dim")
    console.print(dump_yaml(load_config(cls, str(path), overrides or [])), end="", markup=False)


@recipes_app.command("copy")
def recipes_copy(name: str = typer.Argument(..., help="A recipe name, e.g. models/vatt-tiny."),
                 dest: Path = typer.Argument(..., help="Where to write the copy to edit.")) -> None:
    """Copy a shipped recipe to edit it (then pass its path to any command)."""
    from vattcli.config import recipe_path

    src = recipe_path(name)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists():
        raise VattError(f"{dest} already exists; choose another path")
    shutil.copyfile(src, dest)
    console.print(f"copied {src} -> {dest}")


@app.command("info")
def info(model: str = typer.Argument("vatt-bbs", help="A model recipe name or path (see `vatt recipes list`)."),
         overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
         frames: int = typer.Option(32, help="Video frames for the FLOP count."),
         size: int = typer.Option(224, help="Video crop size for the FLOP count."),
         audio_samples: int = typer.Option(153_600, help="Waveform samples for the FLOP count."),
         print_config: bool = typer.Option(False, "--print-config", help="Print the resolved model config.")) -> None:
    """Parameter counts per tower and FLOPs per sample for a model (counted on meta tensors: instant)."""
    import torch

    from vattcli.api import build_model, estimate_flops
    from vattcli.config import ModelRecipe, dump_yaml, load_config

    cfg = load_config(ModelRecipe, model, overrides or [], kind="models").model
    if print_config:
        console.print(dump_yaml(ModelRecipe(cfg)), end="", markup=False)
        return
    net = build_model(cfg, device=torch.device("meta"))
    table = Table("part", "parameters (M)", title=f"{cfg.name}")
    for part in ("video", "audio", "text", "head"):
        table.add_row(part, f"{net.num_params(getattr(net, part)) / 1e6:.1f}")
    table.add_row("total (shared counted once)", f"{net.num_params() / 1e6:.1f}")
    console.print(table)
    words, head = net.text.embedding.table.weight.numel(), net.num_params(net.head)
    console.print(f"The paper's sizes (e.g. 197 M for VATT-BBS, Tab 7) count the Transformers only; without the "
                  f"{words / 1e6:.1f} M word table (frozen word2vec in the release) and the {head / 1e6:.1f} M heads "
                  f"this model has {(net.num_params() - words - head) / 1e6:.1f} M.", highlight=False)
    for label, kw in (("inference, all tokens", {}), ("training, DropToken", {"droptoken": True, "training": True})):
        f = estimate_flops(cfg, video_shape=(frames, size, size), audio_samples=audio_samples, **kw)
        console.print(f"{label}: video {f.video / 1e9:.1f}, audio {f.audio / 1e9:.1f}, text {f.text / 1e9:.2f}, "
                      f"total {f.total / 1e9:.1f} GFLOPs per sample")


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so ``finally`` blocks and context managers (folder locks, temporary files)
    clean up as they do for Ctrl-C. A ``KeyboardInterrupt`` subclass: code that stops cleanly on Ctrl-C stops the same
    way here; ``exit_code`` tells such code which status to exit with."""

    exit_code = 143


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _hide_flag_types(command: Any) -> None:
    """Typer's rich help (0.29) prints a value type for every option, so flags (``--print-config``, ``--help``) read
    ``<bool>`` as if they took a value; an empty metavar blanks that column for flags only, in every subcommand."""
    params = list(command.params)
    help_option = command.get_help_option(typer.Context(command))
    for param in [*params, *([help_option] if help_option is not None else [])]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)


def _usage_error(e: typer.TyperException) -> int:
    """A usage error of typer's parser (unknown option, missing or bad value, unknown command): one line, a hint."""
    if type(e).__name__ == "NoArgsIsHelpError":  # no arguments: help already printed (typer tests it by name too)
        return 2
    err_console.print(f"[bold red]error:[/] {escape(e.format_message())}", highlight=False)
    ctx = getattr(e, "ctx", None)
    err_console.print(f"try '{ctx.command_path if ctx is not None else 'vatt'} --help'", markup=False,
                      highlight=False)
    return 2


def _crash_log(text: str) -> Path:
    """Write ``text`` to ``$VATT_HOME/logs`` (default ``~/.vatt/logs``), else to the system temp folder."""
    name = f"vatt-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    home = Path(os.environ.get("VATT_HOME") or "~/.vatt").expanduser() / "logs"
    for folder in (home, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    raise OSError(f"could not write {name} to {home} or the temp folder")


def _lost_peer(e: Exception) -> bool:
    """A collective failed because another training process went away (killed, crashed, its node lost): torch raises
    ``DistError`` subclasses, gloo sometimes a plain RuntimeError naming the broken connection."""
    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is not None and isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("Connection reset by peer" in text or "Connection closed by peer" in text)


def _bug(e: Exception) -> int:
    """An exception no command expected is a bug: one line naming the log file that keeps the traceback. A training
    process that lost its peers is no bug, but not bad input either: it exits 1 too, so a launcher (torchrun
    ``--max-restarts``, the Slurm example) restarts the group, which resumes from the latest checkpoint."""
    summary = (str(e).strip().splitlines() or [""])[0][:200]
    what = f"{type(e).__name__}: {summary}" if summary else type(e).__name__
    try:
        where = f"the traceback is in {_crash_log(traceback.format_exc())}"
    except OSError:
        where = "no log file could be written (set VATT_HOME to a writable folder)"
    if _lost_peer(e):
        err_console.print(f"[bold red]error:[/] lost contact with another training process ({escape(what)}); a "
                          f"restarted group resumes from the latest checkpoint with --resume auto; {where}",
                          highlight=False)
        return 1
    err_console.print(f"[bold red]error:[/] internal error ({escape(what)}); this is a bug, please report it; {where}",
                      highlight=False)
    return 1


def _pipe_closed() -> int:
    """The reader of our output went away (``vatt recipes list | head -1``): exit as a shell does on SIGPIPE, without
    a second error when the interpreter flushes stdout at exit (the recipe of Python's ``signal`` docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _run(argv: list[str] | None) -> int:
    command = typer.main.get_command(app)
    _hide_flag_types(command)
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with command.make_context("vatt", args) as ctx:
            command.invoke(ctx)
    except VattError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # typer vendors click; from 0.27.3 on its usage errors derive from this
        return _usage_error(e)
    except (typer.Abort, KeyboardInterrupt) as e:
        code = getattr(e, "exit_code", 130)
        err_console.print(f"stopped by {'SIGTERM' if code == 143 else 'SIGINT'}", highlight=False)
        return code
    except BrokenPipeError:
        return _pipe_closed()
    except Exception as e:
        return _bug(e)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit codes are a contract (design.md): 0 success, 2 bad input or usage (one line), 130/143 stopped
    by SIGINT/SIGTERM, 1 only for a bug (one line naming the log file with the traceback)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main() called from a worker thread): leave signals alone
        previous = None
    try:
        code = _run(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _pipe_closed()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
