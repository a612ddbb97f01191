"""Common-space projection heads ("fine and coarse") and classification heads.

The fine space S_va (512-d) holds video and audio; the coarse space S_vt (256-d) holds video and text, and video
reaches it through S_va [P §3.3 eq.3]. The default ``variant="code"`` is the official composition, so released
checkpoints map weight for weight [C modeling/heads/bridge.py FACHead, mlp_lib.py; reference §4]:

- g_v->va: Dense(512, no bias) -> BN -> ReLU -> Dense(512, no bias) -> BN
- g_v->vt: ReLU -> Dense(256, no bias) -> BN   (applied to the video's S_va embedding)
- g_a->va: Dense(512, bias), no BN
- g_t->vt: Dense(256, bias), no BN

``variant="paper"`` follows the paper's text instead: linear g_a->va, g_t->vt, g_v->vt, each followed by BN, and
no ReLU in front of g_v->vt [P §3.3]. BatchNorm uses eps 1e-5 and torch momentum 0.1 (Keras 0.9); it becomes
SyncBatchNorm under DDP (see ``vattcli.train``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vattcli.core.layers import glorot_uniform_


def _dense(d_in: int, d_out: int, *, bias: bool) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=bias)
    glorot_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _bn(d: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(d, eps=1e-5, momentum=0.1)


class FineCoarseHead(nn.Module):
    """Projects pooled backbone features into S_va and S_vt [P §3.3; C bridge.py]."""

    def __init__(self, d_video: int, d_audio: int, d_text: int, *, d_va: int = 512, d_vt: int = 256,
                 variant: str = "code") -> None:
        super().__init__()
        if variant not in ("code", "paper"):
            raise ValueError(f"head variant must be 'code' or 'paper', got {variant!r}")
        self.variant = variant
        self.video_to_va = nn.Sequential(_dense(d_video, d_va, bias=False), _bn(d_va), nn.ReLU(),
                                         _dense(d_va, d_va, bias=False), _bn(d_va))
        if variant == "code":
            self.va_to_vt = nn.Sequential(nn.ReLU(), _dense(d_va, d_vt, bias=False), _bn(d_vt))
            self.audio_to_va = _dense(d_audio, d_va, bias=True)
            self.text_to_vt = _dense(d_text, d_vt, bias=True)
        else:
            self.va_to_vt = nn.Sequential(_dense(d_va, d_vt, bias=False), _bn(d_vt))
            self.audio_to_va = nn.Sequential(_dense(d_audio, d_va, bias=False), _bn(d_va))
            self.text_to_vt = nn.Sequential(_dense(d_text, d_vt, bias=False), _bn(d_vt))

    def video(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d_video) -> (video_va (B, 512), video_vt (B, 256))."""
        va = self.video_to_va(pooled)
        return va, self.va_to_vt(va)

    def audio(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.audio_to_va(pooled)

    def text(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text_to_vt(pooled)


class ClassificationHead(nn.Module):
    """Dropout -> Dense(C) on the AGG feature [C video/factory.py: cls_dropout_rate 0.5, glorot-normal kernel].

    ``bias_init`` sets every logit's bias, e.g. -log(C - 1) for the AudioSet sigmoid head [C audio/factory.py].
    """

    def __init__(self, d_in: int, num_classes: int, *, dropout: float = 0.5, bias_init: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(d_in, num_classes)
        nn.init.xavier_normal_(self.fc.weight)
        nn.init.constant_(self.fc.bias, bias_init)

    @staticmethod
    def sigmoid_prior_bias(num_classes: int) -> float:
        """-log(C - 1): every class starts at probability 1/C under a sigmoid [C audio/factory.py]."""
        return -math.log(num_classes - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))
