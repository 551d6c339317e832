import json

import pytest
from corpus_utils import random_docs, records, write_jsonl, write_slimpajama

from datamodules.sources import CorpusError, HFDataset, LocalFiles, ReadStats, SlimPajamaLocal, EmbeddedCorpus


def read(source, split="train"):
    stats = ReadStats()
    return list(source.iter_documents(split, stats)), stats


def test_slimpajama_layout_jsonl_and_zst(tmp_path):
    train, val = random_docs(37, seed=11), random_docs(5, seed=12)
    expected = write_slimpajama(tmp_path, train, val)
    src = SlimPajamaLocal(tmp_path)
    assert src.splits() == ["train", "validation"]
    docs, stats = read(src)
    assert docs == [r["text"] for r in expected["train"]] and sorted(docs) == sorted(train)
    assert stats.docs == 37 and stats.bad == stats.empty == 0
    assert sum(stats.sets.values()) == 37
    assert read(src, "validation")[0] == val
    keep = "RedPajamaGithub"
    docs, stats = read(SlimPajamaLocal(tmp_path, sets=[keep]))
    assert docs == [r["text"] for r in expected["train"] if r["meta"]["redpajama_set_name"] == keep]
    assert stats.filtered == 37 - len(docs) > 0


def test_local_files_mixed_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = random_docs(12, seed=21)
    write_jsonl(tmp_path / "a.jsonl", records(docs[:4]))
    write_jsonl(tmp_path / "b.jsonl.zst", records(docs[4:8]))
    pq.write_table(pa.table({"text": docs[8:11]}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text(docs[11])
    got, stats = read(LocalFiles(train=str(tmp_path)))
    assert got == docs and stats.docs == 12
    got, _ = read(LocalFiles(train=[str(tmp_path / "*.jsonl*")]))
    assert got == docs[:8]


def test_hf_datasets_path_reads_the_same_documents(tmp_path):
    train, val = random_docs(23, seed=31), random_docs(4, seed=32)
    write_slimpajama(tmp_path, train, val)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    local = SlimPajamaLocal(tmp_path)
    # built from config like `data=slimpajama`, with the datasets API reading local stand-in files (one a glob)
    hf = instantiate(OmegaConf.create({
        "_target_": "datamodules.sources.HFDataset", "path": "json", "max_docs": {"validation": 3},
        "data_files": {"train": local.files("train"), "validation": str(tmp_path / "validation" / "*" / "*.jsonl")}}))
    assert isinstance(hf, HFDataset) and hf.fingerprint()["data_files"]["validation"][0][0].endswith(".jsonl")
    assert read(hf)[0] == read(local)[0]
    assert read(hf, "validation")[0] == val[:3]


def test_missing_paths_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read(LocalFiles(train=str(tmp_path / "nope.jsonl")))
    with pytest.raises(FileNotFoundError, match=r"\*.zst"):
        read(LocalFiles(train=str(tmp_path / "*.zst")))
    with pytest.raises(FileNotFoundError, match="train/"):
        SlimPajamaLocal(tmp_path).splits()


def test_corrupt_zstd_names_the_file(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl.zst", records(random_docs(200, seed=41)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match="x.jsonl.zst: corrupt zstd"):
        read(LocalFiles(train=str(path)))


def test_malformed_json_line_names_file_and_line_or_is_counted(tmp_path):
    docs = random_docs(6, seed=51)
    lines = [json.dumps(r) for r in records(docs)]
    lines[3] = lines[3][:-5]  # truncated object on line 4
    lines.insert(5, json.dumps({"meta": {}}))  # no text on line 6
    lines.insert(1, json.dumps({"text": ""}))  # empty text on line 2: skipped, counted
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"bad.jsonl:5: malformed JSON"):
        read(LocalFiles(train=str(path)))
    got, stats = read(LocalFiles(train=str(path), skip_bad_records=True))
    assert got == docs[:3] + docs[4:]
    assert (stats.docs, stats.bad, stats.empty) == (5, 2, 1)
    assert stats.bad_examples[0].startswith(f"{path}:5: malformed JSON")
    assert stats.bad_examples[1].startswith(f"{path}:7: field 'text'")


def test_embedded_corpus_is_stable_and_split(tmp_path):
    src = EmbeddedCorpus(tmp_path)
    train, _ = read(src)
    val, _ = read(src, "validation")
    from pydoc_data.topics import topics

    assert sorted(train + val) == sorted(t for t in topics.values() if t)
    assert 0.03 < sum(map(len, val)) / sum(map(len, train + val)) < 0.15
    fp = src.fingerprint()
    assert EmbeddedCorpus(tmp_path).fingerprint() == fp  # rewriting nothing keeps mtimes
