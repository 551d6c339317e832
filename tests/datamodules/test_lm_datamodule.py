import lightning.pytorch as pl
import pytest
import torch
from corpus_utils import random_docs, records, write_jsonl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.lm import PackedLMDataModule
from datamodules.sources import LocalFiles

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


class Recorder(pl.LightningModule):
    """Tiny model that records every training batch it consumes."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(32000, 4)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        return self.emb(batch["input_ids"]).square().mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_dm(tmp_path, **kw):
    train = write_jsonl(tmp_path / "c" / "train.jsonl", records(random_docs(30, seed=7)))
    val = write_jsonl(tmp_path / "c" / "val.jsonl", records(random_docs(12, seed=8)))
    args = dict(seq_len=32, batch_size=4, num_workers=2, num_proc=1, progress=False, seed=3)
    args.update(kw)
    return PackedLMDataModule(LocalFiles(train=str(train), validation=str(val)), cache_dir=str(tmp_path / "tok"), **args)


def trainer(tmp_path, max_steps, callbacks=()):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, val_check_interval=7,
                      limit_val_batches=2, num_sanity_val_steps=1, callbacks=list(callbacks),
                      enable_checkpointing=bool(callbacks))


def test_resume_from_checkpoint_sees_exactly_the_remaining_batches(tmp_path):
    dm = make_dm(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    per_epoch = len(dm.train_set)
    total, k = per_epoch + per_epoch // 2 + 3, per_epoch + 2  # cross an epoch boundary before and after the cut
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=k, save_top_k=-1, filename="{step}")
    full = Recorder()
    trainer(tmp_path, total, [ckpt]).fit(full, datamodule=make_dm(tmp_path))
    assert len(full.seen) == total

    resumed, dm2 = Recorder(), make_dm(tmp_path)
    trainer(tmp_path, total).fit(resumed, datamodule=dm2, ckpt_path=tmp_path / "ckpt" / f"step={k}.ckpt")
    assert len(resumed.seen) == total - k
    assert all(torch.equal(a, b) for a, b in zip(resumed.seen, full.seen[k:]))
    # epochs differ in order (new permutation), and the saved position is (epoch, batch) of the next batch
    assert not torch.equal(full.seen[0], full.seen[per_epoch])
    assert dm2.state_dict()["epoch"] == total // per_epoch and dm2.state_dict()["batch"] == total % per_epoch


def test_state_dict_roundtrip_and_changed_batch_size(tmp_path):
    dm = make_dm(tmp_path, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    dm.advance(len(dm.train_set) + 3)
    state = dm.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 3)
    other = make_dm(tmp_path, batch_size=2)
    other.setup("fit")
    other.load_state_dict(state)
    assert other.position == {"epoch": 1, "batch": 6}  # same number of windows consumed


def test_config_files_compose_and_embedded_trains_through_the_same_path(tmp_path):
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf / "data"), version_base="1.3"):
        for name in ("embedded", "slimpajama_local", "slimpajama", "local_files"):
            cfg = compose(config_name=name)
            assert {"batch_size", "seq_len", "num_workers", "_target_"} <= set(cfg)
        cfg = compose(config_name="embedded", overrides=[f"+paths.data_dir={tmp_path}"])
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("paths")
    dm = instantiate(cfg, seq_len=64, batch_size=4, num_workers=0, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 64) and int(batch["input_ids"].max()) < dm.vocab_size == 32000
    assert len(dm.val_dataloader()) >= 1 and dm.test_dataloader() == []
    assert (tmp_path / "corpora" / "embedded" / "train" / "chunk1").is_dir()
    # paper-size sequences on the small embedded corpus: validation falls back to the batches it can fill
    dm = instantiate(cfg, seq_len=2048, batch_size=8, num_workers=0, progress=False)
    dm.setup("fit")
    val = list(dm.val_dataloader())
    n_val = dm.meta["splits"]["validation"]["n_tokens"]
    assert 0 < n_val // 2048 < 8 and len(val) == 1 and val[0]["input_ids"].shape == (n_val // 2048, 2048)
    dm = instantiate(cfg, seq_len=16384, batch_size=1, num_workers=0, progress=False)
    dm.setup("fit")
    assert n_val < 16384 and dm.val_dataloader() == [] and len(dm.train_dataloader()) > 0  # too short: not evaluated


def test_training_from_the_tokenized_corpus_alone_and_changed_inputs_named(tmp_path):
    import shutil

    from datamodules.sources import CorpusError

    dm = make_dm(tmp_path, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    first = next(iter(dm.train_dataloader()))["input_ids"]
    assert dm.prepare_data_per_node is False  # global rank 0 alone prepares
    # the raw files changed: named, not re-tokenized inside fit
    write_jsonl(tmp_path / "c" / "val.jsonl", records(random_docs(13, seed=8)))
    src = LocalFiles(train=str(tmp_path / "c" / "train.jsonl"), validation=str(tmp_path / "c" / "val.jsonl"))
    with pytest.raises(CorpusError, match=r"(?s)validation: val.jsonl changed size: \d+ -> \d+ bytes.*task=prepare"):
        PackedLMDataModule(src, cache_dir=str(tmp_path / "tok"), progress=False).prepare_data()
    with pytest.raises(CorpusError, match=r"setting add_bos: prepared with True, now False"):
        PackedLMDataModule(LocalFiles(train=str(tmp_path / "c" / "train.jsonl")), cache_dir=str(tmp_path / "tok"),
                           add_bos=False, progress=False).prepare_data()
    # the raw corpus gone: training goes on from the tokenized one (also with no source at all)
    shutil.rmtree(tmp_path / "c")
    for source in (LocalFiles(train=str(tmp_path / "c" / "train.jsonl")), None):
        dm2 = PackedLMDataModule(source, cache_dir=str(tmp_path / "tok"), seq_len=32, batch_size=4, num_workers=0,
                                 progress=False, seed=3)
        dm2.prepare_data()
        dm2.setup("fit")
        assert torch.equal(next(iter(dm2.train_dataloader()))["input_ids"], first)
    with pytest.raises(FileNotFoundError, match="data.source is null"):
        PackedLMDataModule(None, cache_dir=str(tmp_path / "nothing")).prepare_data()
