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
