"""Caption tokenizers: a trained SentencePiece model, or the official word vocabulary.

Every tokenizer maps a caption to at most ``max_len`` ids (16 in VATT), clipped or padded with
id 0, and id 0 means padding and nothing else: the text backbone masks ``id == 0`` [P A.2.1;
C modeling/backbones/text/factory.py]. The official release tokenizes with DMVR's
``WordTokenizer`` over ``howto100m_en.txt`` [C data/processing.py]; this module reads that format
too, so the released word2vec table lines up id for id.

A checkpoint stores its tokenizer next to the weights (``tokenizer.model`` or ``tokenizer.txt``),
and ``TextTokenizer.sha256`` lets a retrieval index check it was built with the same one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import sentencepiece as spm

from vattcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PAD_ID = 0
SP_UNK_ID = 1
SP_MODEL_NAME = "tokenizer.model"
WORD_VOCAB_NAME = "tokenizer.txt"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_MODEL_TYPES = ("unigram", "bpe", "word", "char")
_TOO_HIGH = re.compile(r"vocabulary size (?:is )?too high.*?<= ?(\d+)", re.IGNORECASE)


class CaptionLines(NamedTuple):
    """Captions read from a text file, and how many lines were not valid UTF-8."""

    lines: list[str]
    num_undecodable: int


@dataclass
class TrainStats:
    """Counts from one ``train_tokenizer`` run (filled in place when passed in)."""

    num_captions: int = 0
    num_empty: int = 0
    requested_vocab_size: int = 0
    vocab_size: int = 0
    max_vocab_possible: int | None = None

    @property
    def vocab_limited(self) -> bool:
        """True when the corpus could not support the requested vocabulary size."""
        return self.max_vocab_possible is not None


def read_caption_lines(path: Path) -> CaptionLines:
    """Read one caption per line, skipping (and counting) lines that are not valid UTF-8."""
    lines: list[str] = []
    bad = 0
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read caption file ({exc.strerror})") from exc
    for chunk in raw.splitlines():
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            bad += 1
    return CaptionLines(lines, bad)


def train_tokenizer(
    captions: Iterable[str],
    out_prefix: Path,
    vocab_size: int = 65536,
    *,
    lowercase: bool = True,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 10_000_000,
    seed: int = 0,
    stats: TrainStats | None = None,
) -> Path:
    """Train a SentencePiece model on captions; write ``<out_prefix>.model`` and ``.vocab``.

    Ids: pad 0, unk 1, no bos/eos, so id 0 is padding only [P A.2.1]. Lowercasing uses the
    ``nmt_nfkc_cf`` normalization rule (NFKC + case folding), which is stored in the model, so
    ``encode`` folds case too and "RED" == "red". Empty captions are skipped and counted. The
    captions are spooled to a temporary file so a generator of any length can be retried and
    SentencePiece samples at most ``input_sentence_size`` of them.

    When the corpus is too small for ``vocab_size`` SentencePiece refuses; training is retried
    with ``hard_vocab_limit=False`` (the size becomes an upper bound) and a warning names the
    largest size the corpus supports (also in ``stats.max_vocab_possible``).
    """
    if vocab_size < 3:
        raise ConfigError(f"tokenizer vocab_size: expected at least 3 (pad, unk, one piece), got {vocab_size}")
    if model_type not in _MODEL_TYPES:
        raise ConfigError(f"tokenizer model_type: expected one of {', '.join(_MODEL_TYPES)}, got {model_type!r}")
    stats = stats if stats is not None else TrainStats()
    stats.requested_vocab_size = vocab_size
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    fd, spool_name = tempfile.mkstemp(prefix=".captions-", suffix=".txt", dir=out_prefix.parent)
    spool = Path(spool_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _spool_captions(captions, f, stats)
        if stats.num_captions == 0:
            raise DataError(f"{out_prefix}: no non-empty captions to train a tokenizer on ({stats.num_empty} empty)")
        options = dict(
            model_prefix=str(out_prefix),
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            pad_id=PAD_ID,
            unk_id=SP_UNK_ID,
            bos_id=-1,
            eos_id=-1,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            minloglevel=2,
        )
        spm.set_random_generator_seed(seed)
        _train_with_fallback(spool, vocab_size, options, stats)
    finally:
        spool.unlink(missing_ok=True)
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    stats.vocab_size = TextTokenizer.load(model_path).vocab_size
    log.info(
        "tokenizer: %d captions (%d empty skipped), vocabulary %d",
        stats.num_captions,
        stats.num_empty,
        stats.vocab_size,
    )
    return model_path


def _train_with_fallback(spool: Path, vocab_size: int, options: dict, stats: TrainStats) -> None:
    """Train with a hard vocabulary size; if the corpus is too small, retry with a soft one."""
    prefix = options["model_prefix"]
    try:
        _run_trainer(spool, vocab_size=vocab_size, hard_vocab_limit=True, **options)
        return
    except RuntimeError as exc:
        match = _TOO_HIGH.search(str(exc))
        if match is None:
            raise DataError(f"{prefix}: SentencePiece training failed: {_first_line(exc)}") from exc
        stats.max_vocab_possible = int(match.group(1))
    log.warning(
        "tokenizer: the corpus supports at most %d pieces, not the requested %d; training with a soft vocabulary limit",
        stats.max_vocab_possible,
        vocab_size,
    )
    try:
        _run_trainer(spool, vocab_size=vocab_size, hard_vocab_limit=False, **options)
    except RuntimeError as exc:
        raise DataError(
            f"{prefix}: the corpus supports a vocabulary of at most {stats.max_vocab_possible} pieces "
            f"(requested {vocab_size}): {_first_line(exc)}"
        ) from exc


def _spool_captions(captions: Iterable[str], out, stats: TrainStats) -> None:
    """Write non-empty captions one per line (inner newlines become spaces), counting both kinds."""
    for caption in captions:
        text = " ".join(caption.split())
        if not text:
            stats.num_empty += 1
            continue
        out.write(text + "\n")
        stats.num_captions += 1


def _run_trainer(spool: Path, **options) -> None:
    with spool.open(encoding="utf-8") as f:
        sentences: Iterator[str] = (line.rstrip("\n") for line in f)
        spm.SentencePieceTrainer.train(sentence_iterator=sentences, **options)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _SentencePieceVocab:
    """A SentencePiece model; its own normalizer does the case folding."""

    kind = "sentencepiece"
    file_name = SP_MODEL_NAME

    def __init__(self, data: bytes, source: Path) -> None:
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as exc:
            raise DataError(f"{source}: not a SentencePiece model") from exc
        if self._sp.pad_id() != PAD_ID:
            raise DataError(
                f"{source}: SentencePiece pad id is {self._sp.pad_id()}, expected {PAD_ID} (id 0 marks padding)"
            )
        self.unk_id = self._sp.unk_id()
        self.vocab_size = self._sp.get_piece_size()

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)


class _WordVocab:
    """DMVR ``WordTokenizer`` semantics [C data/processing.py; DMVR tokenizers.py].

    File: one entry a line, either ``word`` (id = line index) or ``id word``; words must be lower
    case and unique. ``<pad>`` must have id 0 (VATT masks id 0) and ``<unk>`` must exist; ``<bos>``
    and ``<eos>`` are optional because VATT never adds them. Encoding is ``dmvr_words`` then a
    lookup, unknown words to ``<unk>``. ``vocab_size`` is the largest id + 1 (the embedding table
    size).
    """

    kind = "word"
    file_name = WORD_VOCAB_NAME

    def __init__(self, data: bytes, source: Path) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: word vocabulary is not valid UTF-8") from exc
        self._word2id = _parse_word_vocab(text, source)
        self._id2word = {i: w for w, i in self._word2id.items()}
        if self._word2id.get("<pad>") != PAD_ID or "<unk>" not in self._word2id:
            raise DataError(f"{source}: a word vocabulary needs '<pad>' at id 0 and an '<unk>' entry")
        self.unk_id = self._word2id["<unk>"]
        self._eos_id = self._word2id.get("<eos>")
        self.vocab_size = max(self._id2word) + 1

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [[self._word2id.get(w, self.unk_id) for w in dmvr_words(t)] for t in texts]

    def decode(self, ids: list[int]) -> str:
        words = []
        for i in ids:
            if i == self._eos_id:
                break
            words.append(self._id2word.get(i, "<unk>"))
        return " ".join(words)


_ASCII_UPPER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def dmvr_words(text: str) -> list[str]:
    """The words DMVR's ``WordTokenizer.string_tensor_to_indices`` looks up [DMVR tokenizers.py]: ASCII
    punctuation deleted (RE2 ``[[:punct:]]``, so "don't" -> "dont"), then ``tf.strings.lower``, which
    lower-cases ASCII letters only ("ÉCOLE" -> "École", which no lower-case vocabulary holds), then
    ``tensorflow_text.WhitespaceTokenizer``, which splits on Unicode whitespace as ``str.split`` does."""
    return text.translate(_PUNCTUATION).translate(_ASCII_UPPER).split()


def _parse_word_vocab(text: str, source: Path) -> dict[str, int]:
    word2id: dict[str, int] = {}
    seen_ids: set[int] = set()
    for line_idx, line in enumerate(text.splitlines()):
        fields = line.strip().split()
        if not fields:
            continue
        if len(fields) == 1:
            idx, word = line_idx, fields[0]
        elif len(fields) == 2 and fields[0].isdigit():
            idx, word = int(fields[0]), fields[1]
        else:
            raise DataError(f"{source}:{line_idx + 1}: expected 'word' or 'id word', got {line.strip()!r}")
        if word != word.lower():
            raise DataError(f"{source}:{line_idx + 1}: word {word!r} is not lower case")
        if word in word2id or idx in seen_ids:
            raise DataError(f"{source}:{line_idx + 1}: duplicate word or id ({idx} {word!r})")
        word2id[word] = idx
        seen_ids.add(idx)
    return word2id


class TextTokenizer:
    """Captions -> fixed-length int64 ids (0 = padding), from a SentencePiece or word vocabulary."""

    def __init__(self, vocab: _SentencePieceVocab | _WordVocab, data: bytes) -> None:
        self._vocab = vocab
        self._data = data

    @classmethod
    def load(cls, path: Path) -> TextTokenizer:
        """Load ``*.model`` (SentencePiece), ``*.txt`` (word vocabulary) or a checkpoint folder."""
        path = Path(path)
        if path.is_dir():
            path = _tokenizer_file_in(path)
        kinds = {".model": _SentencePieceVocab, ".txt": _WordVocab}
        if path.suffix not in kinds:
            raise DataError(f"{path}: expected a SentencePiece '.model' or a word vocabulary '.txt'")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read tokenizer ({exc.strerror})") from exc
        return cls(kinds[path.suffix](data, path), data)

    @property
    def kind(self) -> str:
        """``"sentencepiece"`` or ``"word"``."""
        return self._vocab.kind

    @property
    def vocab_size(self) -> int:
        return self._vocab.vocab_size

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return self._vocab.unk_id

    @property
    def sha256(self) -> str:
        """Hex digest of the tokenizer file's bytes."""
        return hashlib.sha256(self._data).hexdigest()

    def encode(self, texts: Sequence[str], max_len: int = 16) -> np.ndarray:
        """Ids of shape (N, max_len), int64, clipped or right-padded with 0 [P A.2.1]."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of captions, not a single string")
        for text in texts:
            _check_text(text)
        out = np.zeros((len(texts), max_len), dtype=np.int64)
        for row, ids in enumerate(self._vocab.ids(texts)):
            ids = ids[:max_len]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text for one row of ids, cut at the first padding id (for debugging)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if PAD_ID in ids:
            ids = ids[: ids.index(PAD_ID)]
        return self._vocab.decode(ids)

    def save(self, dst_dir: Path) -> Path:
        """Write the tokenizer file into ``dst_dir`` as ``tokenizer.model`` / ``tokenizer.txt``."""
        dst_dir = Path(dst_dir)
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / self._vocab.file_name
        dst.write_bytes(self._data)
        return dst


def _check_text(text: str) -> None:
    """Refuse text that is not valid Unicode: bytes that were not UTF-8 reach Python (``sys.argv``, files
    read with ``surrogateescape``) as lone surrogates, which SentencePiece cannot encode."""
    if not isinstance(text, str):
        raise DataError(f"text must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"text {text[:40]!r} is not valid UTF-8 (byte {exc.start}); re-encode it as UTF-8") from None


def _tokenizer_file_in(folder: Path) -> Path:
    for name in (SP_MODEL_NAME, WORD_VOCAB_NAME):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {SP_MODEL_NAME} or {WORD_VOCAB_NAME} in this folder")
