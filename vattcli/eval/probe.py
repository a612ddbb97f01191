"""Linear probing on frozen AGG features with the reference's low-rank classifier [P A.3.2, Tab 8;
C utils/eval/evaluators.py LinearClsHead].

Features: one centre clip per training video, no augmentation; at test, ``windows`` clips whose class probabilities
are averaged. Classifier: Dense(128, glorot-normal, no activation) -> Dropout(0.9) (a random 10 % of the 128
components kept per step) -> Dense(C) with an L2 penalty of 0.1 on its kernel; Adam 5e-4, batch 64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from vattcli.core.backbones import SignalBackbone
from vattcli.data.reader import ShardDataset, iter_loader
from vattcli.eval.embed import progress_bar
from vattcli.eval.metrics import topk_accuracy
from vattcli.errors import DataError


class LowRankClassifier(nn.Module):
    """C = U V with ``rank`` components; dropout on the components while training [P A.3.2]."""

    def __init__(self, d_in: int, num_classes: int, *, rank: int = 128, keep: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        nn.init.xavier_normal_(self.down.weight)
        self.drop = nn.Dropout(1.0 - keep)
        self.up = nn.Linear(rank, num_classes)
        nn.init.xavier_uniform_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.down(x)))


@dataclass
class Features:
    x: torch.Tensor  # (N, V, d): V views per clip
    y: torch.Tensor  # (N,)


@torch.no_grad()
def extract_features(backbone: SignalBackbone, urls: list[str], decode, *, device: torch.device,
                     num_workers: int = 0, label: str = "features", console: Console | None = None) -> Features:
    """Pooled AGG features of every sample (all its views) with the backbone frozen in eval mode."""
    console = console or Console(stderr=True)
    backbone.eval()
    dataset = ShardDataset(urls, decode=decode, epochs=1, rank=0, world_size=1)
    xs, ys = [], []
    with progress_bar(console, label) as progress:
        task = progress.add_task(label, total=None)
        for sample in iter_loader(DataLoader(dataset, batch_size=None, num_workers=num_workers)):
            views = sample["video"] if "video" in sample else sample["audio"]
            xs.append(backbone(views.to(device)).pooled.float().cpu())
            ys.append(int(sample["label"]))
            progress.advance(task)
    if not xs:
        raise DataError(f"no sample of {urls[0]} ... could be decoded for the linear probe")
    return Features(torch.stack(xs), torch.tensor(ys))


def train_probe(train: Features, num_classes: int, *, steps: int = 50_000, batch_size: int = 64, lr: float = 5e-4,
                l2: float = 0.1, rank: int = 128, keep: float = 0.1, seed: int = 1) -> LowRankClassifier:
    """Fit the low-rank classifier on the (first view of the) training features [C evaluators.py: seed 1]."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = train.x[:, 0], train.y
    probe = LowRankClassifier(x.shape[1], num_classes, rank=rank, keep=keep)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    probe.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        loss = F.cross_entropy(probe(x[idx]), y[idx]) + l2 * probe.up.weight.pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: LowRankClassifier, test: Features) -> dict[str, float]:
    """Top-1/top-5 (percent) with class probabilities averaged over each clip's views [P A.3.2]."""
    n, v, d = test.x.shape
    probs = F.softmax(probe(test.x.reshape(n * v, d)), dim=-1).view(n, v, -1).mean(1)
    return {**topk_accuracy(probs, test.y, ks=(1, 5)), "count": n}
