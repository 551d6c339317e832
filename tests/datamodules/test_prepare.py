import numpy as np
import pytest
from corpus_utils import random_docs, records, write_jsonl, write_slimpajama

from datamodules.prepare import load_meta, prepare_corpus
from datamodules.sources import CorpusError, LocalFiles, SlimPajamaLocal
from datamodules.tokenizer import load_tokenizer


def expected_stream(docs, add_bos=True):
    tok = load_tokenizer()
    return np.array([t for d in docs for t in tok.encode(d, bos=add_bos, eos=True)], dtype=np.int64)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_prepare_equals_direct_tokenization(tmp_path, num_proc):
    train, val = random_docs(300, seed=100 + num_proc), random_docs(7, seed=200)
    order = write_slimpajama(tmp_path / "sp", train, val)
    meta = prepare_corpus(SlimPajamaLocal(tmp_path / "sp"), tmp_path / "tok", num_proc=num_proc, batch_docs=16,
                          progress=False)
    assert meta["dtype"] == "uint16" and (meta["bos_id"], meta["eos_id"], meta["vocab_size"]) == (1, 2, 32000)
    for split in ("train", "validation"):
        docs = [r["text"] for r in order[split]]
        tokens = np.fromfile(tmp_path / "tok" / f"{split}.bin", dtype=np.uint16).astype(np.int64)
        np.testing.assert_array_equal(tokens, expected_stream(docs))
        idx = np.load(tmp_path / "tok" / f"{split}.idx.npy")
        assert len(idx) == len(docs) + 1 and idx[0] == 0 and idx[-1] == len(tokens)
        assert (tokens[idx[:-1]] == 1).all() and (tokens[idx[1:] - 1] == 2).all()  # [BOS] ... [EOS] per document
        assert meta["splits"][split]["n_tokens"] == len(tokens) and meta["splits"][split]["n_docs"] == len(docs)
        assert meta["splits"][split]["tokens_per_s"] > 0 and meta["splits"][split]["tokens_per_s_per_process"] > 0


def test_prepare_is_idempotent_and_notices_changes(tmp_path):
    docs = random_docs(40, seed=301)
    path = write_jsonl(tmp_path / "c.jsonl", records(docs))
    src = LocalFiles(train=str(path))
    out = tmp_path / "tok"
    meta = prepare_corpus(src, out, num_proc=1, progress=False)
    stamp = (out / "train.bin").stat().st_mtime_ns
    assert prepare_corpus(src, out, num_proc=1, progress=False) == meta
    assert (out / "train.bin").stat().st_mtime_ns == stamp  # nothing rewritten
    write_jsonl(path, records(docs[:30]))  # input changed -> prepared again
    meta2 = prepare_corpus(src, out, num_proc=1, progress=False)
    assert meta2["splits"]["train"]["n_docs"] == 30
    meta3 = prepare_corpus(src, out, num_proc=1, progress=False, add_bos=False)  # settings changed
    np.testing.assert_array_equal(np.fromfile(out / "train.bin", dtype=np.uint16), expected_stream(docs[:30], False))
    assert meta3["splits"]["train"]["n_tokens"] == meta2["splits"]["train"]["n_tokens"] - 30
    (out / "train.bin").write_bytes(b"\0\0")  # truncated output -> not considered prepared
    assert load_meta(out) is None
    (out / "train.bin.tmp999").write_bytes(b"\0" * 8)  # debris of an interrupted preparation is cleaned
    meta4 = prepare_corpus(src, out, num_proc=1, progress=False, add_bos=False)
    assert meta4["fingerprint"] == meta3["fingerprint"] and meta4["splits"]["train"]["n_tokens"] == len(
        np.fromfile(out / "train.bin", dtype=np.uint16)) == meta3["splits"]["train"]["n_tokens"]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "train.idx.npy"]


def test_max_tokens_prepares_a_prefix(tmp_path):
    docs = random_docs(100, seed=401)
    src = LocalFiles(train=str(write_jsonl(tmp_path / "c.jsonl", records(docs))))
    meta = prepare_corpus(src, tmp_path / "tok", num_proc=2, batch_docs=10, max_tokens={"train": 500}, progress=False)
    n_docs = meta["splits"]["train"]["n_docs"]
    assert n_docs % 10 == 0 and 0 < n_docs < 100
    full = expected_stream(docs[:n_docs])
    assert len(full) >= 500 > len(expected_stream(docs[:n_docs - 10]))
    np.testing.assert_array_equal(np.fromfile(tmp_path / "tok" / "train.bin", dtype=np.uint16), full)


def test_empty_corpus_names_the_files(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl.zst", [{"text": ""}, {"text": ""}])
    with pytest.raises(CorpusError, match=r"empty corpus.*empty.jsonl.zst"):
        prepare_corpus(LocalFiles(train=str(path)), tmp_path / "tok", num_proc=1, progress=False)
    assert load_meta(tmp_path / "tok") is None


def test_bad_record_fails_preparation_with_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: malformed JSON"):
        prepare_corpus(LocalFiles(train=str(path)), tmp_path / "tok", num_proc=2, progress=False)
    meta = prepare_corpus(LocalFiles(train=str(path), skip_bad_records=True), tmp_path / "tok", num_proc=2,
                          progress=False)
    assert meta["splits"]["train"]["n_docs"] == 1 and meta["splits"]["train"]["read"]["bad"] == 1
