"""Checkpoint folders: weights with shared modules and buffers, train state, RNG, atomic writes, finding, pruning."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vattcli.errors import CheckpointError
from vattcli import checkpoints as ck


class Tiny(nn.Module):
    """A Linear registered under two names (like the VATT-MA encoder) and a BatchNorm with running stats."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        shared = nn.Linear(width, width)
        self.x = shared
        self.y = shared
        self.bn = nn.BatchNorm1d(width)
        self.head = nn.Linear(width, 2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.y(self.x(t))))


def trained_tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    m = Tiny()
    m.train()
    m(torch.randn(8, 3) * 4 + 2)  # moves running_mean / running_var / num_batches_tracked away from their defaults
    return m


def save(tmp_path: Path, step: int, model: nn.Module | None = None, **kw) -> Path:
    return ck.save_checkpoint(tmp_path, step, model if model is not None else trained_tiny(), **kw)


def test_round_trip_keeps_every_tensor_buffers_and_sharing(tmp_path: Path) -> None:
    src = trained_tiny(seed=1)
    expected = {k: v.clone() for k, v in src.state_dict().items()}
    ckpt = save(tmp_path, 7, src)
    assert ckpt.name == "ckpt-00000007"
    torch.manual_seed(99)
    dst = Tiny()
    assert not torch.equal(dst.bn.running_mean, expected["bn.running_mean"])
    ck.load_weights(dst, ckpt)
    for name, value in expected.items():
        assert torch.equal(dst.state_dict()[name], value), name
    assert dst.bn.num_batches_tracked.item() == 1
    assert dst.x is dst.y
    assert dst.x.weight.data_ptr() == dst.y.weight.data_ptr()


def test_shared_module_is_stored_once(tmp_path: Path) -> None:
    from safetensors import safe_open

    ckpt = save(tmp_path, 1)
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert len({"x.weight", "y.weight"} & keys) == 1
    assert "bn.running_var" in keys


def test_adam_state_resumes_bit_for_bit(tmp_path: Path) -> None:
    def step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        opt.zero_grad()
        model(torch.randn(6, 3, generator=g)).pow(2).sum().backward()
        opt.step()

    model = trained_tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for seed in range(3):
        step(model, opt, seed)
        sched.step()
    ckpt = ck.save_checkpoint(tmp_path, 3, model, train_state={
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": 1, "data": {"shard": 2, "offset": 17}})
    step(model, opt, 100)  # the uninterrupted run's next step

    resumed = Tiny()
    ck.load_weights(resumed, ckpt)
    state = ck.load_train_state(ckpt)
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizer"])
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    sched2.load_state_dict(state["scheduler"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
    step(resumed, opt2, 100)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert state["step"] == 3 and state["epoch"] == 1 and state["data"] == {"shard": 2, "offset": 17}


def test_rng_round_trip_redraws_the_same_numbers() -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = ck.capture_rng()
    first = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    ck.restore_rng(state)
    assert (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist()) == first


def test_rng_state_survives_the_file(tmp_path: Path) -> None:
    np.random.seed(5)
    ckpt = save(tmp_path, 1, train_state={})
    expected = np.random.randint(0, 1 << 30, size=4).tolist()
    np.random.seed(6)
    ck.restore_rng(ck.load_train_state(ckpt)["rng"])
    assert np.random.randint(0, 1 << 30, size=4).tolist() == expected


def test_train_state_loads_weights_only(tmp_path: Path) -> None:
    ckpt = save(tmp_path, 4, train_state={"extra": [1, 2.5, "x", None, (True,)]})
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    assert state["extra"] == [1, 2.5, "x", None, (True,)]
    assert state["step"] == 4 and set(state["rng"]) >= {"python", "numpy", "torch"}


def test_train_state_with_a_numpy_array_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"train_state\['data'\]\['pos'\].*numpy.ndarray"):
        save(tmp_path, 1, train_state={"data": {"pos": np.zeros(2)}})
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_save_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(path: Path, model: nn.Module) -> None:
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.folder, "_write_weights", half_write)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 5)
    assert list(tmp_path.iterdir()) == []


def test_latest_skips_temp_and_incomplete_folders(tmp_path: Path) -> None:
    save(tmp_path, 2)
    save(tmp_path, 10)
    (tmp_path / "ckpt-00000030").mkdir()  # no meta.json: incomplete
    (tmp_path / "ckpt-00000030" / "model.safetensors").write_bytes(b"x")
    leftover = tmp_path / f"{ck.TMP_PREFIX}00000040-{os.getpid()}"
    leftover.mkdir()
    (leftover / "meta.json").write_text("{}")
    assert ck.find_checkpoint("latest", tmp_path).name == "ckpt-00000010"
    assert ck.find_checkpoint(tmp_path).name == "ckpt-00000010"
    assert ck.find_checkpoint(tmp_path / "ckpt-latest").name == "ckpt-00000010"
    with pytest.raises(CheckpointError, match=r"ckpt-00000030.*meta.json"):
        ck.find_checkpoint(tmp_path / "ckpt-00000030")


def test_latest_orders_by_step_not_name_length(tmp_path: Path) -> None:
    save(tmp_path, 99999999)
    save(tmp_path, 100000000)
    assert ck.find_checkpoint("latest", tmp_path).name == "ckpt-100000000"


def test_no_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*no complete checkpoint"):
        ck.find_checkpoint("latest", tmp_path)
    with pytest.raises(CheckpointError, match="best.json.*not found"):
        ck.find_checkpoint("best", tmp_path)


def test_dead_writers_leftover_is_cleaned_on_next_save(tmp_path: Path) -> None:
    dead = tmp_path / f"{ck.TMP_PREFIX}00000003-999999999"  # above any pid_max: no such process
    dead.mkdir()
    save(tmp_path, 4)
    assert not dead.exists()


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    save(tmp_path, 1, metrics={"loss": 2.0})
    ckpt = save(tmp_path, 1, metrics={"loss": 1.0})
    assert ck.read_meta(ckpt)["metrics"] == {"loss": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001"]


def test_manager_keeps_last_n_and_the_best(tmp_path: Path) -> None:
    manager = ck.CheckpointManager(tmp_path, keep_last=2, mode="max")
    model = trained_tiny()
    for step, acc in [(1, 0.1), (2, 0.9), (3, 0.5), (4, 0.3), (5, 0.2)]:
        manager.save(step, model, metric=acc)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000005"]
    assert manager.best().name == "ckpt-00000002"
    assert ck.find_checkpoint("best", tmp_path).name == "ckpt-00000002"
    assert manager.latest().name == "ckpt-00000005"
    assert json.loads((tmp_path / "best.json").read_text())["metric"] == 0.9


def test_manager_min_mode_and_resumed_best(tmp_path: Path) -> None:
    model = trained_tiny()
    ck.CheckpointManager(tmp_path, keep_last=1, mode="min").save(1, model, metric=0.5)
    manager = ck.CheckpointManager(tmp_path, keep_last=1, mode="min")  # a resumed run reads best.json
    manager.save(2, model, metric=0.7)
    manager.save(3, model, metric=0.4)
    assert manager.best().name == "ckpt-00000003"
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000003"]


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path: Path) -> None:
    ckpt = save(tmp_path, 1)
    wide = Tiny(width=4)
    before = wide.head.bias.clone()
    with pytest.raises(CheckpointError) as err:
        ck.load_weights(wide, ckpt, strict=False)
    message = str(err.value)
    assert "x.weight (checkpoint (3, 3), model (4, 4))" in message and "model.safetensors" in message
    assert "\n" not in message
    assert torch.equal(wide.head.bias, before)  # nothing half-loaded


def test_missing_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    ckpt = save(tmp_path, 1)
    model = Tiny()
    model.extra = nn.Linear(3, 1)
    with pytest.raises(CheckpointError, match=r"missing from checkpoint: extra\.weight, extra\.bias"):
        ck.load_weights(model, ckpt)
    del model.head
    with pytest.raises(CheckpointError, match=r"not in model: head\.(bias|weight), head\.(bias|weight)"):
        ck.load_weights(model, ckpt)
    result = ck.load_weights(model, ckpt, strict=False)
    assert result.missing == ["extra.weight", "extra.bias"] and set(result.unexpected) == {"head.weight", "head.bias"}


def test_prefix_loads_one_tower_into_a_bare_module(tmp_path: Path) -> None:
    src = trained_tiny(seed=4)
    ckpt = save(tmp_path, 1, src)
    bn = nn.BatchNorm1d(3)
    ck.load_weights(bn, ckpt, prefix="bn.")
    assert torch.equal(bn.running_var, src.bn.running_var) and torch.equal(bn.weight, src.bn.weight)
    tower = nn.Linear(3, 3)
    ck.load_weights(tower, ckpt, prefix="y.")  # an alias of the stored x.*
    assert torch.equal(tower.weight, src.x.weight)
    with pytest.raises(CheckpointError, match="no tensors under prefix 'video.'"):
        ck.load_weights(tower, ckpt, prefix="video.")


def test_reshape_hook_resamples_a_table(tmp_path: Path) -> None:
    src = nn.Module()
    src.tables = nn.ParameterList([nn.Parameter(torch.arange(14.0)[:, None].repeat(1, 2))])
    ckpt = save(tmp_path, 1, src)
    dst = nn.Module()
    dst.tables = nn.ParameterList([nn.Parameter(torch.zeros(20, 2))])
    with pytest.raises(CheckpointError, match=r"tables\.0 \(checkpoint \(14, 2\), model \(20, 2\)\)"):
        ck.load_weights(dst, ckpt)

    def stretch(name: str, saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(saved.T[None], size=own.shape[0], mode="linear",
                                               align_corners=True)[0].T

    result = ck.load_weights(dst, ckpt, reshape=stretch)
    assert result.reshaped == ["tables.0"]
    expected = torch.linspace(0, 13, 20)  # linear resampling of 0..13 onto 20 points, by hand
    assert torch.allclose(dst.tables[0][:, 0], expected, atol=1e-6)
    with pytest.raises(CheckpointError, match=r"reshape hook gave \(3, 2\)"):
        ck.load_weights(dst, ckpt, reshape=lambda n, s, o: torch.zeros(3, 2))


def test_weights_hash_tracks_weights_and_verify_catches_tampering(tmp_path: Path) -> None:
    model = trained_tiny()
    a = save(tmp_path / "a", 1, model)
    with torch.no_grad():
        model.head.bias[0] += 1.0
    b = save(tmp_path / "b", 1, model)
    assert ck.weights_hash(a) != ck.weights_hash(b)
    assert ck.read_meta(a)["weights_hash"] == ck.weights_hash(a)
    data = bytearray((b / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (b / "model.safetensors").write_bytes(bytes(data))
    assert ck.find_checkpoint(b, verify=False) == b
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        ck.find_checkpoint(b)  # verified by default


def test_folder_contents_and_meta(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("<pad>\nhello\n")
    ckpt = save(tmp_path / "run", 12, config="model:\n  size: base\nlr: 0.001\n", tokenizer=vocab,
                train_state={}, metrics={"loss": 1.5})
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.yaml", "meta.json", "model.safetensors", "tokenizer.txt", "train_state.pt"]
    meta = ck.read_meta(ckpt)
    assert meta["step"] == 12 and meta["metrics"] == {"loss": 1.5} and meta["files"] == sorted(meta["files"])
    assert set(meta["files"]) == {p.name for p in ckpt.iterdir()}
    assert ck.read_config(ckpt) == {"model": {"size": "base"}, "lr": 0.001}
    assert ck.tokenizer_path(ckpt).read_text() == "<pad>\nhello\n"
    with pytest.raises(CheckpointError, match="config: expected a YAML mapping"):
        save(tmp_path / "run", 13, config="- a\n- b\n")


def tiny_ma(seed: int, grid: tuple[int, int, int] = (2, 3, 3)):
    from vattcli.core.model import VATT, BackboneSpec, ModelConfig

    spec = BackboneSpec(1, 16, 32, 2, d_kv=8)
    torch.manual_seed(seed)
    return VATT(ModelConfig(shared=True, video=spec, audio=spec, text=spec, post_projection=16, video_grid=grid,
                            audio_buckets=10, vocab_size=50, word_dim=8, d_va=8, d_vt=8))


def test_vatt_ma_shared_encoder_round_trip_and_video_tower_with_resampled_positions(tmp_path: Path) -> None:
    from vattcli.core.tokenizers import resample_table

    src = tiny_ma(0)
    ckpt = save(tmp_path, 1, src)
    dst = tiny_ma(1)
    ck.load_weights(dst, ckpt)
    assert dst.audio.encoder is dst.video.encoder and dst.text.encoder is dst.video.encoder
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), name

    def resample(name: str, saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
        return resample_table(saved, own.shape[0]) if "positions.tables." in name else None

    tower = tiny_ma(2, grid=(2, 5, 5)).video  # a fine-tuning input with more spatial buckets
    result = ck.load_weights(tower, ckpt, prefix="video.", reshape=resample)
    assert sorted(result.reshaped) == ["positions.tables.1", "positions.tables.2"]
    assert torch.allclose(tower.positions.tables[1], resample_table(src.video.positions.tables[1].detach(), 5))
    for (name, a), b in zip(src.video.encoder.state_dict().items(), tower.encoder.state_dict().values()):
        assert torch.equal(a, b), name
