"""What an official VATT checkpoint holds: its kind, read from the key names, and every size, read from the shapes.

Keys of ``tf.train.Checkpoint(model=...)`` end in ``/.ATTRIBUTES/VARIABLE_VALUE`` and follow the Keras attribute
names of the official modules [C modeling/factory.py MMRLModel, backbones/multimodal.py, video/factory.py,
audio/factory.py; reference §8.4]:

- modality-specific pre-training (``tx_fac``: VATT-BBS/MBS/LBS): ``_base_layer/vid_backbone/_base/...`` (ViT),
  ``_base_layer/aud_backbone/_base/...`` (WaT), ``_base_layer/txt_backbone/...`` (T5), ``_head_layer/_bridge_heads/0``
  (the FAC head);
- modality-agnostic pre-training (``ut_fac``: VATT-MA): ``_base_layer/unified_backbone/unified_transformer/...``;
- fine-tuned classifiers: ``_base/...`` (ViT or WaT) + ``_ops/cls`` (the class Dense).

Everything before those anchors (``model/``, ``layer_with_weights-0/``) depends on how the model was wrapped when
saved and is ignored. Optimizer slots (``optimizer/...``, ``.OPTIMIZER_SLOT``), ``save_counter`` and the object
graph are skipped.

Sizes come from the shapes; the head count does not (the q/k/v kernels are (d_model, heads * d_kv)). Every official
config has d_kv = 64 [C configs/video.py, audio.py, unified.py], so heads = width / 64 is taken for the official
widths only (512, 768, 1024, 1536); any other width needs ``--heads TOWER=N``. The T5 text tower stores one
relative-bias column per head, so its head count is read from the shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vattcli.core.model import SIZES, BackboneSpec, ModelConfig
from vattcli.errors import ConvertError

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OFFICIAL_WIDTHS = frozenset(spec.d_model for spec in SIZES.values())
D_KV = 64
_SKIP = re.compile(r"(^|/)(optimizer|save_counter|_CHECKPOINTABLE_OBJECT_GRAPH)(/|$)|\.OPTIMIZER_SLOT|"
                   r"^(global_step|step)(/|$)")
_ANCHORS = ("_base_layer/", "_head_layer/", "_base/", "_ops/")
_LAYER = re.compile(r"layers/(\d+)/")

MS_VIDEO = "_base_layer/vid_backbone/_base/"
MS_AUDIO = "_base_layer/aud_backbone/_base/"
MS_TEXT = "_base_layer/txt_backbone/"
MA = "_base_layer/unified_backbone/unified_transformer/"
HEAD = "_head_layer/_bridge_heads/0/"
CLS_BASE = "_base/"
CLS_OPS = "_ops/cls/"


@dataclass
class Layout:
    """An official checkpoint's variables (relative names -> full keys), kind and inferred model."""

    kind: str  # "pretrain-ms", "pretrain-ma", "classifier-video", "classifier-audio"
    names: dict[str, str]  # relative name (after the anchor, suffix removed) -> full key in the bundle
    skipped: list[str]  # full keys deliberately not converted (optimizer state, counters)
    model: ModelConfig = field(default_factory=ModelConfig)
    num_classes: int | None = None

    @property
    def modality(self) -> str | None:
        return self.kind.split("-")[1] if self.kind.startswith("classifier") else None


def relative_name(key: str) -> str | None:
    """The key from its anchor on, without the Keras suffix; None when no anchor is found."""
    name = key[: -len(SUFFIX)] if key.endswith(SUFFIX) else key
    name = re.sub(r"^.*?layer_with_weights-\d+/", "", name)
    name = re.sub(r"^model/", "", name)
    if name.startswith(_ANCHORS):
        return name
    hits = [name.find("/" + a) for a in _ANCHORS if "/" + a in name]
    return name[min(hits) + 1:] if hits else None


def split_keys(keys: list[str], source: str) -> tuple[dict[str, str], list[str]]:
    """Relative name -> key for the model variables; the skipped keys. An unrecognised key is an error."""
    names: dict[str, str] = {}
    skipped: list[str] = []
    unknown: list[str] = []
    for key in keys:
        if _SKIP.search(key):
            skipped.append(key)
            continue
        rel = relative_name(key)
        if rel is None:
            unknown.append(key)
        elif rel in names:
            raise ConvertError(f"{source}: two tensors map to {rel!r} ({names[rel]} and {key})")
        else:
            names[rel] = key
    if unknown:
        raise ConvertError(f"{source}: not a VATT checkpoint: {len(unknown)} tensors outside the VATT model "
                           f"(e.g. {unknown[0]!r}); expected keys under _base_layer/, _head_layer/ or _base/ + _ops/")
    if not names:
        raise ConvertError(f"{source}: holds no model variables (only {len(skipped)} optimizer/bookkeeping tensors)")
    return names, skipped


def detect_kind(names: dict[str, str], source: str) -> str:
    """The checkpoint kind, or one line naming what was found instead."""
    has = lambda prefix: any(n.startswith(prefix) for n in names)  # noqa: E731
    if has(MA):
        return "pretrain-ma"
    if has("_base_layer/"):
        for part, what in ((MS_VIDEO + "voxel_to_patch/", "a ViT video backbone (I3D?)"),
                           (MS_AUDIO + "wave_to_patch/", "a waveform Transformer audio backbone (ResNet or "
                                                         "spectrogram Transformer?)"),
                           (MS_TEXT + "base_lm/layers/0/self_attention/attention/relative_attention_bias/",
                            "a T5 text backbone (BERT or linear?)")):
            if not has(part):
                raise ConvertError(f"{source}: unsupported model: no {part.rstrip('/')}, so not {what}; "
                                   "vatt converts the tx_fac (ViT + WaT + T5) and ut_fac models")
        if not has(HEAD):
            raise ConvertError(f"{source}: unsupported model: no {HEAD.rstrip('/')} (the FAC head); "
                               "only the mlp_fac head of the released models is supported")
        return "pretrain-ms"
    if has(CLS_OPS) and has(CLS_BASE):
        if has(CLS_BASE + "voxel_to_patch/"):
            return "classifier-video"
        if has(CLS_BASE + "wave_to_patch/"):
            return "classifier-audio"
        raise ConvertError(f"{source}: unsupported classifier: its backbone has no voxel_to_patch (ViT) or "
                           "wave_to_patch (WaT) (I3D, ResNet or spectrogram Transformer?)")
    found = sorted({n.split("/")[0] for n in names})
    raise ConvertError(f"{source}: not a VATT model checkpoint (top-level parts: {', '.join(found)})")


def _num_layers(names: dict[str, str], prefix: str) -> int:
    found = {int(m.group(1)) for n in names if n.startswith(prefix) and (m := _LAYER.match(n[len(prefix):]))}
    if not found or found != set(range(len(found))):
        raise ConvertError(f"{prefix}: expected layers 0..N-1, found {sorted(found) or 'none'}")
    return len(found)


def _heads(tower: str, width: int, overrides: dict[str, int]) -> int:
    if tower in overrides:
        heads = overrides[tower]
        if heads < 1 or width % heads:
            raise ConvertError(f"--heads {tower}={heads}: the q/k/v width {width} is not a multiple of {heads}")
        return heads
    if width in OFFICIAL_WIDTHS and width % D_KV == 0:
        return width // D_KV
    raise ConvertError(f"{tower}: cannot infer the head count: q/k/v width {width} is not an official size "
                       f"(d_kv 64 at {', '.join(map(str, sorted(OFFICIAL_WIDTHS)))}); pass --heads {tower}=N")


def encoder_spec(shape, names: dict[str, str], prefix: str, tower: str, overrides: dict[str, int],
                 attn: str = "mha", heads: int | None = None) -> BackboneSpec:
    """Layers, d_model, d_ff, heads and d_kv of the encoder under ``prefix`` (``tx/`` or ``base_lm/``)."""
    q = shape(f"{prefix}layers/0/{attn}/q/kernel")
    d_model, width = q
    d_ff = shape(f"{prefix}layers/0/feed_forward/mlp/wi/kernel")[1]
    heads = heads if heads is not None and tower not in overrides else _heads(tower, width, overrides)
    if width % heads:
        raise ConvertError(f"{tower}: q/k/v width {width} is not a multiple of its {heads} heads")
    return BackboneSpec(_num_layers(names, prefix), d_model, d_ff, heads, width // heads)


def _official_name(cfg: ModelConfig, kind: str) -> str:
    """The paper's model name when the sizes are an official one [P Tab 7, §4.1], else ``converted-<kind>``."""
    by_spec = {spec: name for name, spec in SIZES.items()}
    video = by_spec.get(cfg.video)
    if cfg.shared:
        return "vatt-ma-medium" if video == "medium" else f"converted-{kind}"
    if kind == "pretrain-ms":
        if (by_spec.get(cfg.audio), by_spec.get(cfg.text)) != ("base", "small"):
            return f"converted-{kind}"
    elif kind == "classifier-audio":
        return "vatt-bbs" if by_spec.get(cfg.audio) == "base" else f"converted-{kind}"
    return {"base": "vatt-bbs", "medium": "vatt-mbs", "large": "vatt-lbs"}.get(video, f"converted-{kind}")


def infer_model(kind: str, names: dict[str, str], shape, overrides: dict[str, int]) -> tuple[ModelConfig, int | None]:
    """The ``ModelConfig`` (and class count, for a classifier) that the shapes describe. ``shape(rel)`` gives a
    variable's shape by its relative name."""
    unknown = sorted(set(overrides) - {"video", "audio", "text", "shared"})
    if unknown:
        raise ConvertError(f"--heads {unknown[0]}: unknown tower; expected video, audio, text or shared")
    overrides = {("video" if k == "shared" else k): v for k, v in overrides.items()}
    if kind == "pretrain-ma":
        tower = "video"
        spec = encoder_spec(shape, names, f"{MA}tx/", tower, overrides)
        vk = shape(f"{MA}raw_to_embeddings/video/kernel")
        words = shape(f"{MA}raw_to_embeddings/text/embeddings")
        cfg = ModelConfig(video=spec, audio=spec, text=spec, shared=True,
                          post_projection=shape(f"{MA}post_proj/video/kernel")[1], video_patch=tuple(vk[:3]),
                          video_grid=_grid(shape, f"{MA}pos_embedding_lookup/video/"),
                          audio_patch=shape(f"{MA}raw_to_embeddings/audio/kernel")[0],
                          audio_buckets=_grid(shape, f"{MA}pos_embedding_lookup/audio/", 1)[0],
                          text_buckets=_grid(shape, f"{MA}pos_embedding_lookup/text/", 1)[0],
                          vocab_size=words[0], word_dim=words[1], **_fac(shape))
        return cfg.replace(name=_official_name(cfg, kind)), None
    if kind == "pretrain-ms":
        bias = shape(f"{MS_TEXT}base_lm/layers/0/self_attention/attention/relative_attention_bias/embeddings")
        words = shape(f"{MS_TEXT}embedding/embeddings")
        cfg = ModelConfig(video=encoder_spec(shape, names, f"{MS_VIDEO}tx/", "video", overrides),
                          audio=encoder_spec(shape, names, f"{MS_AUDIO}tx/", "audio", overrides),
                          text=encoder_spec(shape, names, f"{MS_TEXT}base_lm/", "text", overrides,
                                            attn="self_attention/attention", heads=bias[1]),
                          video_patch=tuple(shape(f"{MS_VIDEO}voxel_to_patch/kernel")[:3]),
                          video_grid=_grid(shape, f"{MS_VIDEO}pos_embedding_lookup/"),
                          audio_patch=shape(f"{MS_AUDIO}wave_to_patch/kernel")[0],
                          audio_buckets=_grid(shape, f"{MS_AUDIO}pos_embedding_lookup/", 1)[0],
                          vocab_size=words[0], word_dim=words[1], relative_buckets=bias[0], **_fac(shape))
        return cfg.replace(name=_official_name(cfg, kind)), None
    modality = kind.split("-")[1]
    projections = f"{CLS_BASE}pre_proj/kernel" in names
    spec = encoder_spec(shape, names, f"{CLS_BASE}tx/", modality, overrides)
    extra: dict = {"shared": projections, "droptoken_rate": 0.0}
    if projections:
        extra["post_projection"] = shape(f"{CLS_BASE}post_proj/kernel")[1]
    if modality == "video":
        cfg = ModelConfig(video=spec, video_patch=tuple(shape(f"{CLS_BASE}voxel_to_patch/kernel")[:3]),
                          video_grid=_grid(shape, f"{CLS_BASE}pos_embedding_lookup/"), **extra)
    else:
        cfg = ModelConfig(video=spec if projections else SIZES["base"], audio=spec,
                          audio_patch=shape(f"{CLS_BASE}wave_to_patch/kernel")[0],
                          audio_buckets=_grid(shape, f"{CLS_BASE}pos_embedding_lookup/", 1)[0], **extra)
    return cfg.replace(name=_official_name(cfg, kind)), shape(f"{CLS_OPS}kernel")[1]


def _grid(shape, prefix: str, axes: int = 3) -> tuple[int, ...]:
    names = ("temporal", "vertical", "horizontal")[:axes]
    return tuple(shape(f"{prefix}{n}_position_embeddings/embeddings")[0] for n in names)


def _fac(shape) -> dict[str, int]:
    """d_va and d_vt of the FAC head [C heads/bridge.py]."""
    return {"d_va": shape(f"{HEAD}aud_to_va/kernel")[1], "d_vt": shape(f"{HEAD}txt_to_vat/kernel")[1]}
