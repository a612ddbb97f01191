"""The TensorBundle reader against checkpoints the official TensorFlow code wrote, bundles written by the
independent minimal writer of tests/tfbundle.py, and corrupted copies of both."""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tfbundle import numeric, pb, strings, write_bundle
from vattcli.convert.bundle import TensorBundle, resolve_prefix
from vattcli.errors import ConvertError

FIXTURES = Path(__file__).parent / "fixtures" / "official-vatt"
MODELS = ["tx_fac-small", "ut_fac-small", "vit_cls-small", "wat_cls-small"]
GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
DATA = "ckpt-0.data-00000-of-00001"


def var(path: str) -> str:
    return f"model/layer_with_weights-0/{path}/.ATTRIBUTES/VARIABLE_VALUE"


# ------------------------------------------------------------------------------ official fixtures

@pytest.fixture
def vit(tmp_path) -> Path:
    """A writable copy of the vit_cls fixture; returns the folder."""
    folder = shutil.copytree(FIXTURES / "vit_cls-small", tmp_path / "vit")
    for p in folder.iterdir():
        p.chmod(0o644)
    return folder


@pytest.mark.parametrize("model", MODELS)
def test_official_fixture_parses_and_every_crc_verifies(model):
    with TensorBundle(resolve_prefix(FIXTURES / model)) as b:
        assert [p.name for p in b.files] == ["ckpt-0.index", DATA]
        assert b.nbytes == (FIXTURES / model / DATA).stat().st_size
        keys = b.keys()
        assert keys == sorted(keys) and "" not in keys and GRAPH in keys
        assert sum(k.startswith("model/layer_with_weights-0/") for k in keys) > 20
        assert b.dtype(GRAPH) == "string" and b.shape(GRAPH) == ()
        graph = b.read(GRAPH)
        assert len(graph) == 1 and b"save_counter" in graph[0] and b"layer_with_weights-0" in graph[0]
        for k in keys:
            value = b.read(k)
            if k != GRAPH:
                assert value.shape == b.shape(k) and value.dtype.name == b.dtype(k)
                assert np.isfinite(value).all()
        assert b.read("save_counter/.ATTRIBUTES/VARIABLE_VALUE") == 1


def test_official_shapes_and_values_match_the_fixture_readme_and_outputs():
    root = FIXTURES / "vit_cls-small"
    out = np.load(root / "outputs.npz")
    with TensorBundle(resolve_prefix(root)) as b:
        assert b.shape(var("_base/tx/layers/0/feed_forward/mlp/wi/kernel")) == (64, 128)  # d_model 64, d_ff 128
        assert b.shape(var("_base/voxel_to_patch/kernel")) == (2, 4, 4, 3, 64)  # patch 2x4x4
        cls_w, cls_b = b.read(var("_ops/cls/kernel")), b.read(var("_ops/cls/bias"))
        assert cls_w.shape == (64, 10)  # 10 classes
        # the official forward: logits per clip = pooled features @ kernel + bias; the temporal table was not resampled
        np.testing.assert_allclose(out["features_pooled"] @ cls_w + cls_b, out["logits_per_clip"], atol=1e-5)
        temporal = b.read(var("_base/pos_embedding_lookup/temporal_position_embeddings/embeddings"))
        np.testing.assert_array_equal(temporal, out["pos_tables/0"])
    with TensorBundle(resolve_prefix(FIXTURES / "wat_cls-small")) as b:
        assert b.shape(var("_ops/cls/kernel")) == (48, 12)  # WaT d_model 48, 12 classes
        assert b.shape(var("_base/wave_to_patch/kernel")) == (32, 1, 48)  # patch = stride 32 samples
    with TensorBundle(resolve_prefix(FIXTURES / "tx_fac-small")) as b:
        assert b.shape(var("_base_layer/txt_backbone/embedding/embeddings")) == (1000, 24)


def test_read_is_a_read_only_view_of_the_map(vit):
    b = TensorBundle(resolve_prefix(vit))
    a = b.read(var("_base/tx/layers/0/feed_forward/mlp/wi/kernel"))
    assert not a.flags.writeable
    base = a
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    assert isinstance(base, mmap.mmap)
    b.close()  # the array keeps its map alive
    assert a.shape == (64, 128) and np.isfinite(a).all()


# ------------------------------------------------------------------------------ hand-written bundles

def test_hand_written_bundle_round_trips(tmp_path):
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    i64 = np.array([0, -1, 2**40, -(2**62), 7], dtype=np.int64)
    bf16 = np.array([[0x3F80, 0xC000]], dtype=np.uint16)  # 1.0, -2.0
    words = [b"alpha", b"", b"\xff\x00bytes"]
    specs = {"a/weights": numeric(f32, 1), "a/steps": numeric(i64, 9), "b/bf16": numeric(bf16, 14),
             "c/names": strings(words), "d/scalar": numeric(np.array(3.5, dtype=np.float64), 2),
             "e/empty": numeric(np.zeros((0, 3), np.float32), 1)}
    slice_key = "\x00\x01a/weights\x00\x01\x01\x02"  # a slice of a partitioned tensor (OrderedCode key): hidden
    prefix = write_bundle(tmp_path / "model.ckpt-7", {**specs, slice_key: numeric(f32[:1], 1)}, shards=2)
    with TensorBundle(prefix) as b:
        assert b.keys() == sorted(specs)
        assert len(b.files) == 3 and b.nbytes == sum(len(s.data) for s in specs.values())
        assert b.dtype("a/weights") == "float32" and b.shape("a/steps") == (5,)
        np.testing.assert_array_equal(b.read("a/weights"), f32)
        np.testing.assert_array_equal(b.read("a/steps"), i64)
        assert b.dtype("b/bf16") == "bfloat16" and b.read("b/bf16").dtype == np.uint16
        np.testing.assert_array_equal(b.read("b/bf16"), bf16)
        assert b.read("c/names") == words and b.dtype("c/names") == "string"
        assert b.read("d/scalar").shape == () and float(b.read("d/scalar")) == 3.5
        assert b.read("e/empty").shape == (0, 3)
    assert resolve_prefix(tmp_path / "model.ckpt-7.index") == prefix


@pytest.mark.parametrize("case, expected", [
    ("big_endian", "big-endian"),
    ("snappy", "compressed"),
    ("complex64", "unsupported TensorFlow dtype 8"),
    ("sliced", "sliced tensors are not supported"),
    ("wrong_size", "is stored in"),
    ("bad_string_crc", "tensor names fails its crc32c"),
])
def test_hand_written_bundle_refusals(tmp_path, case, expected):
    f32 = numeric(np.ones(4, np.float32), 1)
    specs = {"x": f32, "names": strings([b"a", b"bc"])}
    if case == "complex64":
        specs["x"] = f32._replace(code=8)
    elif case == "sliced":
        specs["x"] = f32._replace(extra=pb((7, pb((1, pb((1, 0), (2, 4)))))))
    elif case == "wrong_size":
        specs["x"] = f32._replace(shape=(5,))
    elif case == "bad_string_crc":
        specs["names"] = specs["names"]._replace(crc=specs["names"].crc ^ 1)
    prefix = write_bundle(tmp_path / "ckpt-1", specs, endian=case == "big_endian", compression=case == "snappy")
    with pytest.raises(ConvertError, match=expected) as err:
        with TensorBundle(prefix) as b:
            b.read("x")
            b.read("names")
    assert "\n" not in str(err.value) and "ckpt-1" in str(err.value)


# ------------------------------------------------------------------------------ corruption of an official fixture

def test_flipped_data_byte_names_the_tensor(vit):
    name = var("_base/tx/layers/1/mha/q/kernel")
    with TensorBundle(resolve_prefix(vit)) as b:
        raw = b.read(name, verify=False).tobytes()
    data = bytearray((vit / DATA).read_bytes())
    at = data.find(raw)
    assert at >= 0
    at += len(raw) // 2
    data[at] ^= 0x10
    (vit / DATA).write_bytes(data)
    with TensorBundle(resolve_prefix(vit)) as b:
        with pytest.raises(ConvertError, match=f"tensor {name} fails its crc32c check"):
            b.read(name)
        assert b.read(name, verify=False).tobytes() != raw
        b.read(var("_base/tx/layers/1/mha/k/kernel"))  # the others still verify
        b.read(GRAPH)


def test_flipped_graph_byte_fails_the_string_crc(vit):
    data = bytearray((vit / DATA).read_bytes())
    data[data.find(b"save_counter")] ^= 0x01
    (vit / DATA).write_bytes(data)
    with TensorBundle(resolve_prefix(vit)) as b, pytest.raises(ConvertError, match=f"tensor {GRAPH} fails"):
        b.read(GRAPH)


def test_truncated_data_is_refused_on_opening(vit):
    size = (vit / DATA).stat().st_size
    os.truncate(vit / DATA, size // 2)
    with pytest.raises(ConvertError, match=rf"{DATA}: truncated: tensor .* needs bytes up to \d+, the file has "
                                           rf"{size // 2}"):
        TensorBundle(resolve_prefix(vit))


def test_missing_data_names_the_file(vit):
    (vit / DATA).unlink()
    with pytest.raises(ConvertError, match=f"{DATA}: missing"):
        TensorBundle(resolve_prefix(vit))


@pytest.mark.parametrize("garbage", [b"", b"not a checkpoint at all\n" * 10])
def test_garbage_index_is_not_a_checkpoint(vit, garbage):
    (vit / "ckpt-0.index").write_bytes(garbage)
    with pytest.raises(ConvertError, match="ckpt-0.index: not a TensorFlow checkpoint"):
        TensorBundle(resolve_prefix(vit))


def test_corrupt_index_block_fails_its_crc(vit):
    index = bytearray((vit / "ckpt-0.index").read_bytes())
    at = index.find(b"ATTRIBUTES")
    assert 0 < at < len(index) - 48
    index[at] ^= 0x20
    (vit / "ckpt-0.index").write_bytes(index)
    with pytest.raises(ConvertError, match="index block at byte 0 fails its crc32c check"):
        TensorBundle(resolve_prefix(vit))


# ------------------------------------------------------------------------------ resolving the argument

def test_folder_prefix_and_file_paths_resolve(vit):
    prefix = vit / "ckpt-0"
    for arg in (vit, prefix, vit / "ckpt-0.index", vit / DATA):
        assert resolve_prefix(arg) == prefix
    (vit / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/train/ckpt-0"\n')  # moved after training
    assert resolve_prefix(vit) == prefix
    (vit / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "x"\n')
    assert resolve_prefix(vit) == prefix


def test_unresolvable_arguments(vit, tmp_path):
    with pytest.raises(ConvertError, match="not a TensorFlow checkpoint"):
        resolve_prefix(vit / "ckpt-9")
    (vit / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    with pytest.raises(ConvertError, match="names checkpoint 'ckpt-9' but .*ckpt-9.index does not exist"):
        resolve_prefix(vit)
    (vit / "checkpoint").unlink()
    with pytest.raises(ConvertError, match=r"no 'checkpoint' file \(it holds ckpt-0.index"):
        resolve_prefix(vit)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="empty: not a TensorFlow checkpoint folder: no 'checkpoint' file$"):
        resolve_prefix(tmp_path / "empty")
    with TensorBundle(resolve_prefix(vit / "ckpt-0")) as b, pytest.raises(ConvertError, match="no tensor named nope"):
        b.read("nope")
