"""Session fixtures shared by the pipeline tests: a small toy dataset and a briefly pre-trained vatt-tiny."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_TOY = dict(howto_videos=4, howto_segments=3, kinetics_train_per_class=1, kinetics_val_per_class=1,
                 youcook2_videos=4, youcook2_segments=3)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """The toy dataset at a small size (raw media, shards for every set, tokenizer)."""
    from vattcli.data.toy import build_toy

    out = tmp_path_factory.mktemp("toy-data")
    build_toy(out, seed=1, workers=2, **SMALL_TOY)
    return out


def toy_overrides(toy: Path, run: Path) -> list[str]:
    return [f"data.train={{howto100m: {toy / 'shards/howto100m'}}}", f"data.tokenizer={toy / 'tokenizer.model'}",
            f"train.run_dir={run}", "data.batch_size=8", "data.num_workers=0", "data.shuffle_buffer=16",
            "train.log_every=1"]


@pytest.fixture(scope="session")
def toy_ckpt(toy_data, tmp_path_factory) -> Path:
    """A vatt-tiny pre-trained for a few steps on the toy set (a complete checkpoint with its tokenizer)."""
    from vattcli.config import load_config
    from vattcli.train.config import PretrainConfig
    from vattcli.train.pretrain import run_pretrain

    run = tmp_path_factory.mktemp("toy-pretrain")
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", [*toy_overrides(toy_data, run), "train.steps=4"])
    return Path(run_pretrain(cfg)["checkpoint"])
