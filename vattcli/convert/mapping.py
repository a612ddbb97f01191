"""Official variables -> this package's tensors: one ``Rule`` per target tensor, with the layout change it needs.

Layout changes [reference §8.4 porting notes]: Keras Dense kernels are (in, out), torch Linear weights (out, in);
the three q/k/v Dense layers are one fused ``qkv`` Linear here (rows q, then k, then v, each head-major as the
official reshape to (heads, d_kv) reads them); the Conv3D tubelet kernel (t, h, w, c, d) becomes the (d, c*t*h*w)
matrix ``VideoTubelets`` multiplies with; the Conv1D waveform kernel (p, 1, d) becomes (d, p). BatchNorm
``moving_mean``/``moving_variance`` are torch's running statistics (``num_batches_tracked`` has no counterpart and
is set to 0; it only matters for momentum=None, which is not used).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from vattcli.convert.layout import CLS_BASE, CLS_OPS, HEAD, MA, MS_AUDIO, MS_TEXT, MS_VIDEO, Layout

Shape = tuple[int, ...]


class Transform(NamedTuple):
    """How source arrays become one target array, and the target shape that gives (known before reading)."""

    shape: Callable[[list[Shape]], Shape]
    apply: Callable[[list[np.ndarray]], np.ndarray]


COPY = Transform(lambda s: s[0], lambda a: np.asarray(a[0], dtype=np.float32))  # the mapped view itself
DENSE = Transform(lambda s: s[0][::-1], lambda a: np.ascontiguousarray(a[0].T, dtype=np.float32))
QKV_KERNEL = Transform(lambda s: (sum(x[1] for x in s), s[0][0]),
                       lambda a: np.ascontiguousarray(np.concatenate([x.T for x in a]), dtype=np.float32))
QKV_BIAS = Transform(lambda s: (sum(x[0] for x in s),), lambda a: np.concatenate(a).astype(np.float32))
CONV3D = Transform(lambda s: (s[0][4], math.prod(s[0][:4])),
                   lambda a: np.ascontiguousarray(a[0].transpose(4, 3, 0, 1, 2).reshape(a[0].shape[4], -1),
                                                  dtype=np.float32))
CONV1D = Transform(lambda s: (s[0][2], s[0][0]),
                   lambda a: np.ascontiguousarray(a[0][:, 0, :].T, dtype=np.float32))
ZERO_COUNT = Transform(lambda s: (), lambda a: np.zeros((), dtype=np.int64))


class Rule(NamedTuple):
    target: str  # name in this package's state dict
    sources: tuple[str, ...]  # relative official names (see ``layout.relative_name``)
    transform: Transform


def _dense(dst: str, src: str, *, bias: bool = True) -> Iterator[Rule]:
    yield Rule(f"{dst}.weight", (f"{src}/kernel",), DENSE)
    if bias:
        yield Rule(f"{dst}.bias", (f"{src}/bias",), COPY)


def _layer_norm(dst: str, src: str) -> Iterator[Rule]:
    yield Rule(f"{dst}.weight", (f"{src}/gamma",), COPY)
    yield Rule(f"{dst}.bias", (f"{src}/beta",), COPY)


def _batch_norm(dst: str, src: str) -> Iterator[Rule]:
    yield from _layer_norm(dst, src)
    yield Rule(f"{dst}.running_mean", (f"{src}/moving_mean",), COPY)
    yield Rule(f"{dst}.running_var", (f"{src}/moving_variance",), COPY)
    yield Rule(f"{dst}.num_batches_tracked", (), ZERO_COUNT)


def _attention(dst: str, src: str, *, bias: bool) -> Iterator[Rule]:
    yield Rule(f"{dst}.qkv.weight", tuple(f"{src}/{p}/kernel" for p in "qkv"), QKV_KERNEL)
    if bias:
        yield Rule(f"{dst}.qkv.bias", tuple(f"{src}/{p}/bias" for p in "qkv"), QKV_BIAS)
    yield from _dense(f"{dst}.out", f"{src}/o", bias=bias)


def encoder_rules(dst: str, src: str, num_layers: int) -> Iterator[Rule]:
    """Pre-norm Transformer [C modeling/common/transformers.py TransformerEncoder]."""
    for i in range(num_layers):
        d, s = f"{dst}.layers.{i}", f"{src}layers/{i}"
        yield from _layer_norm(f"{d}.norm1", f"{s}/layer_norm")
        yield from _attention(f"{d}.attn", f"{s}/mha", bias=True)
        yield from _layer_norm(f"{d}.norm2", f"{s}/feed_forward/layer_norm")
        yield from _dense(f"{d}.mlp.fc1", f"{s}/feed_forward/mlp/wi")
        yield from _dense(f"{d}.mlp.fc2", f"{s}/feed_forward/mlp/wo")
    yield from _layer_norm(f"{dst}.norm", f"{src}final_layer_norm")


def t5_encoder_rules(dst: str, src: str, num_layers: int) -> Iterator[Rule]:
    """T5 encoder: RMS norm before attention (``weight`` only), no biases, one relative-bias table in layer 0
    shared by all layers, a plain LayerNorm before the MLP [C text/t5.py]."""
    yield Rule(f"{dst}.relative_bias.table.weight",
               (f"{src}layers/0/self_attention/attention/relative_attention_bias/embeddings",), COPY)
    for i in range(num_layers):
        d, s = f"{dst}.layers.{i}", f"{src}layers/{i}"
        yield Rule(f"{d}.norm1.weight", (f"{s}/self_attention/layer_norm/weight",), COPY)
        yield from _attention(f"{d}.attn", f"{s}/self_attention/attention", bias=False)
        yield from _layer_norm(f"{d}.norm2", f"{s}/feed_forward/layer_norm")
        yield from _dense(f"{d}.mlp.fc1", f"{s}/feed_forward/mlp/wi", bias=False)
        yield from _dense(f"{d}.mlp.fc2", f"{s}/feed_forward/mlp/wo", bias=False)
    yield Rule(f"{dst}.norm.weight", (f"{src}final_layer_norm/weight",), COPY)


_AXES = ("temporal", "vertical", "horizontal")


def positions_rules(dst: str, src: str, axes: int) -> Iterator[Rule]:
    """Factorised tables + their LayerNorm [C transformers.py SpatioTemporalEmbeddings, TemporalEmbeddings]."""
    for i in range(axes):
        yield Rule(f"{dst}.tables.{i}", (f"{src}{_AXES[i]}_position_embeddings/embeddings",), COPY)
    yield from _layer_norm(f"{dst}.norm", f"{src}layernorm")


def signal_rules(dst: str, src: str, modality: str, num_layers: int, *, projections: bool) -> Iterator[Rule]:
    """A ViT or WaT as ``ViTx3D``/``AuTx1D`` names it [C video/vitx3d.py, audio/autx1d.py]; ``projections`` for a
    backbone fine-tuned from VATT-MA, which keeps ``pre_proj``/``post_proj``."""
    if modality == "video":
        yield Rule(f"{dst}.tokenizer.proj.weight", (f"{src}voxel_to_patch/kernel",), CONV3D)
        yield Rule(f"{dst}.tokenizer.proj.bias", (f"{src}voxel_to_patch/bias",), COPY)
    else:
        yield Rule(f"{dst}.tokenizer.proj.weight", (f"{src}wave_to_patch/kernel",), CONV1D)
        yield Rule(f"{dst}.tokenizer.proj.bias", (f"{src}wave_to_patch/bias",), COPY)
    yield from positions_rules(f"{dst}.positions", f"{src}pos_embedding_lookup/", 3 if modality == "video" else 1)
    yield Rule(f"{dst}.agg.vector", (f"{src}agg_embedding",), COPY)
    yield from encoder_rules(f"{dst}.encoder", f"{src}tx/", num_layers)
    if projections:
        yield from _dense(f"{dst}.pre_projection.proj", f"{src}pre_proj")
        yield from _dense(f"{dst}.post_projection.proj", f"{src}post_proj")


def head_rules() -> Iterator[Rule]:
    """The FAC head [C heads/bridge.py FACHead, mlp_lib.py]: vid_to_hid -> pre_bn -> ReLU -> hid_to_va/dense ->
    hid_to_va/bn is ``video_to_va``; va_to_vat (ReLU -> dense -> bn) is ``va_to_vt``."""
    yield from _dense("head.video_to_va.0", f"{HEAD}vid_to_hid", bias=False)
    yield from _batch_norm("head.video_to_va.1", f"{HEAD}hid_to_va/pre_bn")
    yield from _dense("head.video_to_va.3", f"{HEAD}hid_to_va/dense", bias=False)
    yield from _batch_norm("head.video_to_va.4", f"{HEAD}hid_to_va/bn")
    yield from _dense("head.va_to_vt.1", f"{HEAD}va_to_vat/dense", bias=False)
    yield from _batch_norm("head.va_to_vt.2", f"{HEAD}va_to_vat/bn")
    yield from _dense("head.audio_to_va", f"{HEAD}aud_to_va")
    yield from _dense("head.text_to_vt", f"{HEAD}txt_to_vat")


def _ma_rules(num_layers: int) -> Iterator[Rule]:
    """VATT-MA: one encoder, per-modality raw embeddings, projections, positions and AGG [C unified/uvatt.py]."""
    for modality, short in (("video", "vid"), ("audio", "aud"), ("text", "txt")):
        if modality == "video":
            yield Rule("video.tokenizer.proj.weight", (f"{MA}raw_to_embeddings/video/kernel",), CONV3D)
        elif modality == "audio":
            yield Rule("audio.tokenizer.proj.weight", (f"{MA}raw_to_embeddings/audio/kernel",), CONV1D)
        else:
            yield Rule("text.embedding.table.weight", (f"{MA}raw_to_embeddings/text/embeddings",), COPY)
        if modality != "text":
            yield Rule(f"{modality}.tokenizer.proj.bias", (f"{MA}raw_to_embeddings/{modality}/bias",), COPY)
        yield from _dense(f"{modality}.pre_projection.proj", f"{MA}pre_proj/{modality}")
        yield from _dense(f"{modality}.post_projection.proj", f"{MA}post_proj/{modality}")
        yield from positions_rules(f"{modality}.positions", f"{MA}pos_embedding_lookup/{modality}/",
                                   3 if modality == "video" else 1)
        yield Rule(f"{modality}.agg.vector", (f"{MA}{short}_agg_embedding",), COPY)
    yield from encoder_rules("video.encoder", f"{MA}tx/", num_layers)  # audio/text encoders are aliases of it


def _ms_text_rules(num_layers: int) -> Iterator[Rule]:
    """The modality-specific text model [C text/factory.py LanguageModel]: word table, AGG in the word space,
    pre-projection without bias, T5 encoder (``base_lm``)."""
    yield Rule("text.embedding.table.weight", (f"{MS_TEXT}embedding/embeddings",), COPY)
    yield Rule("text.agg.vector", (f"{MS_TEXT}agg_embedding",), COPY)
    yield from _dense("text.pre_projection.proj", f"{MS_TEXT}pre_proj", bias=False)
    yield from t5_encoder_rules("text.encoder", f"{MS_TEXT}base_lm/", num_layers)


def rules_for(layout: Layout) -> list[Rule]:
    """Every target tensor of the model ``layout.model`` describes, with its sources."""
    cfg = layout.model
    if layout.kind == "pretrain-ms":
        rules = [*signal_rules("video", MS_VIDEO, "video", cfg.video.num_layers, projections=False),
                 *signal_rules("audio", MS_AUDIO, "audio", cfg.audio.num_layers, projections=False),
                 *_ms_text_rules(cfg.text.num_layers), *head_rules()]
    elif layout.kind == "pretrain-ma":
        rules = [*_ma_rules(cfg.video.num_layers), *head_rules()]
    else:
        modality = layout.modality
        spec = cfg.video if (cfg.shared or modality == "video") else cfg.audio
        rules = [*signal_rules("backbone", CLS_BASE, modality, spec.num_layers, projections=cfg.shared),
                 *_dense("head.fc", CLS_OPS.rstrip("/"))]
    return rules
