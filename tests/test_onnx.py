"""`vatt export --format onnx` through the installed `vatt`: every tower of a modality-specific and a VATT-MA vatt-tiny
loads in ONNX Runtime at its DEFAULT graph optimisation (the MS text tower used to be refused there: a same-type Cast
in RMSNorm, microsoft/onnxruntime#32416) and gives the full PyTorch model's outputs within 1e-4 at batch 1 and 3, at
two caption lengths and at clip sizes other than the export's (dynamic axes; positions resampled in the graph).

Skipped unless the onnx extra is installed (`pip install -e '.[onnx]'`; CI installs it with `make EXTRAS=dev,onnx`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")

from test_export import CAPTIONS, make_checkpoint  # noqa: E402  (after the skips: they need nothing of onnx)

from vattcli.api import load_model  # noqa: E402
from vattcli.data.text import train_tokenizer  # noqa: E402

VATT = Path(sys.executable).parent / "vatt"
OUTPUTS = {"video": ["video_features", "video_va", "video_vt"], "audio": ["audio_features", "audio_va"],
           "text": ["text_features", "text_vt", "text_valid"]}
# vatt-tiny's export shapes (the recipe's clip: 8 frames of 64 px, 0.8 s at 16 kHz; 16-token captions) and others
SIGNALS = {"video": [(1, 3, 8, 64, 64), (3, 3, 8, 64, 64), (3, 3, 12, 48, 80)],
           "audio": [(1, 12800), (3, 12800), (3, 16037)]}
FREE_AXES = {"video": ["batch", 3, "frames", "height", "width"], "audio": ["batch", "samples"],
             "text": ["batch", "length"]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict]:
    """An MS and an MA checkpoint, each exported with `--tower all --format onnx` by the installed CLI."""
    root = tmp_path_factory.mktemp("onnx")
    tok = train_tokenizer(CAPTIONS * 4, root / "sp", vocab_size=40)
    runs = {}
    for kind, overrides in (("ms", ()), ("ma", ("model.shared=true",))):
        ckpt = make_checkpoint(root / kind, tok, *overrides)
        out = root / f"{kind}-onnx"
        proc = subprocess.run([str(VATT), "export", str(ckpt), "--format", "onnx", "--tower", "all", "--out",
                               str(out)], capture_output=True, text=True, timeout=300)
        runs[kind] = {"ckpt": ckpt, "out": out, "code": proc.returncode, "stderr": proc.stderr}
    return runs


def text_inputs(batch: int, length: int) -> torch.Tensor:
    """Captions of ``length`` ids: the first full, the second padded after 3 ids, the third all padding."""
    ids = torch.randint(1, 512, (batch, length), generator=torch.Generator().manual_seed(length))
    if batch == 3:
        ids[1, 3:] = 0
        ids[2] = 0
    return ids


def signal_inputs(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) * 2 - 1


@pytest.mark.parametrize("kind", ["ms", "ma"])
def test_tower_all_writes_three_onnx_towers_and_exits_0(exported, kind):
    run = exported[kind]
    assert run["code"] == 0, run["stderr"]
    assert [line.split()[0] for line in run["stderr"].splitlines() if line.strip()] == ["exported"] * 3
    assert sorted(p.name for p in run["out"].iterdir()) == ["audio", "text", "video"]  # nothing temporary left
    for tower in OUTPUTS:
        folder = run["out"] / tower
        want = {"config.yaml", "meta.json", "model.onnx"} | ({"tokenizer.model"} if tower == "text" else set())
        assert {p.name for p in folder.iterdir()} == want
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["file_format"] == "onnx" and meta["onnx_max_abs_diff"] <= 1e-4
        graph = onnx.load(str(folder / "model.onnx")).graph
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert [graph.input[0].name, dims] == [tower, FREE_AXES[tower]]
        assert [o.name for o in graph.output] == OUTPUTS[tower]
        assert all(o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in graph.output)


@pytest.mark.parametrize("kind", ["ms", "ma"])
@pytest.mark.parametrize("tower", ["video", "audio", "text"])
def test_onnx_runtime_at_default_optimisation_matches_pytorch(exported, kind, tower):
    run = exported[kind]
    assert run["code"] == 0, run["stderr"]
    assert ort.SessionOptions().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(run["out"] / tower / "model.onnx"), providers=["CPUExecutionProvider"])
    full = load_model(run["ckpt"]).eval()
    cases = ([text_inputs(b, n) for n in (16, 7) for b in (1, 3)] if tower == "text"
             else [signal_inputs(shape) for shape in SIGNALS[tower]])
    for x in cases:
        got = dict(zip(OUTPUTS[tower], session.run(None, {tower: x.numpy()})))
        with torch.no_grad():
            want = full(**{tower: x})
        for name in OUTPUTS[tower]:
            assert got[name].shape == tuple(want[name].shape), (name, tuple(x.shape))
            if name == "text_valid":
                assert got[name].tolist() == ([True] if len(x) == 1 else [True, True, False])
            else:
                err = (torch.from_numpy(got[name]).double() - want[name].double()).abs().max().item()
                assert err <= 1e-4, (name, tuple(x.shape), err)
