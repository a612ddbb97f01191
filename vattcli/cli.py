"""The ``vatt`` command line: one thin function per subcommand (parse, call the library, print)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from vattcli import __version__
from vattcli.commands import evaluate as evaluate_commands
from vattcli.commands import export as export_commands
from vattcli.commands import retrieve as retrieve_commands
from vattcli.commands import train as train_commands
from vattcli.commands.preprocess import app as preprocess_app
from vattcli.errors import VattError

app = typer.Typer(name="vatt", rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
                  help="VATT: Transformers for multimodal self-supervised learning from raw video, audio and text.")
recipes_app = typer.Typer(no_args_is_help=True, help="List, show and copy the shipped YAML recipes.")
app.add_typer(recipes_app, name="recipes")
app.add_typer(preprocess_app, name="preprocess")
app.command("pretrain")(train_commands.pretrain)
app.command("finetune")(train_commands.finetune)
app.command("evaluate")(evaluate_commands.evaluate)
app.command("retrieve")(retrieve_commands.retrieve)
app.command("export")(export_commands.export)
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
    for label, kw in (("inference, all tokens", {}), ("training, DropToken", {"droptoken": True, "training": True})):
        f = estimate_flops(cfg, video_shape=(frames, size, size), audio_samples=audio_samples, **kw)
        console.print(f"{label}: video {f.video / 1e9:.1f}, audio {f.audio / 1e9:.1f}, text {f.text / 1e9:.2f}, "
                      f"total {f.total / 1e9:.1f} GFLOPs per sample")


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes (``VattError``) become one red line and exit code 2, never a traceback."""
    try:
        app(args=argv, standalone_mode=False)
    except VattError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        return 130
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
