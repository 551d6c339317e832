import pytest

from datamodules.tokenizer import default_tokenizer_path, load_tokenizer


def test_default_is_mistral_32k():
    tok = load_tokenizer()
    assert tok.path == default_tokenizer_path()
    assert tok.path.endswith("tokenizer.model.v1")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)


def test_roundtrip_and_special_tokens():
    tok = load_tokenizer()
    text = "def f(x):\n    return x ** 2  # the square of x"
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids) and 1 not in ids and 2 not in ids
    assert tok.decode(ids) == text
    assert tok.encode(text, bos=True, eos=True) == [1] + ids + [2]
    assert tok.encode_batch([text, "b"], eos=True)[0] == ids + [2]


def test_sentencepiece_path_and_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    # any SentencePiece model by path
    tok = load_tokenizer(default_tokenizer_path())
    assert tok.encode("hello") == load_tokenizer().encode("hello")
    # a tokenizer.json (HF tokenizers), with <s>/</s> specials
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = load_tokenizer(path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (5, 1, 2)
    assert tok.encode("hello world", bos=True, eos=True) == [1, 3, 4, 2]
    assert tok.decode([3, 4]) == "hello world"


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        load_tokenizer(tmp_path / "nothing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        load_tokenizer(bad)


def varied_texts() -> list[str]:
    """Prose and code (the stdlib's own docs and sources), whitespace runs of every length before every kind of
    character, and random Unicode (Latin, Greek, Cyrillic, CJK, kana, emoji, controls, rare characters that fall back
    to bytes)."""
    import glob
    import os
    import random

    from pydoc_data.topics import topics

    texts = sorted(topics.values())
    texts += [open(f, encoding="utf-8").read() for f in sorted(glob.glob(os.path.dirname(os.__file__) + "/*.py"))[:60]]
    for n in range(1, 81):
        for tail in ("y", "\u9fff", "\n", "", "\t", "😀", "1", " ", ".", "\u00a0"):
            texts += ["x" + " " * n + tail, " " * n + tail]
    rng = random.Random(1234)
    alphabet = [chr(c) for c in [*range(32, 127)] * 4 + [*range(0xA0, 0x800), *range(0x3040, 0x3100),
                                                        *range(0x4E00, 0x4F00), *range(0x1F600, 0x1F650),
                                                        0x9FFF, 0x10FFFF, 0xE000, 0, 1, 9, 10, 13, 0x200D, 0xFEFF]]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 2000))) for _ in range(200)]
    texts += ["", " ", "<s> and </s> are text here", "e\u0301 \u00e9", "a\u00a0b", "1234567890 3.14159", "\r\n\r\n"]
    return texts


def test_hf_tokenizers_backend_gives_the_sentencepiece_ids():
    sp, hf = load_tokenizer(), load_tokenizer(backend="hf")
    assert (hf.backend, hf.vocab_size, hf.bos_id, hf.eos_id) == ("hf", sp.vocab_size, sp.bos_id, sp.eos_id)
    texts = varied_texts()
    want = sp.encode_batch(texts, bos=True, eos=True, num_threads=1)
    got = hf.encode_batch(texts, bos=True, eos=True)
    bad = [t[:80] for t, a, b in zip(texts, want, got) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"
    assert sum(map(len, want)) > 500_000
    assert hf.decode(hf.encode("def f(x):\n    return x  # 😀")) == "def f(x):\n    return x  # 😀"
    with pytest.raises(ValueError, match="backend must be one of"):
        load_tokenizer(backend="fast")


def test_prepare_with_the_hf_backend_writes_the_same_corpus(tmp_path):
    from corpus_utils import write_many

    from datamodules.prepare import prepare_corpus
    from datamodules.sources import SlimPajamaLocal

    write_many(tmp_path / "sp", n_files=2, docs_per_file=20, seed=90)
    src = SlimPajamaLocal(tmp_path / "sp")
    a = prepare_corpus(src, tmp_path / "a", num_proc=1, progress=False)
    b = prepare_corpus(src, tmp_path / "b", num_proc=1, progress=False, tokenizer_backend="hf")
    assert a == b  # the same ids and the same tokenizer file: the same corpus
    for p in sorted((tmp_path / "a").rglob("*.bin")):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
