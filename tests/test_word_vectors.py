"""Word vector files (GloVe, fastText .vec, word2vec text; plain or gzip) and class names turned into vectors:
exact values parsed, every malformed file one line naming its line, and the real GloVe subset on Sketchy's names."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct

import numpy as np
import pytest

from data_prep.word_vectors import (WordVectorError, WordVectors, class_vector, class_vectors, load_word_vectors,
                                    name_tokens, normalise_name)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
GLOVE_SUBSET = SHARED_DATA / "wordvectors" / "glove.twitter.25d.subset.txt"
SKETCHY_SKETCH = SHARED_DATA / "sketchy" / "sketch"

VOCAB = {
    "cat": [0.5, -1.25, 2.0],
    "dog": [1.0, 0.0, -0.5],
    "alarm_clock": [0.25, 0.75, -3.0],
    "sea": [2.0, 4.0, 6.0],
    "turtle": [-1.0, 1.5, 0.125],
    "car": [3.0, -2.0, 1.0],
    "sedan": [1.0, 1.0, 1.0],
    "eiffel": [0.0, 2.5, -1.5],
    "tower": [4.0, 0.5, 0.25],
}


def _rows(vocab: dict[str, list[float]], trailing: str = "") -> list[str]:
    return [f"{w} " + " ".join(repr(v) for v in vals) + trailing for w, vals in vocab.items()]


def _write(path: pathlib.Path, lines: list[str], gz: bool = False) -> pathlib.Path:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _glove(tmp_path: pathlib.Path, gz: bool = False) -> pathlib.Path:
    return _write(tmp_path / ("glove.txt.gz" if gz else "glove.txt"), _rows(VOCAB), gz)


def _fasttext(tmp_path: pathlib.Path, gz: bool = False) -> pathlib.Path:
    lines = [f"{len(VOCAB)} 3"] + _rows(VOCAB, trailing=" ")  # fastText ends each row with a space
    return _write(tmp_path / ("wiki.vec.gz" if gz else "wiki.vec"), lines, gz)


def _word2vec(tmp_path: pathlib.Path, gz: bool = False) -> pathlib.Path:
    return _write(tmp_path / ("w2v.txt.gz" if gz else "w2v.txt"), [f"{len(VOCAB)} 3"] + _rows(VOCAB), gz)


def _assert_vocab(wv: WordVectors, vocab: dict[str, list[float]]) -> None:
    assert wv.words == list(vocab)
    assert wv.dim == 3 and wv.vectors.dtype == np.float32 and wv.vectors.shape == (len(vocab), 3)
    for word, vals in vocab.items():
        assert word in wv
        np.testing.assert_array_equal(wv.get(word), np.array(vals, np.float32))
        assert wv.index[word] == list(vocab).index(word)
    assert wv.get("nope") is None and "nope" not in wv


def _error(path, **kwargs) -> str:
    with pytest.raises(WordVectorError) as e:
        load_word_vectors(path, **kwargs)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("writer", [_glove, _fasttext, _word2vec])
@pytest.mark.parametrize("gz", [False, True])
def test_each_format_plain_and_gzip(tmp_path, writer, gz):
    wv = load_word_vectors(writer(tmp_path, gz))
    _assert_vocab(wv, VOCAB)
    assert wv.rows_read == len(VOCAB) and wv.duplicates == 0


def test_gzip_is_detected_by_magic_bytes_not_suffix(tmp_path):
    gz = _glove(tmp_path, gz=True)
    renamed = gz.rename(tmp_path / "vectors.txt")
    _assert_vocab(load_word_vectors(renamed), VOCAB)
    plain = _glove(tmp_path).rename(tmp_path / "plain.gz")
    _assert_vocab(load_word_vectors(plain), VOCAB)


def test_header_is_two_integers_only(tmp_path):
    # A GloVe file whose first row has two fields that are not both integers is data, not a header.
    one_dim = _write(tmp_path / "one.txt", ["7 0.5", "cat 1.5"])
    wv = load_word_vectors(one_dim)
    assert wv.words == ["7", "cat"] and wv.dim == 1
    np.testing.assert_array_equal(wv.vectors[:, 0], [0.5, 1.5])
    headed = load_word_vectors(_write(tmp_path / "h.vec", ["2 1", "7 0.5", "cat 1.5"]))
    assert headed.words == ["7", "cat"] and headed.dim == 1


def test_max_words_reads_the_first_rows_and_skips_the_count_check(tmp_path):
    for path in (_glove(tmp_path), _fasttext(tmp_path, gz=True)):
        wv = load_word_vectors(path, max_words=3)
        _assert_vocab(wv, dict(list(VOCAB.items())[:3]))
        assert wv.rows_read == 3
    # A header claiming far more rows than there are is not checked once max_words rows are read.
    lying = _write(tmp_path / "big.vec", ["1000000 3"] + _rows(VOCAB))
    assert len(load_word_vectors(lying, max_words=2)) == 2
    assert len(load_word_vectors(_glove(tmp_path), max_words=100)) == len(VOCAB)
    with pytest.raises(ValueError, match="max_words"):
        load_word_vectors(_glove(tmp_path), max_words=0)


def test_wanted_keeps_only_those_words(tmp_path):
    wv = load_word_vectors(_fasttext(tmp_path), wanted={"dog", "tower", "absent"})
    _assert_vocab(wv, {"dog": VOCAB["dog"], "tower": VOCAB["tower"]})
    assert wv.rows_read == len(VOCAB)
    wv = load_word_vectors(_glove(tmp_path), wanted=["tower", "cat"], max_words=4)
    assert wv.words == ["cat"]


def test_duplicates_keep_the_first_and_are_counted(tmp_path):
    path = _write(tmp_path / "dup.txt", ["cat 1 2", "dog 3 4", "cat 5 6", "cat 7 8"])
    wv = load_word_vectors(path)
    assert wv.words == ["cat", "dog"] and wv.duplicates == 2 and wv.rows_read == 4
    np.testing.assert_array_equal(wv.get("cat"), [1, 2])


@pytest.mark.parametrize("lines, line_no, fragment", [
    (["cat 1 2 3", "dog 1 2"], 2, "has 2 values"),
    (["cat 1 2 3", "dog 1 2 3 4"], 2, "has 4 values"),
    (["3 3", "cat 1 2 3", "dog 1 2"], 3, "Expected 3"),
    (["2 4", "cat 1 2 3", "dog 1 2 3"], 2, "Expected 4, the dimension the header"),
    (["cat 1 2 3", "dog 1 x 3"], 2, "Received: 'x'"),
    (["cat 1 2 3", "dog 1 2 3e"], 2, "Expected a number"),
    (["3 3", "cat 1 2 3", "dog 1 2 3"], 3, "declares 3 words but the file ends after 2"),
    (["1 3", "cat 1 2 3", "dog 1 2 3"], 3, "declares 1 words but there are more rows"),
    (["2 0", "cat", "dog"], 1, "dimension 0"),
    (["5 3"], 1, "only a header"),
    (["cat"], 1, "no values"),
    (["cat 1 2 3", "dog nan 2 3"], 2, "'dog' is not finite"),
    (["cat 1 2 3", "dog 1 inf 3"], 2, "'dog' is not finite"),
    (["cat 1 2 3", "dog 1 2 1e39"], 2, "'dog' is not finite"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_bad_input_is_one_line_naming_the_line(tmp_path, lines, line_no, fragment, gz):
    path = _write(tmp_path / "bad.txt", lines, gz)
    message = _error(path)
    assert f"{path}:line {line_no}:" in message and fragment in message


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "line 1:" in _error(empty) and "is empty" in _error(empty)
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n \n")
    assert "line 2:" in _error(blank)
    gz_empty = tmp_path / "empty.gz"
    gz_empty.write_bytes(gzip.compress(b""))
    assert "is empty" in _error(gz_empty)


def test_truncated_gzip_is_one_line(tmp_path):
    data = gzip.compress(("\n".join(_rows(VOCAB) * 50) + "\n").encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    assert "gzip" in _error(path)


def test_binary_word2vec_is_detected(tmp_path):
    # word2vec's binary layout: a text header, then per word "word " + dim raw float32 values (+ optional "\n").
    body = b"".join(w.encode() + b" " + struct.pack("<3f", *vals) + b"\n" for w, vals in VOCAB.items())
    for name, gz in (("w2v.bin", False), ("w2v.bin.gz", True)):
        data = f"{len(VOCAB)} 3\n".encode() + body
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if gz else data)
        message = _error(path)
        assert "line 2:" in message and "binary word2vec" in message and "save_word2vec_format(" in message
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 1 2\n".encode("latin-1"))
    assert "line 1: not UTF-8 text" in _error(latin1)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.vec"):
        load_word_vectors(tmp_path / "absent.vec")


@pytest.mark.parametrize("name, tokens", [
    ("alarm clock", ["alarm", "clock"]),
    ("sea_turtle", ["sea", "turtle"]),
    ("car_(sedan)", ["car", "sedan"]),
    ("The Eiffel Tower", ["the", "eiffel", "tower"]),
    ("jack-o-lantern", ["jack", "o", "lantern"]),
    ("hermit_crab", ["hermit", "crab"]),
    ("  Hot--Air__balloon ", ["hot", "air", "balloon"]),
    ("'teddy' bear's", ["teddy", "bear's"]),
])
def test_name_normalisation(name, tokens):
    assert name_tokens(name) == tokens
    assert normalise_name(name) == " ".join(tokens)


def _vectors(vocab: dict[str, list[float]]) -> WordVectors:
    words = list(vocab)
    return WordVectors(words, np.array([vocab[w] for w in words], np.float32), {w: i for i, w in enumerate(words)})


def test_class_vector_rules():
    vocab = dict(VOCAB, hotdog=[9.0, 9.0, 9.0], **{"jack-o-lantern": [7.0, 0.0, 7.0], "Eiffel_Tower": [1.0, 2.0, 3.0]})
    wv = _vectors(vocab)
    expect = {
        "cat": ("exact", ("cat",)),
        "Cat": ("token", ("cat",)),
        "alarm clock": ("token", ("alarm_clock",)),
        "hot dog": ("joined", ("hotdog",)),
        "jack_o_lantern": ("hyphen", ("jack-o-lantern",)),
        "Eiffel_Tower": ("exact", ("Eiffel_Tower",)),
        "sea_turtle": ("average", ("sea", "turtle")),
        "car_(sedan)": ("average", ("car", "sedan")),
        "The Eiffel Tower": ("average", ("eiffel", "tower")),
    }
    for name, (rule, used) in expect.items():
        match = class_vector(name, wv)
        assert (match.rule, match.used) == (rule, used), name
        if rule != "average":
            np.testing.assert_array_equal(match.vector, vocab[used[0]])
    assert class_vector("The Eiffel Tower", wv).skipped == ("the",)
    hermit = class_vector("hermit_crab", wv)
    assert hermit.rule == "missing" and hermit.vector is None and hermit.skipped == ("hermit", "crab")


def test_average_matches_numpy():
    wv = _vectors(VOCAB)
    for name, words in (("sea_turtle", ["sea", "turtle"]), ("car_(sedan)", ["car", "sedan"]),
                        ("The Eiffel Tower", ["eiffel", "tower"]), ("cat-dog sea", ["cat", "dog", "sea"])):
        expected = np.mean(np.array([VOCAB[w] for w in words], np.float64), axis=0)
        np.testing.assert_allclose(class_vector(name, wv).vector, expected, rtol=1e-6)


def test_class_vectors_from_a_file(tmp_path):
    names = ["alarm clock", "sea_turtle", "car_(sedan)", "The Eiffel Tower", "cat"]
    matrix, info = class_vectors(names, _fasttext(tmp_path, gz=True))
    raw = np.array([VOCAB["alarm_clock"], np.mean([VOCAB["sea"], VOCAB["turtle"]], axis=0),
                    np.mean([VOCAB["car"], VOCAB["sedan"]], axis=0), np.mean([VOCAB["eiffel"], VOCAB["tower"]], axis=0),
                    VOCAB["cat"]])
    np.testing.assert_allclose(matrix, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    assert matrix.dtype == np.float32 and matrix.shape == (5, 3)
    assert info["classes"] == names and info["missing"] == []
    assert info["rules"] == {"alarm clock": "token", "sea_turtle": "average", "car_(sedan)": "average",
                             "The Eiffel Tower": "average", "cat": "exact"}
    assert info["skipped"]["The Eiffel Tower"] == ["the"]
    assert info["dim"] == 3 and info["words_read"] == len(VOCAB) and info["duplicates"] == 0
    assert info["vocabulary"] == 8  # only the words these names can use are kept: not "dog"
    raw_matrix, _ = class_vectors(names, _glove(tmp_path), normalise=False)
    np.testing.assert_allclose(raw_matrix, raw, rtol=1e-6)


def test_missing_classes_are_refused_or_dropped(tmp_path):
    path = _glove(tmp_path)
    names = ["cat", "hermit_crab", "dog", "pineapple"]
    with pytest.raises(WordVectorError) as e:
        class_vectors(names, path)
    message = str(e.value)
    assert "\n" not in message and "2 of 4" in message and "'hermit_crab'" in message and "'pineapple'" in message
    matrix, info = class_vectors(names, path, allow_missing=True)
    assert matrix.shape == (2, 3) and info["classes"] == ["cat", "dog"]
    assert info["missing"] == ["hermit_crab", "pineapple"] and info["rules"]["pineapple"] == "missing"


def test_zero_vector_cannot_be_normalised():
    wv = _vectors({"up": [1.0, 0.0], "down": [-1.0, 0.0], "cat": [0.0, 2.0]})
    with pytest.raises(WordVectorError, match="zero vector of class names 'up down'"):
        class_vectors(["cat", "up down"], wv)
    matrix, _ = class_vectors(["cat", "up down"], wv, normalise=False)
    np.testing.assert_array_equal(matrix, [[0.0, 2.0], [0.0, 0.0]])


def test_class_names_must_be_given_once():
    wv = _vectors(VOCAB)
    with pytest.raises(ValueError, match="repeated names 'cat'"):
        class_vectors(["cat", "dog", "cat"], wv)
    with pytest.raises(ValueError, match="empty"):
        class_vectors([], wv)


def test_real_glove_subset_and_sketchy_names():
    if not GLOVE_SUBSET.is_file() or not SKETCHY_SKETCH.is_dir():
        pytest.skip(f"real word vectors or Sketchy sample not at {SHARED_DATA}")
    wv = load_word_vectors(GLOVE_SUBSET)
    assert (len(wv), wv.dim, wv.rows_read, wv.duplicates) == (11925, 25, 11925, 0)
    cat = wv.get("cat")
    assert cat.shape == (25,) and np.isfinite(cat).all() and np.any(cat != 0)
    names = sorted(os.listdir(SKETCHY_SKETCH))
    assert len(names) == 125
    fully_covered = [n for n in names if all(t in wv for t in name_tokens(n))]
    assert len(fully_covered) == 82  # as the README says
    with pytest.raises(WordVectorError, match="'pineapple'"):
        class_vectors(names, GLOVE_SUBSET)
    matrix, info = class_vectors(names, GLOVE_SUBSET, allow_missing=True)
    missing = info["missing"]
    assert {"pineapple", "hotdog"} <= set(missing)
    assert set(missing) <= set(names) - set(fully_covered)
    assert matrix.shape == (125 - len(missing), 25) and np.isfinite(matrix).all()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    # Partly covered names are averaged over the words the file has, and say which they skipped.
    assert info["rules"]["hermit_crab"] == "average" and info["skipped"]["hermit_crab"] == ["hermit"]
    assert info["rules"]["car_(sedan)"] == "average" and info["rules"]["cat"] == "exact"
    assert info["classes"] == [n for n in names if n not in missing]
