"""Caption tokenizers: SentencePiece training/encoding and the DMVR-style word vocabulary."""

from __future__ import annotations

import hashlib
import itertools
import logging

import numpy as np
import pytest
import sentencepiece as spm

from vattcli.data.text import TextTokenizer, TrainStats, read_caption_lines, train_tokenizer
from vattcli.errors import ConfigError, DataError

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
MOTIONS = ["left", "right", "up", "down", "around", "slowly"]
TEMPLATES = ["a {c} {s} moving {m}", "the {c} {s} is going {m}", "{c} {s} moves {m} quickly"]


def synthetic_captions() -> list[str]:
    combos = itertools.product(TEMPLATES, COLOURS, SHAPES, MOTIONS)
    return [t.format(c=c, s=s, m=m) for t, c, s, m in combos]  # 720 captions


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "captions"
    stats = TrainStats()
    path = train_tokenizer(synthetic_captions() + ["", "   "], out, vocab_size=48, stats=stats)
    return path, stats


def test_train_writes_model_and_counts(sp_model):
    path, stats = sp_model
    assert path.name == "captions.model" and path.is_file()
    assert path.with_suffix(".vocab").is_file()
    assert stats.num_captions == 720
    assert stats.num_empty == 2
    assert stats.vocab_size == 48 and not stats.vocab_limited


def test_pad_id_zero_is_never_a_real_token(sp_model):
    path, _ = sp_model
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.id_to_piece(0) == "<pad>" and sp.is_control(0)
    assert sp.unk_id() == 1
    raw = sp.encode(synthetic_captions(), out_type=int)
    assert min(min(ids) for ids in raw) > 0
    tok = TextTokenizer.load(path)
    ids = tok.encode(synthetic_captions())
    lengths = [len(r) for r in raw]
    for row, n in zip(ids, lengths):
        assert (row[: min(n, 16)] > 0).all()


def test_encode_shape_padding_and_clipping(sp_model):
    path, _ = sp_model
    tok = TextTokenizer.load(path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    long_text = " ".join(["the red circle moves left quickly"] * 6)
    ids = tok.encode(["a red circle", "", long_text], max_len=16)
    assert ids.shape == (3, 16) and ids.dtype == np.int64
    short = sp.encode("a red circle", out_type=int)
    assert len(short) < 16
    assert ids[0, : len(short)].tolist() == short
    assert (ids[0, len(short) :] == 0).all()
    assert (ids[1] == 0).all()
    assert ids[2].tolist() == sp.encode(long_text, out_type=int)[:16]
    assert tok.encode(["a red circle"], max_len=4).shape == (1, 4)


def test_lowercase_and_round_trip(sp_model):
    path, _ = sp_model
    tok = TextTokenizer.load(path)
    assert (tok.encode(["A RED Circle moving LEFT"]) == tok.encode(["a red circle moving left"])).all()
    for text in ["a blue star moving up", "the white hexagon is going around"]:
        assert tok.decode(tok.encode([text], max_len=40)[0]) == text
    assert tok.decode(tok.encode(["THE Green Square"])[0]) == "the green square"


def test_save_load_and_sha256(sp_model, tmp_path):
    path, _ = sp_model
    tok = TextTokenizer.load(path)
    assert tok.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    saved = tok.save(tmp_path / "ckpt")
    assert saved == tmp_path / "ckpt" / "tokenizer.model"
    again = TextTokenizer.load(tmp_path / "ckpt")
    assert again.sha256 == tok.sha256 and again.vocab_size == 48
    assert (again.encode(["a red star"]) == tok.encode(["a red star"])).all()


def test_too_large_vocab_falls_back_with_clear_message(tmp_path, caplog):
    stats = TrainStats()
    with caplog.at_level(logging.WARNING, logger="vattcli.data.text"):
        path = train_tokenizer(synthetic_captions()[:200], tmp_path / "big", vocab_size=5000, stats=stats)
    assert stats.vocab_limited
    assert 3 < stats.max_vocab_possible < 5000
    assert stats.vocab_size <= stats.max_vocab_possible
    assert TextTokenizer.load(path).vocab_size == stats.vocab_size
    assert f"at most {stats.max_vocab_possible} pieces" in caplog.text


def test_no_captions_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no non-empty captions"):
        train_tokenizer(["", " "], tmp_path / "none", vocab_size=16)


def test_model_without_pad_zero_is_rejected(tmp_path):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_captions()), model_prefix=str(tmp_path / "plain"),
        vocab_size=30, minloglevel=2,
    )  # SentencePiece defaults: unk 0, bos 1, eos 2, no pad
    with pytest.raises(DataError, match="pad id"):
        TextTokenizer.load(tmp_path / "plain.model")


def test_read_caption_lines_skips_undecodable(tmp_path):
    f = tmp_path / "caps.txt"
    f.write_bytes(b"a red circle\n\xff\xfe broken\ncaf\xc3\xa9 au lait\r\n\nblue \x80square\n")
    result = read_caption_lines(f)
    assert result.lines == ["a red circle", "caf\u00e9 au lait", ""]
    assert result.num_undecodable == 2


WORD_VOCAB = "<pad>\n<bos>\n<eos>\n<unk>\na\nred\ncircle\nmoving\nleft\ndont\n"


def test_word_vocab_hand_computed_ids(tmp_path):
    f = tmp_path / "howto100m_en.txt"
    f.write_text(WORD_VOCAB, encoding="utf-8")
    tok = TextTokenizer.load(f)
    assert tok.kind == "word" and tok.vocab_size == 10 and tok.unk_id == 3
    ids = tok.encode(["A red, circle!", "a  BLUE circle\tmoving left", "Don't", ""], max_len=5)
    assert ids.tolist() == [
        [4, 5, 6, 0, 0],
        [4, 3, 6, 7, 8],
        [9, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert tok.encode(["a red circle moving left a red"], max_len=5).tolist() == [[4, 5, 6, 7, 8]]
    assert tok.decode([4, 5, 6, 0, 7]) == "a red circle"
    assert tok.decode([4, 2, 6]) == "a"
    saved = tok.save(tmp_path / "ckpt")
    assert saved.name == "tokenizer.txt" and saved.read_text(encoding="utf-8") == WORD_VOCAB
    assert tok.sha256 == hashlib.sha256(WORD_VOCAB.encode()).hexdigest()


def test_word_vocab_with_explicit_ids(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("0 <pad>\n1 <unk>\n7 hello\n3 world\n", encoding="utf-8")
    tok = TextTokenizer.load(f)
    assert tok.vocab_size == 8
    assert tok.encode(["Hello, world. Bye"], max_len=4).tolist() == [[7, 3, 1, 0]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("<unk>\n<pad>\nred\n", "'<pad>' at id 0"),
        ("<pad>\nred\n", "'<unk>'"),
        ("<pad>\n<unk>\nRed\n", "not lower case"),
        ("<pad>\n<unk>\nred\nred\n", "duplicate"),
        ("<pad>\n<unk>\nthree words here\n", "expected 'word' or 'id word'"),
    ],
)
def test_word_vocab_errors(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        TextTokenizer.load(f)


def test_load_rejects_unknown_suffix_and_missing_folder_file(tmp_path):
    (tmp_path / "x.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match="expected a SentencePiece"):
        TextTokenizer.load(tmp_path / "x.json")
    with pytest.raises(DataError, match="no tokenizer.model or tokenizer.txt"):
        TextTokenizer.load(tmp_path)


def test_bad_training_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model_type"):
        train_tokenizer(["a red circle"], tmp_path / "t", vocab_size=16, model_type="wordpiece")
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["a red circle"], tmp_path / "t", vocab_size=2)


# ---------------------------------------------------------------------------------- DMVR WordTokenizer, exactly

DMVR_VOCAB = "0 <pad>\n1 <bos>\n2 <eos>\n3 <unk>\n4 cut\n5 the\n6 onions\n7 dont\n8 école\n9 über\n"


@pytest.fixture()
def dmvr(tmp_path):
    path = tmp_path / "howto100m_en.txt"
    path.write_text(DMVR_VOCAB, encoding="utf-8")
    return TextTokenizer.load(path)


def _row(*ids: int) -> list[int]:
    return list(ids) + [0] * (16 - len(ids))


@pytest.mark.parametrize("text, expected", [
    ("Cut the ONIONS!", _row(4, 5, 6)),            # ASCII upper-case folded, punctuation removed
    ("don't", _row(7)),                            # punctuation deleted inside a word, not split on
    ("cut-the", _row(3)),                          # "cutthe" is one unknown word
    ("école", _row(8)),
    ("ÉCOLE", _row(3)),                            # tf.strings.lower folds ASCII only: "École" is unknown
    ("Über über", _row(3, 9)),
    ("banana the", _row(3, 5)),                    # unknown word -> <unk>, never padding
    ("cut\u00a0the\tonions\n", _row(4, 5, 6)),     # Unicode whitespace splits words
    (" ".join(["cut"] * 20), [4] * 16),            # more than 16 words: cut to 16, no EOS
    ("", _row()),                                  # empty text: all padding
    ("...", _row()),                               # punctuation only: no words at all
])
def test_dmvr_word_tokenizer_hand_written(dmvr, text, expected):
    assert dmvr.encode([text]).tolist() == [expected]


def test_text_that_was_not_utf8_is_one_clear_error(dmvr, sp_model):
    undecodable = b"cut \xff onions".decode("utf-8", "surrogateescape")
    for tok in (dmvr, TextTokenizer.load(sp_model[0])):
        with pytest.raises(DataError, match="not valid UTF-8"):
            tok.encode([undecodable])
