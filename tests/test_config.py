"""Recipes, overrides and their validation; the CLI frame around them."""

from __future__ import annotations

import pytest
import yaml

from vattcli.cli import main
from vattcli.config import ModelRecipe, dump_yaml, from_dict, load_config, parse_overrides
from vattcli.core.model import SIZES
from vattcli.errors import ConfigError


def test_overrides_parse_to_nested_typed_values():
    assert parse_overrides(["a.b=1", "a.c=0.5", "d=[1, 2]", "e=true", "f=medium"]) == {
        "a": {"b": 1, "c": 0.5}, "d": [1, 2], "e": True, "f": "medium"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_named_sizes_and_overrides_resolve():
    cfg = load_config(ModelRecipe, "vatt-bbs", ["model.video=large", "model.droptoken_rate=0.25"], kind="models")
    assert cfg.model.video == SIZES["large"] and cfg.model.audio == SIZES["base"]
    assert cfg.model.droptoken_rate == 0.25
    cfg = load_config(ModelRecipe, "vatt-tiny", ["model.video.num_layers=3"], kind="models")
    assert cfg.model.video.num_layers == 3 and cfg.model.video.d_model == 64


def test_unknown_key_names_key_file_and_close_match(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  droptokn_rate: 0.3\n")
    with pytest.raises(ConfigError) as e:
        load_config(ModelRecipe, str(path))
    msg = str(e.value)
    assert str(path) in msg and "model.droptokn_rate" in msg and "droptoken_rate" in msg and "\n" not in msg


@pytest.mark.parametrize("override,expected", [
    ("model.video.num_layers=abc", "expected an integer"),
    ("model.shared=3", "expected true or false"),
    ("model.video_grid=[8, 14]", "list of 3 items"),
    ("model.head_variant=other", "one of 'code', 'paper'"),
    ("model.video=huge", "unknown backbone size"),
    ("model.dropout=[1]", "expected a number"),
])
def test_wrong_types_are_rejected_with_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(ModelRecipe, "vatt-tiny", [override], kind="models")
    assert override.split("=")[0].split(".")[1] in str(e.value)


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(ModelRecipe, "vatt-ma-medium", kind="models")
    again = from_dict(ModelRecipe, yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_missing_recipe_suggests_a_close_name():
    with pytest.raises(ConfigError, match="did you mean .vatt-tiny."):
        load_config(ModelRecipe, "vatt-tinyy", kind="models")


def test_cli_reports_user_errors_as_one_line_and_exit_2(capsys):
    assert main(["info", "vatt-tiny", "model.foo=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.foo'" in err and "Traceback" not in err


def test_cli_print_config_and_info(capsys):
    assert main(["info", "vatt-bbs", "model.droptoken_rate=0.75", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["droptoken_rate"] == 0.75 and printed["model"]["video"]["d_model"] == 768
    assert main(["info", "vatt-mbs"]) == 0
    assert "154.3" in capsys.readouterr().out  # Medium video tower, in millions (paper: 155.0)


def test_cli_version(capsys):
    assert main(["--version"]) == 0
    assert "vatt 0.1.0" in capsys.readouterr().out
