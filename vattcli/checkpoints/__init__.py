"""Checkpoint I/O: the folder format every command reads and writes (training runs, ``vatt convert``, export).

It sits below ``train/`` and ``eval/`` so both, and the API, load and save checkpoints without importing each other:
``folder`` (write atomically, find, read config/meta), ``weights`` (safetensors with aliases, strict fit checks),
``state`` (RNG and ``train_state.pt``, weights-only) and ``manager`` (keep-last plus best).
"""

from vattcli.checkpoints.folder import (CONFIG, LABELS, META, TMP_PREFIX, find_checkpoint, is_complete, read_config,
                                        read_meta, save_checkpoint, tokenizer_path)
from vattcli.checkpoints.manager import CheckpointManager
from vattcli.checkpoints.state import TRAIN_STATE, capture_rng, load_train_state, restore_rng
from vattcli.checkpoints.weights import WEIGHTS, LoadResult, Reshape, load_weights, weights_hash

__all__ = ["CONFIG", "LABELS", "META", "TMP_PREFIX", "TRAIN_STATE", "WEIGHTS", "CheckpointManager", "LoadResult", "Reshape", "capture_rng",
           "find_checkpoint", "is_complete", "load_train_state", "load_weights", "read_config", "read_meta",
           "restore_rng", "save_checkpoint", "tokenizer_path", "weights_hash"]
