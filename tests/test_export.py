"""`vatt export`: each tower, reloaded with `load_tower` alone, reproduces the full model's outputs (modality-specific
and VATT-MA, whose shared encoder each tower must carry), holds exactly the checkpoint's tensors, and the refusals."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

import vattcli.export as export_module
from vattcli.api import build_model, load_model
from vattcli.commands.export import export
from vattcli.config import dump_yaml, load_config
from vattcli.data.text import train_tokenizer
from vattcli.errors import VattError
from vattcli.export import export_checkpoint, load_tower
from vattcli.checkpoints import save_checkpoint
from vattcli.train.config import PretrainConfig

CAPTIONS = [f"a {c} {s} moving {m}" for c in ("red", "blue", "green") for s in ("square", "circle")
            for m in ("left", "right")]
KEYS = {"video": {"video_features", "video_va", "video_vt"}, "audio": {"audio_features", "audio_va"},
        "text": {"text_features", "text_vt", "text_valid"}}


def make_checkpoint(run: Path, tokenizer: Path, *overrides: str) -> Path:
    """A vatt-tiny checkpoint whose BatchNorm statistics and affine parameters are not the identity, so a tower that
    lost them (or ran BN in training mode) would not match."""
    torch.manual_seed(0)
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", ["data.train={s: synthetic}", *overrides])
    model = build_model(cfg.model)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    return save_checkpoint(run, 1, model, config=dump_yaml(cfg), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    tok = train_tokenizer(CAPTIONS * 4, root / "sp", vocab_size=40)
    return {"ms": make_checkpoint(root / "ms", tok), "ma": make_checkpoint(root / "ma", tok, "model.shared=true"),
            "tokenizer": tok}


def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(1, 512, (2, 3, 16), generator=gen)
    text[0, 1, 5:] = 0  # padded caption
    text[1] = 0  # a sample without text (AudioSet-style)
    return {"video": torch.rand(2, 3, 8, 64, 64, generator=gen) * 2 - 1,
            "audio": torch.rand(2, 12800, generator=gen) * 2 - 1, "text": text}


@pytest.mark.parametrize("kind", ["ms", "ma"])
def test_each_tower_alone_reproduces_the_full_model(ckpts, tmp_path, kind):
    export_checkpoint(ckpts[kind], tmp_path / "out")
    full = load_model(ckpts[kind])
    saved = load_file(str(ckpts[kind] / "model.safetensors"))
    x = inputs()
    for tower in ("video", "audio", "text"):
        module = load_tower(tmp_path / "out" / tower)
        assert not module.training
        with torch.no_grad():
            got, want = module(x[tower]), full(**{tower: x[tower]})
        assert set(got) == KEYS[tower]
        for key in KEYS[tower]:
            assert got[key].shape == want[key].shape, key
            assert (got[key].double() - want[key].double()).abs().max() <= 1e-4, (tower, key)
        weights = load_file(str(tmp_path / "out" / tower / "model.safetensors"))
        assert all(k.startswith((f"{tower}.", "head.")) for k in weights)
        assert any(k.startswith(f"{tower}.encoder.") for k in weights)  # MA: the shared encoder travels along
        for key, tensor in weights.items():
            stored = saved.get(key)
            if stored is None:  # MA: the checkpoint stores the shared encoder once, under another tower's name
                alias = json.loads(_metadata(ckpts[kind] / "model.safetensors")["vatt_aliases"])[key]
                stored = saved[alias]
            assert torch.equal(tensor, stored), key


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_tower_folder_has_config_meta_and_tokenizer(ckpts, tmp_path):
    runner = CliRunner()
    app = typer.Typer()
    app.command("export")(export)
    app.callback()(lambda: None)
    result = runner.invoke(app, ["export", str(ckpts["ms"].parent), "--tower", "text", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]
    folder = tmp_path / "text"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "meta.json", "model.safetensors",
                                                        "tokenizer.model"]
    assert (hashlib.sha256((folder / "tokenizer.model").read_bytes()).hexdigest()
            == hashlib.sha256(ckpts["tokenizer"].read_bytes()).hexdigest())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tower"] == "text" and meta["inputs"] == {"text": {"shape": [1, 16], "dtype": "int64"}}
    assert meta["weights_hash"] == hashlib.sha256((ckpts["ms"] / "model.safetensors").read_bytes()).hexdigest()
    result = runner.invoke(app, ["export", str(ckpts["ms"]), "--tower", "text", "--out", str(tmp_path)])
    assert isinstance(result.exception, VattError) and "--overwrite" in str(result.exception)
    result = runner.invoke(app, ["export", str(ckpts["ms"]), "--tower", "text", "--out", str(tmp_path),
                                 "--overwrite"])
    assert result.exit_code == 0, result.output


def test_load_tower_needs_only_the_core(ckpts, tmp_path):
    export_checkpoint(ckpts["ma"], tmp_path, tower="audio")
    script = textwrap.dedent(f"""
        import json, sys, torch
        from vattcli.export import load_tower
        out = load_tower({str(tmp_path / "audio")!r})(torch.zeros(1, 12800))
        assert out["audio_va"].shape == (1, 64)
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("vattcli."))))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if not m.startswith(("vattcli.core", "vattcli.export", "vattcli.errors"))] == []


def test_unknown_tower_and_format_are_refused(ckpts, tmp_path):
    with pytest.raises(VattError, match="video, audio, text"):
        export_checkpoint(ckpts["ms"], tmp_path / "out", tower="lidar")
    with pytest.raises(VattError, match="safetensors, onnx"):
        export_checkpoint(ckpts["ms"], tmp_path / "out", fmt="tflite")
    assert not (tmp_path / "out").exists()


def test_onnx_without_onnx_installed_says_to_install_the_extra(ckpts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(VattError, match="install the onnx extra"):
        export_checkpoint(ckpts["ms"], tmp_path / "out", fmt="onnx")
    assert not (tmp_path / "out").exists()


def test_all_towers_or_none(ckpts, tmp_path, monkeypatch):
    """A tower that fails (here the last, text) takes the towers staged before it along; an earlier export that
    --overwrite would have replaced stays as it was."""
    export_checkpoint(ckpts["ms"], tmp_path, tower="video")
    before = (tmp_path / "video" / "meta.json").read_bytes()
    real = export_module.save_file

    def text_fails(tensors: dict, path: str) -> None:
        if Path(path).parent.name.startswith(".tmp-text-"):
            raise VattError("no space left on the device")
        real(tensors, path)

    monkeypatch.setattr(export_module, "save_file", text_fails)
    with pytest.raises(VattError, match="no space left"):
        export_checkpoint(ckpts["ms"], tmp_path, tower="all", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video"]
    assert (tmp_path / "video" / "meta.json").read_bytes() == before
