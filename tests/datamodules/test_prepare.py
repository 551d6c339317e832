import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from corpus_utils import random_docs, records, write_jsonl, write_many, write_slimpajama

from datamodules.packed import TokenFile
from datamodules.prepare import _ShardLock, load_meta, prepare_corpus
from datamodules.sources import CorpusError, LocalFiles, SlimPajamaLocal
from datamodules.tokenizer import load_tokenizer

HERE = Path(__file__).resolve().parent


def expected_stream(docs, add_bos=True):
    tok = load_tokenizer()
    return np.array([t for d in docs for t in tok.encode(d, bos=add_bos, eos=True)], dtype=np.int64)


def token_bytes(out: Path) -> dict[str, bytes]:
    """Every token, offset and source-id file and the manifest of a prepared corpus, by relative path."""
    files = sorted(p for p in out.rglob("*") if p.suffix in (".bin", ".npy") or p.name == "meta.json")
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.mark.parametrize("num_proc", [1, 2])
def test_prepare_equals_direct_tokenization(tmp_path, num_proc):
    train, val = random_docs(300, seed=100 + num_proc), random_docs(7, seed=200)
    order = write_slimpajama(tmp_path / "sp", train, val)
    meta = prepare_corpus(SlimPajamaLocal(tmp_path / "sp"), tmp_path / "tok", num_proc=num_proc, batch_docs=16,
                          progress=False)
    assert meta["dtype"] == "uint16" and (meta["bos_id"], meta["eos_id"], meta["vocab_size"]) == (1, 2, 32000)
    for split in ("train", "validation"):
        docs = [r["text"] for r in order[split]]
        tf = TokenFile(tmp_path / "tok", split)
        tokens = np.asarray(tf.tokens, dtype=np.int64)
        np.testing.assert_array_equal(tokens, expected_stream(docs))
        idx = tf.offsets
        assert len(idx) == len(docs) + 1 and idx[0] == 0 and idx[-1] == len(tokens)
        assert (tokens[idx[:-1]] == 1).all() and (tokens[idx[1:] - 1] == 2).all()  # [BOS] ... [EOS] per document
        info = meta["splits"][split]
        assert info["n_tokens"] == len(tokens) and info["n_docs"] == len(docs)
        sets = {}
        for r, a, b in zip(order[split], idx[:-1], idx[1:]):
            c = sets.setdefault(r["meta"]["redpajama_set_name"], {"docs": 0, "tokens": 0})
            c["docs"], c["tokens"] = c["docs"] + 1, c["tokens"] + int(b - a)
        assert info["per_source"] == sets
    shards = meta["splits"]["train"]["shards"]
    assert [s["input"] for s in shards] == [f"train/chunk{c}/example_train_{i}.jsonl.zst"
                                            for c, i in ((1, 0), (1, 1), (2, 2), (2, 3))]
    assert [s["file"] for s in shards] == [f"train/{i:06d}" for i in range(4)]
    assert meta["settings"]["tokenizer"]["sha256"] and meta["settings"]["tokenizer"]["name"] == "tokenizer.model.v1"
    text = (tmp_path / "tok" / "meta.json").read_text()
    assert str(tmp_path) not in text and "mtime" not in text  # names relative to the root, and sizes
    rec = json.loads((tmp_path / "tok" / "train" / "000000.json").read_text())
    assert rec["input"] == {"name": "train/chunk1/example_train_0.jsonl.zst",
                            "size": (tmp_path / "sp" / rec["input"]["name"]).stat().st_size}
    assert rec["n_docs"] == shards[0]["n_docs"] and rec["cpu_seconds"] > 0


def test_output_is_identical_for_any_num_proc_and_shares(tmp_path):
    write_many(tmp_path / "sp", n_files=7, docs_per_file=30, seed=10)
    src = SlimPajamaLocal(tmp_path / "sp")
    prepare_corpus(src, tmp_path / "a", num_proc=1, progress=False)
    prepare_corpus(src, tmp_path / "b", num_proc=2, batch_docs=7, progress=False)
    assert prepare_corpus(src, tmp_path / "c", num_proc=1, shard_index=1, shard_count=3, progress=False) is None
    assert prepare_corpus(src, tmp_path / "c", num_proc=2, shard_index=0, shard_count=3, progress=False) is None
    assert load_meta(tmp_path / "c") is None  # share 2 still missing
    meta = prepare_corpus(src, tmp_path / "c", num_proc=1, shard_index=2, shard_count=3, progress=False)
    assert meta is not None
    a = token_bytes(tmp_path / "a")
    assert a == token_bytes(tmp_path / "b") == token_bytes(tmp_path / "c") and len(a) == 1 + 3 * 8
    with pytest.raises(ValueError, match="shard_index must be in"):
        prepare_corpus(src, tmp_path / "d", shard_index=3, shard_count=3)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_cap_is_exact_and_stops_reading(tmp_path, num_proc):
    per_file = write_many(tmp_path / "sp", n_files=20, docs_per_file=25, seed=30)
    docs = [r["text"] for recs in per_file for r in recs]
    lengths = np.array([len(load_tokenizer().encode(d)) + 2 for d in docs])
    cum = np.cumsum(lengths)
    cap = int(cum[60]) - 3  # inside document 61, in the third file
    n_docs = int(np.searchsorted(cum, cap)) + 1  # the shortest prefix of whole documents with >= cap tokens
    assert n_docs == 61 and cum[n_docs - 1] >= cap > cum[n_docs - 2]
    src = SlimPajamaLocal(tmp_path / "sp")
    meta = prepare_corpus(src, tmp_path / "tok", num_proc=num_proc, batch_docs=4, max_tokens={"train": cap},
                          progress=False)
    info = meta["splits"]["train"]
    assert (info["n_docs"], info["n_tokens"], info["cut"]) == (61, int(cum[60]), True)
    np.testing.assert_array_equal(np.asarray(TokenFile(tmp_path / "tok", "train").tokens, dtype=np.int64),
                                  expected_stream(docs[:61]))
    assert info["read"]["docs"] == 75 and info["n_shards_used"] == 3  # read: the three whole files used
    assert [s["n_docs"] for s in info["shards"]] == [25, 25, 11]
    sets = {}
    for r in [r for recs in per_file for r in recs][:61]:
        sets[r["meta"]["redpajama_set_name"]] = sets.get(r["meta"]["redpajama_set_name"], 0) + 1
    assert {k: v["docs"] for k, v in info["per_source"].items()} == sets
    written = len(list((tmp_path / "tok" / "train").glob("*.json")))
    assert 3 <= written <= 3 + num_proc  # no file started once the complete ones reached the cap
    # a larger cap reuses the shards already there, and a document cap works alike
    meta2 = prepare_corpus(src, tmp_path / "tok", num_proc=num_proc, max_tokens={"train": int(cum[-1])},
                           progress=False)
    assert meta2["splits"]["train"]["n_docs"] == 500 and not meta2["splits"]["train"]["cut"]


def test_changed_input_is_named_and_only_its_shard_redone(tmp_path, caplog):
    write_many(tmp_path / "sp", n_files=4, docs_per_file=10, seed=50)
    src = SlimPajamaLocal(tmp_path / "sp")
    out = tmp_path / "tok"
    meta = prepare_corpus(src, out, num_proc=1, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.bin")}
    assert prepare_corpus(src, out, num_proc=1, progress=False) == meta
    changed = tmp_path / "sp" / "train" / "chunk2" / "example_train_001.jsonl.zst"
    write_jsonl(changed, records(random_docs(4, seed=5)))
    os.utime(tmp_path / "sp" / "train" / "chunk1" / "example_train_000.jsonl.zst")  # an mtime alone is no change
    with caplog.at_level("WARNING"):
        meta2 = prepare_corpus(src, out, num_proc=1, progress=False)
    assert "train: train/chunk2/example_train_001.jsonl.zst changed size" in caplog.text
    after = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.bin")}
    assert [k for k in stamps if after[k] != stamps[k]] == ["000002.bin"]  # chunk2's first file, third in order
    assert meta2["splits"]["train"]["n_docs"] == 34
    meta3 = prepare_corpus(src, out, num_proc=1, progress=False, add_bos=False)  # settings changed: all redone
    assert meta3["splits"]["train"]["n_tokens"] == meta2["splits"]["train"]["n_tokens"] - 34
    (out / "train" / "000001.bin").write_bytes(b"\0\0")  # damaged output: not taken as prepared
    assert load_meta(out) is None


def test_empty_corpus_names_the_files(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl.zst", [{"text": ""}, {"text": ""}])
    with pytest.raises(CorpusError, match=r"empty corpus.*empty.jsonl.zst"):
        prepare_corpus(LocalFiles(train=str(path)), tmp_path / "tok", num_proc=1, progress=False)
    assert load_meta(tmp_path / "tok") is None


def test_skips_are_exact_per_file_and_in_the_manifest(tmp_path):
    a, b = tmp_path / "c" / "a.jsonl", tmp_path / "c" / "b.jsonl"
    a.parent.mkdir()
    a.write_text('{"text": "fine"}\n{"text": \n{"text": "also \\ud800 fine"}\n{"text": 3}\n')
    b.write_text('{"text": "b1"}\n{"text": ""}\n{"nope": 1}\n{"text": "b2"}\n')
    with pytest.raises(CorpusError, match=r"a.jsonl:2: malformed JSON"):
        prepare_corpus(LocalFiles(train=str(tmp_path / "c")), tmp_path / "tok", num_proc=2, progress=False)
    meta = prepare_corpus(LocalFiles(train=str(tmp_path / "c"), skip_bad_records=True), tmp_path / "tok",
                          num_proc=2, progress=False)
    read = meta["splits"]["train"]["read"]
    assert meta["splits"]["train"]["n_docs"] == 4
    assert (read["bad"], read["empty"], read["surrogate_docs"], read["records"]) == (3, 1, 1, 8)
    assert read["bad_by_file"] == {"a.jsonl": 2, "b.jsonl": 1}
    assert read["bad_examples"] == ["a.jsonl:2: malformed JSON (Expecting value at column 10)",
                                    "a.jsonl:4: field 'text' missing or not a string (got int)",
                                    "b.jsonl:3: field 'text' missing or not a string (got NoneType)"]


def test_one_writer_per_shard(tmp_path):
    write_many(tmp_path / "sp", n_files=3, docs_per_file=8, seed=60)
    src = SlimPajamaLocal(tmp_path / "sp")
    out = tmp_path / "tok"
    (out / "train").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path[:0] = sys.argv[1:3]\n"
        "from pathlib import Path; from datamodules.prepare import _ShardLock\n"
        "lock = _ShardLock(Path(sys.argv[3])); print(lock.held, flush=True); sys.stdin.readline()"),
        str(HERE.parents[1]), str(HERE), str(out / "train" / "000001.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert not _ShardLock(out / "train" / "000001.lock").held  # another process holds it
        assert prepare_corpus(src, out, num_proc=1, progress=False) is None  # that shard is left to its writer
        assert sorted(p.name for p in (out / "train").glob("*.json")) == ["000000.json", "000002.json"]
    finally:
        holder.communicate("\n", timeout=30)
    assert prepare_corpus(src, out, num_proc=1, progress=False) is not None  # the writer died: its lock with it


def test_killed_midway_then_resumed_is_byte_identical(tmp_path):
    write_many(tmp_path / "sp", n_files=8, docs_per_file=40, seed=70)
    reference = tmp_path / "ref"
    prepare_corpus(SlimPajamaLocal(tmp_path / "sp"), reference, num_proc=1, progress=False)
    out = tmp_path / "tok"
    script = ("import sys; sys.path[:0] = sys.argv[1:3]\n"
              "from corpus_utils import SlowSource; from datamodules.sources import SlimPajamaLocal\n"
              "from datamodules.prepare import prepare_corpus\n"
              "prepare_corpus(SlowSource(SlimPajamaLocal(sys.argv[3]), 0.5), sys.argv[4], num_proc=2, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(HERE.parents[1]), str(HERE), str(tmp_path / "sp"),
                             str(out)], start_new_session=True)
    deadline = time.time() + 120
    while len(list((out / "train").glob("*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, 9)  # the preparation and its worker processes, mid-file
    proc.wait()
    done = len(list((out / "train").glob("*.json")))
    assert 3 <= done < 8, done
    assert load_meta(out) is None and not (out / "meta.json").exists()
    meta = prepare_corpus(SlimPajamaLocal(tmp_path / "sp"), out, num_proc=2, progress=False)
    assert meta is not None and token_bytes(out) == token_bytes(reference)
    assert not list(out.rglob("*.tmp.*")) and not list(out.rglob("*.lock"))


def test_run_py_prepare_in_shares_then_complete(tmp_path):
    from tests.helpers import run_py

    write_many(tmp_path / "sp", n_files=3, docs_per_file=6, seed=80)
    args = ["task=prepare", "data=slimpajama_local", f"data.source.root={tmp_path / 'sp'}",
            f"data.cache_dir={tmp_path / 'tok'}", "data.num_proc=1", "data.progress=false",
            f"paths.data_dir={tmp_path}"]
    first = run_py(*args, "+shard_index=1", "+shard_count=2", f"hydra.run.dir={tmp_path / 'r1'}")
    assert "prepared share 1 of 2" in first.stdout and load_meta(tmp_path / "tok") is None
    assert sorted(p.name for p in (tmp_path / "tok" / "train").glob("*.json")) == ["000001.json"]
    second = run_py(*args, f"hydra.run.dir={tmp_path / 'r2'}", env={"RANK": "0", "WORLD_SIZE": "2"})
    assert "corpus complete" in second.stdout and load_meta(tmp_path / "tok") is not None


def test_a_truncated_shard_fails_the_preparation_by_name(tmp_path):
    write_many(tmp_path / "sp", n_files=4, docs_per_file=30, seed=85)
    cut = tmp_path / "sp" / "train" / "chunk2" / "example_train_001.jsonl.zst"
    cut.write_bytes(cut.read_bytes()[:-40])
    for num_proc in (1, 2):
        with pytest.raises(CorpusError, match=r"train/chunk2/example_train_001.jsonl.zst: truncated zstd frame 1"):
            prepare_corpus(SlimPajamaLocal(tmp_path / "sp"), tmp_path / "tok", num_proc=num_proc, progress=False)
        assert load_meta(tmp_path / "tok") is None and not (tmp_path / "tok" / "train" / "000002.json").exists()
    assert not list((tmp_path / "tok").rglob("*.tmp.*"))  # the failed shard's temporary files are gone
