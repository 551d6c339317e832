"""Two DDP ranks through Lightning (ddp_spawn on CPU, gloo): the ranks see disjoint windows that together cover the epoch."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from corpus_utils import random_docs, records, write_jsonl

from datamodules.lm import PackedLMDataModule
from datamodules.packed import TokenFile
from datamodules.sources import LocalFiles

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]


class RankRecorder(pl.LightningModule):
    def __init__(self, out_dir: str):
        super().__init__()
        self.emb = torch.nn.Embedding(32000, 4)
        self.out_dir = out_dir
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        return self.emb(batch["input_ids"]).square().mean()

    def on_train_end(self):
        torch.save(torch.cat(self.seen), f"{self.out_dir}/rank{self.global_rank}.pt")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_ddp_ranks_disjoint_and_complete(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", records(random_docs(40, seed=61)))
    L, B = 32, 3
    dm = PackedLMDataModule(LocalFiles(train=str(train)), cache_dir=str(tmp_path / "tok"), seq_len=L, batch_size=B,
                            num_workers=2, num_proc=1, progress=False, seed=9)
    dm.prepare_data()
    tokens = np.asarray(TokenFile(tmp_path / "tok", "train").tokens, dtype=np.int64)
    n_windows = len(tokens) // L
    per_rank = n_windows // (2 * B)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=per_rank, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(RankRecorder(str(tmp_path)), datamodule=dm)
    rows = [torch.load(tmp_path / f"rank{r}.pt").numpy() for r in range(2)]
    assert rows[0].shape == rows[1].shape == (per_rank * B, L)
    windows = {w.tobytes(): i for i, w in enumerate(tokens[:n_windows * L].reshape(n_windows, L))}
    ids = [[windows[r.tobytes()] for r in rank_rows] for rank_rows in rows]
    assert not set(ids[0]) & set(ids[1])  # disjoint
    assert len(set(ids[0]) | set(ids[1])) == 2 * per_rank * B > n_windows - 2 * B  # complete but for the trim
