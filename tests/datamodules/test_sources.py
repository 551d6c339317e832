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
    assert isinstance(hf, HFDataset) and hf.inputs("validation")[0].name == "example_holdout_0.jsonl"
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
    with pytest.raises(CorpusError, match="x.jsonl.zst: corrupt zstd data in frame 1"):
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
    assert stats.bad_examples[0].startswith("bad.jsonl:5: malformed JSON")
    assert stats.bad_examples[1].startswith("bad.jsonl:7: field 'text'")
    assert stats.bad_by_file == {"bad.jsonl": 2}


def test_embedded_corpus_is_stable_and_split(tmp_path):
    src = EmbeddedCorpus(tmp_path)
    train, _ = read(src)
    val, _ = read(src, "validation")
    from pydoc_data.topics import topics

    assert sorted(train + val) == sorted(t for t in topics.values() if t)
    assert 0.03 < sum(map(len, val)) / sum(map(len, train + val)) < 0.15
    fp = src.fingerprint()
    assert EmbeddedCorpus(tmp_path).fingerprint() == fp
    assert [i.name for i in src.inputs("train")] == ["train/chunk1/pydoc_topics_train.jsonl"]


# ------------------------------------------------------------------------------------------ verification of every input
def write_frames(path, recs, per_frame):
    """A multi-frame .jsonl.zst (one frame per `per_frame` lines, each with its content size); frame start offsets."""
    import zstandard

    lines = [json.dumps(r) + "\n" for r in recs]
    frames = [zstandard.ZstdCompressor().compress("".join(lines[i:i + per_frame]).encode())
              for i in range(0, len(lines), per_frame)]
    path.write_bytes(b"".join(frames))
    starts = [sum(map(len, frames[:k])) for k in range(len(frames))]
    return starts


def test_multi_frame_zstd_is_read_whole_and_a_truncated_one_names_frame_and_offset(tmp_path):
    docs = random_docs(120, seed=71)
    path = tmp_path / "m.jsonl.zst"
    starts = write_frames(path, records(docs), per_frame=20)
    assert len(starts) == 6
    assert read(LocalFiles(train=str(path)))[0] == docs
    data = path.read_bytes()
    cut = starts[3] + (starts[4] - starts[3]) // 2  # in the middle of frame 4
    path.write_bytes(data[:cut])
    for skip in (False, True):  # the rest of a cut file is unreadable: no skip can make it complete
        with pytest.raises(CorpusError, match=rf"m.jsonl.zst: truncated zstd frame 4: it starts at byte {starts[3]} "
                                              rf"and the file ends at byte {cut}"):
            read(LocalFiles(train=str(path), skip_bad_records=skip))
    path.write_bytes(data[:starts[1] - 3])  # a cut inside the first frame (a small file cut short)
    with pytest.raises(CorpusError, match="truncated zstd frame 1"):
        read(LocalFiles(train=str(path)))


def test_garbage_empty_and_recordless_files_are_errors(tmp_path):
    import zstandard

    (tmp_path / "g.jsonl.zst").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CorpusError, match="g.jsonl.zst: corrupt zstd data in frame 1"):
        read(LocalFiles(train=str(tmp_path / "g.jsonl.zst")))
    good = zstandard.ZstdCompressor().compress(b'{"text": "abc"}\n')
    (tmp_path / "t.jsonl.zst").write_bytes(good + b"\x00garbage after the frame")
    with pytest.raises(CorpusError, match="t.jsonl.zst: corrupt zstd data in frame 2"):
        read(LocalFiles(train=str(tmp_path / "t.jsonl.zst")))
    for name in ("e.jsonl.zst", "e.jsonl", "e.txt"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(CorpusError, match=rf"{name}: empty file \(0 bytes\)"):
            read(LocalFiles(train=str(tmp_path / name)))
    (tmp_path / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\n\n"))
    with pytest.raises(CorpusError, match="z.jsonl.zst: no record in the file"):
        read(LocalFiles(train=str(tmp_path / "z.jsonl.zst")))


def test_frame_with_wrong_declared_size_is_an_error(tmp_path):
    import zstandard

    frame = bytearray(zstandard.ZstdCompressor().compress(b'{"text": "abcdef"}\n' * 3))
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size == 57
    header = zstandard.frame_header_size(bytes(frame))
    frame[header - 1] = 50  # the 1-byte content size field (single-segment frame) says 50
    assert zstandard.get_frame_parameters(bytes(frame)).content_size == 50
    (tmp_path / "s.jsonl.zst").write_bytes(bytes(frame))
    with pytest.raises(CorpusError, match="s.jsonl.zst: .*frame 1"):
        read(LocalFiles(train=str(tmp_path / "s.jsonl.zst")))


def test_invalid_utf8_names_the_right_line_past_many_blocks(tmp_path):
    docs = random_docs(400, seed=81)  # ~170 KB before the bad line: many decompressed chunks
    lines = [json.dumps(r).encode() for r in records(docs)]
    lines.insert(350, b'{"text": "caf\xe9"}')  # Latin-1, not UTF-8, on line 351
    path = tmp_path / "u.jsonl.zst"
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n"))
    assert sum(map(len, lines[:350])) > 20 * 8192
    with pytest.raises(CorpusError, match=r"u.jsonl.zst:351: not UTF-8 text \(invalid continuation byte at byte 13 of the line"):
        read(LocalFiles(train=str(path)))
    got, stats = read(LocalFiles(train=str(path), skip_bad_records=True))
    assert got == docs and stats.bad == 1 and stats.bad_by_file == {"u.jsonl.zst": 1}
    txt = tmp_path / "u.txt"
    txt.write_bytes(b"one\ntwo\nth\xffree\n")
    with pytest.raises(CorpusError, match=r"u.txt:3: not UTF-8 text \(invalid start byte at byte 2 of the line"):
        read(LocalFiles(train=str(txt)))


def test_lone_surrogates_are_replaced_and_counted_and_text_must_be_a_string(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "a\\ud800b"}\n{"text": "ok \\ud83d\\ude00 pair"}\n{"text": "\\udfff\\ud800"}\n')
    got, stats = read(LocalFiles(train=str(path)))
    assert got == ["a\ufffdb", "ok \U0001F600 pair", "\ufffd\ufffd"]
    assert (stats.surrogate_docs, stats.surrogate_chars) == (2, 3)
    path.write_text('{"text": "fine"}\n{"text": 5}\n')
    with pytest.raises(CorpusError, match=r"s.jsonl:2: field 'text' missing or not a string \(got int\)"):
        read(LocalFiles(train=str(path)))


def test_a_file_of_only_bad_records_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"text": \n[1, 2]\n')
    with pytest.raises(CorpusError, match="b.jsonl: every one of its 2 records is bad"):
        read(LocalFiles(train=str(path), skip_bad_records=True))
    path.write_text(json.dumps({"text": "x", "meta": {"redpajama_set_name": "RedPajamaArXiv"}}) + "\n")
    got, stats = read(LocalFiles(train=str(path), sets=["RedPajamaGithub"]))  # filtered out: counted, not an error
    assert got == [] and stats.files_without_documents == 1 and stats.filtered == 1


def test_missing_requested_split_is_an_error(tmp_path):
    write_jsonl(tmp_path / "train" / "chunk1" / "a.jsonl.zst", records(random_docs(3, seed=91)))
    with pytest.raises(FileNotFoundError, match="no validation/ directory; drop it from data.source.splits"):
        SlimPajamaLocal(tmp_path).splits()
    assert SlimPajamaLocal(tmp_path, splits=["train"]).splits() == ["train"]
    with pytest.raises(FileNotFoundError, match="no test/ directory"):
        SlimPajamaLocal(tmp_path, splits=["train", "test"]).splits()
    hf = HFDataset(path="json", data_files={"train": str(tmp_path / "train")})
    with pytest.raises(FileNotFoundError, match="data_files has no 'validation' entry"):
        hf.inputs("validation")


def test_streaming_path_names_the_file_and_record(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", records(random_docs(5, seed=95)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": 7}\n')
    hf = HFDataset(path="json", data_files={"train": [str(good), str(bad)]})
    with pytest.raises(CorpusError, match=r"bad.jsonl: record 2: field 'text' missing or not a string"):
        read(hf)
    bad.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(CorpusError, match=r"bad.jsonl: unreadable after record \d+ through datasets \(ArrowInvalid"):
        read(hf)


def test_hf_dataset_lists_its_data_files_through_the_builder(tmp_path):
    """What `data=slimpajama` does with the Hub repo (file list from load_dataset_builder, one file streamed at a
    time), here on a local SlimPajama-layout folder, offline."""
    expected = write_slimpajama(tmp_path, random_docs(20, seed=97), random_docs(3, seed=98))
    hf = HFDataset(path=str(tmp_path))
    assert [i.name for i in hf.inputs("train")] == [f"chunk{c}/example_train_{i}.jsonl.zst"
                                                    for c, i in ((1, 0), (1, 1), (2, 2), (2, 3))]
    docs, stats = read(hf)
    assert docs == [r["text"] for r in expected["train"]] and stats.docs == 20
    with pytest.raises(FileNotFoundError, match="the dataset has no 'test' split"):
        HFDataset(path=str(tmp_path), split_names={"train": "train", "test": "test"}).inputs("test")
