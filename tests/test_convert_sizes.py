"""``convert_checkpoint`` on official-layout TensorFlow checkpoints at the official widths (few layers): what the
converter must infer from names and shapes alone, what it must refuse, and the converted weights against the source
arrays after the documented layout changes [reference §8.4; vattcli/convert/mapping.py docstring].

Sources are written by ``tests/tfckpt.py`` (key names and shapes written down from the official fixtures and code,
independently of ``vattcli.convert``); expected values are recomputed from ``tensor_value``, not read back."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from tfckpt import GRAPH, SAVE_COUNTER, SUFFIX, model_variables, official_keys, tensor_value, write_checkpoint
from vattcli.api import build_model, load_model
from vattcli.convert.bundle import TensorBundle, resolve_prefix
from vattcli.convert.run import convert_checkpoint
from vattcli.core.model import VATT, Classifier
from vattcli.errors import ConvertError

FIXTURES = Path(__file__).parent / "fixtures" / "official-vatt"
PREFIX = "model/layer_with_weights-0/"
# the paper's widths (d_kv 64: 12 heads at 768, 8 at 512, 16 at 1024), one layer each, a 1000-word table
OFFICIAL = dict(video=(1, 768, 3072), audio=(1, 768, 3072), text=(1, 512, 2048, 8), patch=(4, 16, 16),
                grid=(8, 14, 14), audio_patch=128, audio_buckets=1200, vocab=1000, word_dim=300, d_va=512, d_vt=256)
# an official width (512) with everything else tiny: for refusals and inference cases that need no large tensors
SMALL = dict(video=(1, 512, 64), audio=(1, 512, 64), text=(1, 512, 64, 8), patch=(2, 4, 4), grid=(2, 2, 2),
             audio_patch=8, audio_buckets=4, vocab=20, word_dim=8, d_va=16, d_vt=8)
FIXTURE_SIZES = {  # tests/fixtures/official-vatt/README.md
    "tx_fac-small": ("pretrain-ms", dict(video=(2, 64, 128), audio=(2, 48, 96), text=(2, 32, 64, 4), vocab=1000,
                                         word_dim=24, d_va=40, d_vt=24)),
    "ut_fac-small": ("pretrain-ma", dict(video=(2, 64, 128), vocab=1000, word_dim=24, text_buckets=12, post_proj=56,
                                         d_va=40, d_vt=24)),
    "vit_cls-small": ("classifier-video", dict(video=(2, 64, 128), num_classes=10)),
    "wat_cls-small": ("classifier-audio", dict(audio=(2, 48, 96), num_classes=12)),
}


def exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Converted weights are copies: equal to the bit, same shape."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def value(keys: dict, rel: str, prefix: str = PREFIX) -> torch.Tensor:
    """The source array of the official variable ``rel``, as written."""
    key = f"{prefix}{rel}{SUFFIX}"
    return torch.from_numpy(tensor_value(key, keys[key]))


def converted(root: Path, kind: str, keys: dict | None = None, *, heads: dict[str, int] | None = None,
              **sizes) -> SimpleNamespace:
    """Write an official checkpoint (``ckpt-7``; ``keys`` or those of ``kind`` at ``sizes``) under ``root/src``,
    convert it to ``root/out``, load the result."""
    keys = keys or official_keys(kind, **sizes)
    write_checkpoint(root / "src" / "ckpt-7", keys)
    summary = convert_checkpoint(root / "src", root / "out", heads=heads)
    return SimpleNamespace(keys=keys, summary=summary, out=root / "out", model=load_model(root / "out"))


def refused(tmp: Path, keys: dict, match: str) -> str:
    """The one-line ConvertError for ``keys``; nothing is left beside the source (no partial output folder)."""
    write_checkpoint(tmp / "src" / "ckpt-1", keys)
    with pytest.raises(ConvertError, match=match) as err:
        convert_checkpoint(tmp / "src", tmp / "out")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp.iterdir()) == ["src"]
    return str(err.value)


def spec(model, tower: str) -> tuple[int, ...]:
    """(layers, d_model, d_ff, heads, d_kv) of a loaded model's tower, read from its modules."""
    encoder = getattr(model, tower).encoder
    fc1, attn = encoder.layers[0].mlp.fc1, encoder.layers[0].attn
    return len(encoder.layers), fc1.in_features, fc1.out_features, attn.num_heads, attn.d_kv


def assert_encoder(encoder, keys: dict, src: str) -> None:
    """Layer 0 of a pre-norm encoder: Dense kernels transposed, q/k/v fused row-wise in that order."""
    layer = encoder.layers[0]
    q, k, v = (value(keys, f"{src}layers/0/mha/{w}/kernel") for w in "qkv")
    exact(layer.attn.qkv.weight, torch.cat([q.T, k.T, v.T]))
    exact(layer.attn.qkv.bias, torch.cat([value(keys, f"{src}layers/0/mha/{w}/bias") for w in "qkv"]))
    exact(layer.attn.out.weight, value(keys, f"{src}layers/0/mha/o/kernel").T)
    exact(layer.mlp.fc1.weight, value(keys, f"{src}layers/0/feed_forward/mlp/wi/kernel").T)
    exact(layer.norm2.bias, value(keys, f"{src}layers/0/feed_forward/layer_norm/beta"))
    exact(encoder.norm.weight, value(keys, f"{src}final_layer_norm/gamma"))


def assert_tubelets(backbone, keys: dict, src: str) -> None:
    """The tubelet weight is the Conv3D kernel as documented, and the tokens are the official Conv3D's outputs:
    kernel (t, h, w, c, d) applied to the first two patches of a (1, 3, T, H, W) clip (tokens t-major, then h, w)."""
    kernel, bias = value(keys, f"{src}/kernel"), value(keys, f"{src}/bias")
    t, h, w, c, d = kernel.shape
    exact(backbone.tokenizer.proj.weight, kernel.permute(4, 3, 0, 1, 2).reshape(d, -1))
    video = torch.rand(1, 3, t, h, 2 * w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens, grid = backbone.tokenizer(video)
    assert grid == (1, 1, 2)
    for j in range(2):
        patch = video[0, :, :, :, j * w:(j + 1) * w].permute(1, 2, 3, 0)  # (t, h, w, c) as TF sees it
        torch.testing.assert_close(tokens[0, j], torch.einsum("thwc,thwcd->d", patch, kernel) + bias)


def assert_waveform(backbone, keys: dict, src: str) -> None:
    """Conv1D kernel (p, 1, d) with stride p: token j = samples [j p, (j+1) p) @ kernel[:, 0] + bias."""
    kernel, bias = value(keys, f"{src}/kernel"), value(keys, f"{src}/bias")
    p = kernel.shape[0]
    exact(backbone.tokenizer.proj.weight, kernel[:, 0, :].T)
    audio = torch.rand(1, 2 * p, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens, _ = backbone.tokenizer(audio)
    for j in range(2):
        torch.testing.assert_close(tokens[0, j], audio[0, j * p:(j + 1) * p] @ kernel[:, 0, :] + bias)


def run_pretrained(model, patch: tuple[int, int, int], audio_patch: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(2)
    t, h, w = patch
    with torch.no_grad():
        out = model(video=torch.rand(1, 3, t, h, 2 * w, generator=g) * 2 - 1,
                    audio=torch.rand(1, 2 * audio_patch, generator=g) * 2 - 1,
                    text=torch.randint(1, vocab, (1, 2, 5), generator=g))
    assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point())
    return out


# ------------------------------------------------------------------------------------ the key listing itself

@pytest.mark.parametrize("fixture", sorted(FIXTURE_SIZES))
def test_official_keys_equal_the_fixture_checkpoints(fixture):
    kind, sizes = FIXTURE_SIZES[fixture]
    expected = official_keys(kind, patch=(2, 4, 4), grid=(2, 4, 4), audio_patch=32, audio_buckets=20, **sizes)
    with TensorBundle(resolve_prefix(FIXTURES / fixture)) as bundle:
        assert {k: bundle.shape(k) for k in bundle.keys()} == expected


def test_written_checkpoint_reads_back(tmp_path):
    keys = official_keys("classifier-audio", optimizer=True, num_classes=3, **SMALL)
    write_checkpoint(tmp_path / "ckpt-2", keys)
    with TensorBundle(resolve_prefix(tmp_path)) as bundle:
        assert {k: bundle.shape(k) for k in bundle.keys()} == keys
        assert bundle.read(SAVE_COUNTER) == 1 and bundle.dtype(GRAPH) == "string"
        key = f"{PREFIX}_base/tx/layers/0/mha/q/kernel{SUFFIX}"
        np.testing.assert_array_equal(bundle.read(key), tensor_value(key, keys[key]))


# ------------------------------------------------------------------------------------ pre-training checkpoints

@pytest.fixture(scope="module")
def ms(tmp_path_factory) -> SimpleNamespace:
    return converted(tmp_path_factory.mktemp("ms"), "pretrain-ms", **OFFICIAL)


def test_modality_specific_sizes_are_inferred(ms):
    s, cfg = ms.summary, ms.summary.model
    assert (s.kind, s.num_classes, s.task) == ("pretrain-ms", None, None)
    assert spec(ms.model, "video") == spec(ms.model, "audio") == (1, 768, 3072, 12, 64)  # 768 / 64 heads
    assert spec(ms.model, "text") == (1, 512, 2048, 8, 64)  # 8 relative-bias columns
    assert (cfg.video_patch, cfg.video_grid, cfg.audio_patch, cfg.audio_buckets) == ((4, 16, 16), (8, 14, 14), 128,
                                                                                     1200)
    assert (cfg.vocab_size, cfg.word_dim, cfg.d_va, cfg.d_vt, cfg.relative_buckets, cfg.shared) == (
        1000, 300, 512, 256, 32, False)
    assert cfg.name == "converted-pretrain-ms"  # one layer per tower is no paper model
    variables = model_variables(ms.keys)
    assert s.mapped == len(variables) and s.skipped == 2  # save_counter and the object graph
    assert s.parameters == sum(math.prod(v) for k, v in variables.items() if "/moving_" not in k)
    meta = json.loads((ms.out / "meta.json").read_text())
    assert meta["step"] == 7 and meta["converted_from"]["kind"] == "pretrain-ms"


def test_modality_specific_weights_follow_the_layout_change(ms):
    m, keys = ms.model, ms.keys
    assert isinstance(m, VATT)
    assert_encoder(m.video.encoder, keys, "_base_layer/vid_backbone/_base/tx/")
    assert_encoder(m.audio.encoder, keys, "_base_layer/aud_backbone/_base/tx/")
    assert_tubelets(m.video, keys, "_base_layer/vid_backbone/_base/voxel_to_patch")
    assert_waveform(m.audio, keys, "_base_layer/aud_backbone/_base/wave_to_patch")
    t5 = "_base_layer/txt_backbone/base_lm/layers/0/self_attention/"
    exact(m.text.encoder.relative_bias.table.weight, value(keys, f"{t5}attention/relative_attention_bias/embeddings"))
    exact(m.text.encoder.layers[0].attn.qkv.weight, torch.cat(
        [value(keys, f"{t5}attention/{w}/kernel").T for w in "qkv"]))
    exact(m.text.pre_projection.proj.weight, value(keys, "_base_layer/txt_backbone/pre_proj/kernel").T)
    exact(m.video.positions.tables[2], value(
        keys, "_base_layer/vid_backbone/_base/pos_embedding_lookup/horizontal_position_embeddings/embeddings"))
    head = "_head_layer/_bridge_heads/0/"
    exact(m.head.video_to_va[1].running_var, value(keys, f"{head}hid_to_va/pre_bn/moving_variance"))
    exact(m.head.text_to_vt.weight, value(keys, f"{head}txt_to_vat/kernel").T)
    out = run_pretrained(m, (4, 16, 16), 128, 1000)
    assert out["video_va"].shape == (1, 512) and out["text_vt"].shape == (1, 2, 256)


def test_modality_agnostic_sizes_weights_and_sharing(tmp_path):
    ma = converted(tmp_path, "pretrain-ma", **{**OFFICIAL, "video": (1, 1024, 4096), "post_proj": 640})
    s, cfg, m, keys = ma.summary, ma.summary.model, ma.model, ma.keys
    assert s.kind == "pretrain-ma" and cfg.shared and cfg.post_projection == 640 and cfg.text_buckets == 16
    assert spec(m, "video") == spec(m, "audio") == spec(m, "text") == (1, 1024, 4096, 16, 64)
    assert m.audio.encoder is m.video.encoder and m.text.encoder is m.video.encoder
    variables = model_variables(keys)
    assert s.mapped == len(variables) and s.parameters == m.num_params()
    assert s.parameters == sum(math.prod(v) for k, v in variables.items() if "/moving_" not in k)
    u = "_base_layer/unified_backbone/unified_transformer/"
    assert_encoder(m.video.encoder, keys, f"{u}tx/")
    assert_tubelets(m.video, keys, f"{u}raw_to_embeddings/video")
    assert_waveform(m.audio, keys, f"{u}raw_to_embeddings/audio")
    exact(m.text.embedding.table.weight, value(keys, f"{u}raw_to_embeddings/text/embeddings"))
    exact(m.text.pre_projection.proj.weight, value(keys, f"{u}pre_proj/text/kernel").T)
    exact(m.audio.post_projection.proj.bias, value(keys, f"{u}post_proj/audio/bias"))
    exact(m.text.agg.vector, value(keys, f"{u}txt_agg_embedding"))
    out = run_pretrained(m, (4, 16, 16), 128, 1000)
    assert out["video_features"].shape == (1, 640) and out["audio_va"].shape == (1, 512)


@pytest.mark.parametrize("prefix", ["model/", "model/layer_with_weights-0/"])
def test_optimizer_slots_and_counters_are_skipped_and_counted(tmp_path, prefix):
    keys = official_keys("pretrain-ms", optimizer=True, prefix=prefix, **SMALL)
    trainable = [k for k in model_variables(keys) if "/moving_" not in k]
    c = converted(tmp_path, "pretrain-ms", keys)
    assert c.summary.skipped == 2 + 5 + 2 * len(trainable)  # counter, graph; Adam iter + 4 scalars; m and v slots
    assert c.summary.mapped == len(model_variables(keys))
    wi = "_base_layer/aud_backbone/_base/tx/layers/0/feed_forward/mlp/wi/kernel"
    exact(c.model.audio.encoder.layers[0].mlp.fc1.weight, value(keys, wi, prefix).T)


def test_a_global_step_counter_is_skipped_too(tmp_path):
    keys = {**official_keys("pretrain-ms", **SMALL), "global_step/.ATTRIBUTES/VARIABLE_VALUE": ()}
    assert converted(tmp_path, "pretrain-ms", keys).summary.skipped == 3


def test_unknown_tower_in_heads_is_refused(tmp_path):
    write_checkpoint(tmp_path / "src" / "ckpt-1", official_keys("pretrain-ms", **SMALL))
    with pytest.raises(ConvertError, match="--heads vidoe: unknown tower"):
        convert_checkpoint(tmp_path / "src", tmp_path / "out", heads={"vidoe": 3})


# ------------------------------------------------------------------------------------ classifiers

@pytest.mark.parametrize("kind, classes, task", [
    ("classifier-video", 400, "kinetics400"), ("classifier-video", 600, "kinetics600"),
    ("classifier-video", 700, "kinetics700"), ("classifier-video", 339, "mit"),
    ("classifier-audio", 527, "audioset"), ("classifier-video", 527, None), ("classifier-audio", 400, None),
])
def test_classifier_task_follows_the_class_count(tmp_path, kind, classes, task):
    c = converted(tmp_path, kind, num_classes=classes, **SMALL)
    modality = kind.split("-")[1]
    assert (c.summary.kind, c.summary.num_classes, c.summary.task) == (kind, classes, task)
    stored = yaml.safe_load((c.out / "config.yaml").read_text())
    assert stored["task"] == (task or f"converted-{modality}") and stored["modality"] == modality
    assert isinstance(c.model, Classifier) and c.model.head.fc.out_features == classes
    assert stored["model"]["shared"] is False and c.model.backbone.pre_projection is None


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_classifier_at_official_width_with_ma_projections(tmp_path, modality):
    sizes = {**OFFICIAL, "video": (1, 1024, 4096)} if modality == "video" else OFFICIAL
    c = converted(tmp_path, f"classifier-{modality}", num_classes=400 if modality == "video" else 527,
                  ma_projections=True, post_proj=1024, **sizes)
    m, keys = c.model, c.keys
    stored = yaml.safe_load((c.out / "config.yaml").read_text())
    assert stored["model"]["shared"] is True and stored["model"]["post_projection"] == 1024
    assert c.summary.task == ("kinetics400" if modality == "video" else "audioset")
    heads = 16 if modality == "video" else 12
    width = 1024 if modality == "video" else 768
    assert spec(m, "backbone") == (1, width, 4 * width, heads, 64)
    assert_encoder(m.backbone.encoder, keys, "_base/tx/")
    if modality == "video":
        assert_tubelets(m.backbone, keys, "_base/voxel_to_patch")
    else:
        assert_waveform(m.backbone, keys, "_base/wave_to_patch")
    exact(m.backbone.pre_projection.proj.weight, value(keys, "_base/pre_proj/kernel").T)
    exact(m.backbone.post_projection.proj.bias, value(keys, "_base/post_proj/bias"))
    kernel, bias = value(keys, "_ops/cls/kernel"), value(keys, "_ops/cls/bias")
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(1, 3, 4, 16, 32, generator=g) if modality == "video" else torch.rand(1, 256, generator=g)) * 2 - 1
    with torch.no_grad():
        pooled = m.backbone(x).pooled
        logits = m(x)
    assert pooled.shape == (1, 1024) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, pooled @ kernel + bias)  # the official Dense on the post-projected feature


# ------------------------------------------------------------------------------------ heads

def test_unofficial_width_needs_heads(tmp_path):
    keys = official_keys("pretrain-ms", **{**SMALL, "video": (1, 96, 64)})
    message = refused(tmp_path, keys, "--heads")
    assert "video" in message and "96" in message
    c = converted(tmp_path / "with", "pretrain-ms", keys, heads={"video": 3})
    assert spec(c.model, "video") == (1, 96, 64, 3, 32) and spec(c.model, "audio") == (1, 512, 64, 8, 64)


@pytest.mark.parametrize("text, expected", [((1, 512, 64, 4), (4, 128)), ((1, 96, 64, 6), (6, 16))])
def test_text_heads_come_from_the_relative_bias_table(tmp_path, text, expected):
    c = converted(tmp_path, "pretrain-ms", **{**SMALL, "text": text})
    assert spec(c.model, "text")[3:] == expected


# ------------------------------------------------------------------------------------ refusals

def test_unknown_tensor_is_refused_by_name(tmp_path):
    keys = official_keys("pretrain-ms", **SMALL)
    keys[f"{PREFIX}_base_layer/vid_backbone/_base/temporal_gate/kernel{SUFFIX}"] = (512, 512)
    assert "_base_layer/vid_backbone/_base/temporal_gate/kernel" in refused(tmp_path, keys, "no place in the model")


@pytest.mark.parametrize("kind, rel", [
    ("pretrain-ms", "_base_layer/vid_backbone/_base/tx/layers/0/mha/k/bias"),
    ("pretrain-ms", "_base_layer/aud_backbone/_base/wave_to_patch/bias"),
    ("pretrain-ms", "_head_layer/_bridge_heads/0/hid_to_va/bn/moving_variance"),
    ("pretrain-ms", "_base_layer/txt_backbone/base_lm/layers/0/self_attention/attention/q/kernel"),
    ("pretrain-ms", "_base_layer/vid_backbone/_base/pos_embedding_lookup/vertical_position_embeddings/embeddings"),
    ("pretrain-ma", "_base_layer/unified_backbone/unified_transformer/post_proj/text/bias"),
    ("classifier-video", "_ops/cls/bias"),
])
def test_missing_tensor_is_refused_by_name(tmp_path, kind, rel):
    keys = official_keys(kind, num_classes=5, post_proj=24, **SMALL)
    del keys[f"{PREFIX}{rel}{SUFFIX}"]
    refused(tmp_path, keys, re.escape(rel))


def _swap(keys: dict, drop: str, add: dict[str, tuple[int, ...]]) -> dict:
    kept = {k: s for k, s in keys.items() if not k.startswith(PREFIX + drop)}
    assert len(kept) < len(keys)
    return {**kept, **{f"{PREFIX}{rel}{SUFFIX}": s for rel, s in add.items()}}


def _i3d() -> dict:
    b = "_base_layer/vid_backbone/_base/"
    return _swap(official_keys("pretrain-ms", **SMALL), b, {
        f"{b}conv_1a_7x7/conv_3d/kernel": (7, 7, 7, 3, 64), f"{b}conv_1a_7x7/batch_norm/gamma": (64,),
        f"{b}mixed_5c/branch_0/conv_3d/kernel": (1, 1, 1, 832, 384)})


def _bert() -> dict:
    t = "_base_layer/txt_backbone/base_lm/"
    return _swap(official_keys("pretrain-ms", **SMALL), f"{t}layers/0/self_attention/attention/relative_attention_bias",
                 {f"{t}position_embeddings/embeddings": (512, 512)})


def _spectrogram() -> dict:
    return _swap(official_keys("classifier-audio", num_classes=527, **SMALL), "_base/wave_to_patch", {
        "_base/spectrum_to_patch/kernel": (4, 16, 1, 512), "_base/spectrum_to_patch/bias": (512,),
        "_base/pos_embedding_lookup/spectoral_position_embeddings/embeddings": (5, 512)})


@pytest.mark.parametrize("make, names", [(_i3d, "voxel_to_patch"), (_bert, "relative_attention_bias"),
                                         (_spectrogram, "wave_to_patch")])
def test_other_official_backbones_are_unsupported(tmp_path, make, names):
    assert names in refused(tmp_path, make(), "unsupported")


# ------------------------------------------------------------------------------------ full size

@pytest.mark.slow
def test_full_size_vatt_bbs(tmp_path):
    keys = official_keys("pretrain-ms")  # 12/12/6 layers, 65536 x 300 words
    write_checkpoint(tmp_path / "src" / "ckpt-500000", keys)
    summary = convert_checkpoint(tmp_path / "src", tmp_path / "out")
    assert summary.model.name == "vatt-bbs"
    reference = build_model("vatt-bbs")
    assert summary.parameters == sum(p.numel() for p in reference.parameters())  # buffers (BN statistics) aside
    assert summary.parameters == sum(math.prod(s) for k, s in model_variables(keys).items() if "/moving_" not in k)
    del reference
    model = load_model(tmp_path / "out")
    assert spec(model, "text") == (6, 512, 2048, 8, 64) and spec(model, "video") == (12, 768, 3072, 12, 64)
    wo = "_base_layer/vid_backbone/_base/tx/layers/11/feed_forward/mlp/wo/kernel"
    exact(model.video.encoder.layers[11].mlp.fc2.weight, value(keys, wo).T)
