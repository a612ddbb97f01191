"""Official-VATT TensorFlow checkpoints of any size, for the converter tests and ``bench/bench_convert.py``.

``official_keys`` writes down every tensor a checkpoint of the official code holds, with its shape. It is written
from the key listings of the fixtures in ``tests/fixtures/official-vatt`` (made by the official TensorFlow code) and
the Keras attribute names of the official modules [C modeling/common/transformers.py TransformerEncoder,
SpatioTemporalEmbeddings; video/vitx3d.py ViTx3D; audio/autx1d.py AuTx1D; text/factory.py LanguageModel; text/t5.py;
unified/uvatt.py; heads/bridge.py FACHead; video/factory.py VideoModel, audio/factory.py AudioModel], independently
of ``vattcli.convert``. ``write_checkpoint`` writes those keys as a real TensorBundle (``.index`` SSTable with
crc32c-checked blocks, one ``.data`` shard, per-tensor masked crc32c: the minimal writer of tests/tfbundle.py,
streamed one tensor at a time so a full-size VATT-BBS never sits in memory) plus the ``checkpoint`` state file.

Dtypes follow the key: ``_CHECKPOINTABLE_OBJECT_GRAPH`` is a string scalar, ``save_counter`` and ``optimizer/iter``
are int64 scalars, everything else float32. ``tensor_value(key, shape, seed)`` regenerates the value written for a
key, so tests compare converted weights with the source without reading the bundle back.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from tfbundle import CODES, BundleWriter, Spec, numeric, strings

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
SAVE_COUNTER = "save_counter" + SUFFIX
OPTIMIZER_ITER = "optimizer/iter" + SUFFIX
KINDS = ("pretrain-ms", "pretrain-ma", "classifier-video", "classifier-audio")
# legacy Keras Adam (OptimizerV2) saves its step and float hyper-parameters beside the model [C experiments/base.py:
# tf.train.Checkpoint(model=model, optimizer=optimizer); get_optimizer_step reads optimizer/iter]
_OPTIMIZER_SCALARS = ("beta_1", "beta_2", "decay", "learning_rate")
_NOT_TRAINABLE = ("/moving_mean", "/moving_variance")  # BatchNorm statistics get no Adam slots

Keys = dict[str, tuple[int, ...]]


# ------------------------------------------------------------------------------------ the official variables

def _ln(p: str, d: int) -> Keys:
    return {f"{p}/gamma": (d,), f"{p}/beta": (d,)}


def _dense(p: str, d_in: int, d_out: int, *, bias: bool = True) -> Keys:
    return {f"{p}/kernel": (d_in, d_out), **({f"{p}/bias": (d_out,)} if bias else {})}


def _bn(p: str, d: int) -> Keys:
    return {**_ln(p, d), f"{p}/moving_mean": (d,), f"{p}/moving_variance": (d,)}


def _encoder(p: str, size: tuple[int, int, int]) -> Keys:
    """TransformerEncoder (pre-norm, biases): ``layers/i/{layer_norm, mha/{q,k,v,o}, feed_forward}``; heads * d_kv =
    d_model in every official config."""
    layers, d, ff = size[:3]
    out: Keys = {}
    for i in range(layers):
        s = f"{p}layers/{i}"
        out.update(_ln(f"{s}/layer_norm", d))
        for w in "qkvo":
            out.update(_dense(f"{s}/mha/{w}", d, d))
        out.update(_ln(f"{s}/feed_forward/layer_norm", d))
        out.update(_dense(f"{s}/feed_forward/mlp/wi", d, ff))
        out.update(_dense(f"{s}/feed_forward/mlp/wo", ff, d))
    return {**out, **_ln(f"{p}final_layer_norm", d)}


def _t5(p: str, size: tuple[int, int, int, int], relative_buckets: int) -> Keys:
    """T5 encoder: RMS-norm ``weight``, no biases, one relative-bias table (buckets, heads) in layer 0."""
    layers, d, ff, heads = size
    out: Keys = {}
    for i in range(layers):
        s = f"{p}layers/{i}"
        out[f"{s}/self_attention/layer_norm/weight"] = (d,)
        for w in "qkvo":
            out.update(_dense(f"{s}/self_attention/attention/{w}", d, d, bias=False))
        if i == 0:
            out[f"{s}/self_attention/attention/relative_attention_bias/embeddings"] = (relative_buckets, heads)
        out.update(_ln(f"{s}/feed_forward/layer_norm", d))
        out.update(_dense(f"{s}/feed_forward/mlp/wi", d, ff, bias=False))
        out.update(_dense(f"{s}/feed_forward/mlp/wo", ff, d, bias=False))
    return {**out, f"{p}final_layer_norm/weight": (d,)}


def _positions(p: str, sizes: tuple[int, ...], d: int) -> Keys:
    axes = ("temporal", "vertical", "horizontal")
    out = {f"{p}{axes[i]}_position_embeddings/embeddings": (n, d) for i, n in enumerate(sizes)}
    return {**out, **_ln(f"{p}layernorm", d)}


def _signal(p: str, modality: str, size: tuple[int, int, int], *, patch: tuple[int, int, int], grid: tuple[int, ...],
            audio_patch: int, audio_buckets: int, post_proj: int | None) -> Keys:
    """ViTx3D (``voxel_to_patch`` Conv3D) or AuTx1D (``wave_to_patch`` Conv1D) under ``p``; ``post_proj`` adds the
    ``pre_proj``/``post_proj`` Dense layers of a backbone fine-tuned from VATT-MA."""
    d = size[1]
    if modality == "video":
        out = {f"{p}voxel_to_patch/kernel": (*patch, 3, d), f"{p}voxel_to_patch/bias": (d,),
               **_positions(f"{p}pos_embedding_lookup/", grid, d)}
    else:
        out = {f"{p}wave_to_patch/kernel": (audio_patch, 1, d), f"{p}wave_to_patch/bias": (d,),
               **_positions(f"{p}pos_embedding_lookup/", (audio_buckets,), d)}
    out.update({f"{p}agg_embedding": (d,), **_encoder(f"{p}tx/", size)})
    if post_proj is not None:
        out.update({**_dense(f"{p}pre_proj", d, d), **_dense(f"{p}post_proj", d, post_proj)})
    return out


def _fac(d_video: int, d_audio: int, d_text: int, d_va: int, d_vt: int) -> Keys:
    """FACHead: video -> va (vid_to_hid, pre_bn, ReLU, dense, bn), va -> vt, audio -> va, text -> vt."""
    p = "_head_layer/_bridge_heads/0/"
    return {**_dense(f"{p}vid_to_hid", d_video, d_va, bias=False), **_bn(f"{p}hid_to_va/pre_bn", d_va),
            **_dense(f"{p}hid_to_va/dense", d_va, d_va, bias=False), **_bn(f"{p}hid_to_va/bn", d_va),
            **_dense(f"{p}va_to_vat/dense", d_va, d_vt, bias=False), **_bn(f"{p}va_to_vat/bn", d_vt),
            **_dense(f"{p}aud_to_va", d_audio, d_va), **_dense(f"{p}txt_to_vat", d_text, d_vt)}


def _ms(video, audio, text, *, vocab: int, word_dim: int, relative_buckets: int, d_va: int, d_vt: int,
        **signal) -> Keys:
    """tx_fac: ``_base_layer/{vid,aud}_backbone/_base/`` + ``_base_layer/txt_backbone/`` + the FAC head."""
    t = "_base_layer/txt_backbone/"
    return {**_signal("_base_layer/vid_backbone/_base/", "video", video, post_proj=None, **signal),
            **_signal("_base_layer/aud_backbone/_base/", "audio", audio, post_proj=None, **signal),
            f"{t}embedding/embeddings": (vocab, word_dim), f"{t}agg_embedding": (word_dim,),
            **_dense(f"{t}pre_proj", word_dim, text[1], bias=False),
            **_t5(f"{t}base_lm/", text, relative_buckets),
            **_fac(video[1], audio[1], text[1], d_va, d_vt)}


def _ma(video, *, patch, grid, audio_patch: int, audio_buckets: int, text_buckets: int, vocab: int, word_dim: int,
        post_proj: int, d_va: int, d_vt: int) -> Keys:
    """ut_fac: one ``unified_transformer`` with per-modality raw embeddings, projections, positions and AGG."""
    u, d = "_base_layer/unified_backbone/unified_transformer/", video[1]
    out: Keys = {f"{u}raw_to_embeddings/video/kernel": (*patch, 3, d), f"{u}raw_to_embeddings/video/bias": (d,),
                 f"{u}raw_to_embeddings/audio/kernel": (audio_patch, 1, d), f"{u}raw_to_embeddings/audio/bias": (d,),
                 f"{u}raw_to_embeddings/text/embeddings": (vocab, word_dim)}
    for modality, short, sizes, d_in in (("video", "vid", grid, d), ("audio", "aud", (audio_buckets,), d),
                                         ("text", "txt", (text_buckets,), word_dim)):
        out.update({**_dense(f"{u}pre_proj/{modality}", d_in, d), **_dense(f"{u}post_proj/{modality}", d, post_proj),
                    **_positions(f"{u}pos_embedding_lookup/{modality}/", sizes, d), f"{u}{short}_agg_embedding": (d,)})
    return {**out, **_encoder(f"{u}tx/", video), **_fac(post_proj, post_proj, post_proj, d_va, d_vt)}


def _optimizer(prefix: str, model: Keys) -> Keys:
    """Adam's step, hyper-parameters and ``m``/``v`` slots of every trainable variable."""
    out: Keys = {OPTIMIZER_ITER: (), **{f"optimizer/{name}{SUFFIX}": () for name in _OPTIMIZER_SCALARS}}
    for rel, shape in model.items():
        if not rel.endswith(_NOT_TRAINABLE):
            out.update({f"{prefix}{rel}/.OPTIMIZER_SLOT/optimizer/{s}{SUFFIX}": shape for s in "mv"})
    return out


def official_keys(kind: str, *, video: tuple[int, int, int] = (12, 768, 3072),
                  audio: tuple[int, int, int] = (12, 768, 3072), text: tuple[int, int, int, int] = (6, 512, 2048, 8),
                  patch: tuple[int, int, int] = (4, 16, 16), grid: tuple[int, int, int] = (8, 14, 14),
                  audio_patch: int = 128, audio_buckets: int = 1200, vocab: int = 65536, word_dim: int = 300,
                  d_va: int = 512, d_vt: int = 256, post_proj: int | None = None, num_classes: int | None = None,
                  ma_projections: bool = False, text_buckets: int = 16, relative_buckets: int = 32,
                  optimizer: bool = False, prefix: str = "model/layer_with_weights-0/") -> Keys:
    """Every key (-> shape) of an official checkpoint of ``kind`` (see ``KINDS``). Sizes: ``video``/``audio``
    (layers, d_model, d_ff), ``text`` (layers, d_model, d_ff, heads); defaults are VATT-BBS at the pre-training input.
    The shared Transformer of ``pretrain-ma`` takes ``video``; ``post_proj`` is its d_post_proj (needed there and
    with ``ma_projections``, a classifier fine-tuned from VATT-MA). ``prefix`` is what the model was saved under:
    ``model/layer_with_weights-0/`` for a functional wrapper (the fixtures), ``model/`` for the Keras subclass the
    official training loop checkpoints directly."""
    signal = dict(patch=patch, grid=grid, audio_patch=audio_patch, audio_buckets=audio_buckets)
    if kind == "pretrain-ms":
        model = _ms(video, audio, text, vocab=vocab, word_dim=word_dim, relative_buckets=relative_buckets,
                    d_va=d_va, d_vt=d_vt, **signal)
    elif kind == "pretrain-ma":
        if post_proj is None:
            raise ValueError("pretrain-ma needs post_proj")
        model = _ma(video, text_buckets=text_buckets, vocab=vocab, word_dim=word_dim, post_proj=post_proj,
                    d_va=d_va, d_vt=d_vt, **signal)
    elif kind in ("classifier-video", "classifier-audio"):
        if num_classes is None or (ma_projections and post_proj is None):
            raise ValueError("a classifier needs num_classes (and post_proj with ma_projections)")
        modality = kind.split("-")[1]
        size = video if modality == "video" else audio
        model = _signal("_base/", modality, size, post_proj=post_proj if ma_projections else None, **signal)
        model.update(_dense("_ops/cls", post_proj if ma_projections else size[1], num_classes))
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    keys = {f"{prefix}{rel}{SUFFIX}": shape for rel, shape in model.items()}
    keys.update({GRAPH: (), SAVE_COUNTER: ()})
    if optimizer:
        keys.update(_optimizer(prefix, model))
    return keys


def model_variables(keys: Keys) -> Keys:
    """The model's own variables among ``keys`` (what a converter must use): no optimizer state, no bookkeeping."""
    return {k: s for k, s in keys.items()
            if k not in (GRAPH, SAVE_COUNTER) and not k.startswith("optimizer/") and ".OPTIMIZER_SLOT" not in k}


# ------------------------------------------------------------------------------------ values

def dtype_of(key: str) -> str:
    if key == GRAPH:
        return "string"
    return "int64" if key in (SAVE_COUNTER, OPTIMIZER_ITER) else "float32"


def tensor_value(key: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The value ``write_checkpoint(..., seed)`` stores for ``key``: small random floats (BatchNorm variances
    positive, so a forward pass stays finite), counters 1."""
    if dtype_of(key) == "int64":
        return np.ones(shape, np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key.endswith("/moving_variance" + SUFFIX):
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)


# ------------------------------------------------------------------------------------ writing

def _spec(key: str, shape: tuple[int, ...], seed: int) -> Spec:
    if dtype_of(key) == "string":
        return strings([b"\n\x00(object graph placeholder)"], shape)
    return numeric(tensor_value(key, shape, seed), CODES[dtype_of(key)])


def write_checkpoint(prefix: Path, keys: Keys, seed: int = 0) -> Path:
    """``prefix.index`` + ``prefix.data-00000-of-00001`` holding ``keys`` (values from ``tensor_value``) and a
    ``checkpoint`` state file naming the prefix; returns the prefix."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with BundleWriter(prefix) as bundle:  # one tensor in memory at a time
        for key in sorted(keys):
            bundle.add(key, _spec(key, keys[key], seed))
    (prefix.parent / "checkpoint").write_text(f'model_checkpoint_path: "{prefix.name}"\n'
                                              f'all_model_checkpoint_paths: "{prefix.name}"\n')
    return prefix
