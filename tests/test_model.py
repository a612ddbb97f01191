"""The model core against the paper's numbers and independent re-computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vattcli.api import build_model, list_models, model_config
from vattcli.core.layers import relative_position_bucket
from vattcli.core.model import SIZES, VATT, ModelConfig
from vattcli.core.tokenizers import DropToken, PositionalTables, VideoTubelets, resample_table


def meta_model(**kw) -> VATT:
    with torch.device("meta"):
        return VATT(ModelConfig(**kw))


@pytest.mark.parametrize("size,paper_millions", [("small", 20.9), ("base", 87.9), ("medium", 155.0),
                                                 ("large", 306.1)])
def test_video_backbone_parameter_count_matches_paper_table7(size, paper_millions):
    model = meta_model(video=SIZES[size])
    millions = model.num_params(model.video) / 1e6
    assert abs(millions - paper_millions) / paper_millions < 0.02, millions


def test_combo_totals_match_paper_within_3_percent():
    """BBS 197 M, MBS 264 M, LBS 415 M [P §4.1]; the paper's totals leave out the 19.7 M word-vector table."""
    for name, paper in (("vatt-bbs", 197), ("vatt-mbs", 264), ("vatt-lbs", 415)):
        model = build_model(name, device="meta")
        embedding = model.text.embedding.table.weight.numel()
        millions = (model.num_params() - embedding) / 1e6
        assert abs(millions - paper) / paper < 0.03, (name, millions)


def test_ma_encoder_is_one_object_tokenizers_and_agg_are_not():
    model = build_model("vatt-ma-medium", device="meta")
    assert model.video.encoder is model.audio.encoder is model.text.encoder
    enc = {id(p) for p in model.video.encoder.parameters()}
    assert enc == {id(p) for p in model.audio.encoder.parameters()} == {id(p) for p in model.text.encoder.parameters()}
    assert model.video.agg.vector is not model.audio.agg.vector is not model.text.agg.vector
    own = lambda m: {id(p) for p in m.parameters()} - enc  # noqa: E731
    assert not own(model.video) & own(model.audio) and not own(model.audio) & own(model.text)
    # one Medium encoder (~151 M without tokenizers) counted once: well below three copies
    assert 150e6 < model.num_params(model.video.encoder) < 156e6
    assert model.num_params() < 200e6


def test_video_tokens_1568_and_droptoken_keeps_784_in_training_only():
    tubelets = VideoTubelets(8)
    tokens, grid = tubelets(torch.zeros(1, 3, 32, 224, 224))
    assert grid == (8, 14, 14) and tokens.shape == (1, 1568, 8)
    drop = DropToken(0.5)
    assert drop.train()(tokens, 8 * 14 * 14).shape == (1, 784, 8)
    assert drop.eval()(tokens, 8 * 14 * 14).shape == (1, 1568, 8)
    audio = DropToken(0.5).train()
    assert audio(torch.zeros(2, 1200, 4), 1200).shape == (2, 600, 4)


def test_tubelet_flattening_is_t_major_then_h_then_w_like_conv3d():
    torch.manual_seed(0)
    tub = VideoTubelets(5)
    video = torch.randn(2, 3, 8, 48, 32)
    tokens, grid = tub(video)
    conv = F.conv3d(video, tub.proj.weight.view(5, 3, 4, 16, 16), tub.proj.bias, stride=(4, 16, 16))
    expected = conv.flatten(2).transpose(1, 2)  # Conv3D output (B, d, t, h, w) flattened t, h, w
    assert grid == (2, 3, 2)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-4)


def test_droptoken_shares_one_permutation_across_batch_by_default():
    torch.manual_seed(0)
    x = torch.arange(10.0).view(1, 10, 1).expand(4, 10, 1)
    kept = DropToken(0.5).train()(x, 10)
    assert kept.shape == (4, 5, 1) and all(torch.equal(kept[0], kept[i]) for i in range(4))
    per = DropToken(0.5, per_sample=True).train()(x, 10)
    assert any(not torch.equal(per[0], per[i]) for i in range(4))
    assert all(len(set(per[i, :, 0].tolist())) == 5 for i in range(4))  # no token twice


def test_positional_tables_identity_at_equal_size_and_smooth_when_resampled():
    table = torch.randn(14, 6)
    assert resample_table(table, 14) is table
    # the spline reproduces linear functions exactly (it has a linear term) at the new positions j / n_new
    x_old = torch.arange(14.0) / 14
    linear = (3 * x_old - 1)[:, None].repeat(1, 2)
    resampled = resample_table(linear, 20)
    torch.testing.assert_close(resampled[:, 0], 3 * torch.arange(20.0) / 20 - 1, rtol=1e-4, atol=1e-4)
    # a smooth curve stays close to the curve at the new positions (the last one, 19/20 > 13/14, extrapolates)
    smooth = torch.sin(2 * x_old)[:, None]
    new = resample_table(smooth, 20)[:, 0]
    truth = torch.sin(2 * torch.arange(20.0) / 20)
    torch.testing.assert_close(new[:19], truth[:19], rtol=0, atol=1e-3)
    torch.testing.assert_close(new[19:], truth[19:], rtol=0, atol=5e-3)


def test_positions_resize_8x14x14_to_8x20x20_and_forward_at_320px():
    model = build_model("vatt-tiny", droptoken_rate=0.0, video_grid=[8, 14, 14]).eval()
    pos = model.video.positions
    on_the_fly = pos.embedding((8, 20, 20))
    pos.resize_((8, 20, 20))
    assert pos.sizes == (8, 20, 20)
    torch.testing.assert_close(pos.embedding((8, 20, 20)), on_the_fly)
    out = model(video=torch.zeros(1, 3, 32, 320, 320).uniform_(-1, 1))
    assert out["video_va"].shape == (1, 64)


def test_real_size_embeddings_are_512_and_256_dimensional():
    model = build_model("vatt-bbs", device="meta").eval()
    with torch.device("meta"):
        out = model(video=torch.empty(2, 3, 32, 224, 224), audio=torch.empty(2, 153600),
                    text=torch.zeros(2, 5, 16, dtype=torch.long))
    assert out["video_va"].shape == (2, 512) and out["video_vt"].shape == (2, 256)
    assert out["audio_va"].shape == (2, 512) and out["text_vt"].shape == (2, 5, 256)
    assert out["video_features"].shape == (2, 768) and out["text_features"].shape == (2, 5, 512)


def tiny_inputs(batch=4):
    torch.manual_seed(0)
    video = torch.rand(batch, 3, 8, 64, 64) * 2 - 1
    audio = torch.rand(batch, 12800) * 2 - 1
    text = torch.randint(1, 512, (batch, 5, 16))
    text[:, :, 10:] = 0
    text[-1] = 0  # an AudioSet-style sample without captions
    return video, audio, text


@pytest.mark.parametrize("name", ["vatt-tiny", "vatt-tiny-ma"])
def test_forward_backward_fp32_and_bf16_autocast(name):
    model = build_model("vatt-tiny", shared=(name == "vatt-tiny-ma")).train()
    video, audio, text = tiny_inputs()
    out = model(video=video, audio=audio, text=text)
    assert out["text_valid"].tolist() == [True, True, True, False]
    loss = sum(v.float().pow(2).mean() for k, v in out.items() if k.endswith(("_va", "_vt")))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video=video, audio=audio, text=text)
        assert out["video_va"].dtype == torch.bfloat16
        loss = sum(v.float().pow(2).mean() for k, v in out.items() if k.endswith(("_va", "_vt")))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_does_not_change_text_embedding():
    """Padding id 0 is masked: the same caption padded to 16 or to 8 gives the same AGG output."""
    model = build_model("vatt-tiny").eval()
    ids = torch.tensor([[5, 9, 17, 3] + [0] * 12])
    long = model(text=ids)["text_vt"]
    short = model(text=ids[:, :8])["text_vt"]
    torch.testing.assert_close(long, short, rtol=1e-5, atol=1e-5)


def test_droptoken_never_active_in_eval_outputs_deterministic():
    model = build_model("vatt-tiny").eval()
    video, audio, _ = tiny_inputs(2)
    a = model(video=video, audio=audio)
    b = model(video=video, audio=audio)
    torch.testing.assert_close(a["video_va"], b["video_va"])
    torch.testing.assert_close(a["audio_va"], b["audio_va"])


def test_relative_position_buckets_match_hand_computed_t5_values():
    """T5 bidirectional bucketing, 32 buckets, max distance 64: 16 per direction, 8 exact, then log-spaced."""
    rel = torch.tensor([0, 1, 7, 8, 12, 63, 100, -1, -8, -100])

    def t5(n):  # direct transcription of T5's formula with n = key - query
        bucket = 16 if n > 0 else 0
        n = abs(n)
        if n < 8:
            return bucket + n
        return bucket + min(15, 8 + int(math.log(n / 8) / math.log(64 / 8) * 8))

    assert relative_position_bucket(rel).tolist() == [t5(int(n)) for n in rel]


def test_head_variants_have_the_reference_composition():
    code = build_model("vatt-tiny").head
    paper = build_model("vatt-tiny", head_variant="paper").head
    assert isinstance(code.audio_to_va, torch.nn.Linear) and code.audio_to_va.bias is not None
    assert isinstance(code.va_to_vt[0], torch.nn.ReLU)
    assert isinstance(paper.audio_to_va[1], torch.nn.BatchNorm1d) and isinstance(paper.va_to_vt[0], torch.nn.Linear)


def test_every_shipped_model_recipe_builds():
    assert {"vatt-bbs", "vatt-mbs", "vatt-lbs", "vatt-ma-medium", "vatt-tiny"} <= set(list_models())
    assert model_config("vatt-lbs").video == SIZES["large"]
    assert model_config("vatt-mbs").video == SIZES["medium"] and model_config("vatt-mbs").text == SIZES["small"]


def test_positional_tables_layer_norm_then_add():
    pos = PositionalTables((2, 3), 4, dropout=0.0)
    tokens = torch.zeros(1, 6, 4)
    out = pos(tokens, (2, 3))
    summed = (pos.tables[0][:, None] + pos.tables[1][None]).reshape(6, 4)
    torch.testing.assert_close(out[0], F.layer_norm(summed, (4,), pos.norm.weight, pos.norm.bias, 1e-6))
