"""Inference through Lightning's ``predict`` on many devices or nodes (DDP).

Each rank takes every ``world_size``-th scan of the run (``scans[rank::world_size]``), loads
them with its own DataLoader workers, predicts on its device, and a prediction writer stores
each scan's record and mask as soon as it is done. After a barrier, rank 0 reads every record
back and ``infer`` assembles the same tables as a single process would.

    python infer.py ckpt_path=CKPT input=CSV out_dir=DIR strategy=ddp accelerator=gpu devices=4
    python infer.py ... strategy=ddp_spawn accelerator=cpu devices=2      # CPU processes (gloo)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from wmhseg.inference.pipeline import ScanDataset, run_scan
from wmhseg.inference.predictor import Predictor
from wmhseg.inference.records import ResultStore
from wmhseg.manifest import Scan

__all__ = ["PredictModule", "RecordWriter", "predict_distributed"]


def _identity(item: Any) -> Any:
    return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class PredictModule(L.LightningModule):
    """Wraps a :class:`Predictor` for ``Trainer.predict``; one batch = one scan.

    Args:
        predictor: the predictor (its network is registered so Lightning places it on the device).
        store: where records and masks go.
        scans: the scans of this run (all ranks together).
        num_workers: DataLoader workers per rank.
        pv_distance_mm: periventricular distance threshold.
    """

    def __init__(self, predictor: Predictor, store: ResultStore, scans: Sequence[Scan], *,
                 num_workers: int = 1, pv_distance_mm: float = 10.0) -> None:
        super().__init__()
        self.net = predictor.network
        self.predictor = predictor
        self.store = store
        self.scans = list(scans)
        self.num_workers = num_workers
        self.pv_distance_mm = pv_distance_mm

    def rank_scans(self) -> list[Scan]:
        return self.scans[self.global_rank::self.trainer.world_size]

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        workers = self.num_workers if len(self.rank_scans()) > 1 else 0
        return torch.utils.data.DataLoader(
            ScanDataset(self.rank_scans(), self.predictor), batch_size=None, shuffle=False, num_workers=workers,
            collate_fn=_identity, worker_init_fn=_worker_init if workers else None)

    def on_predict_start(self) -> None:
        self.predictor.network = self.net
        self.predictor.device = self.device
        self.predictor.precision = self.predictor._resolve_precision(self.predictor.settings.precision)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        index, prepared, error = batch
        scan = self.rank_scans()[index]
        return {"scan": scan, "record": run_scan(self.predictor, self.store, scan, prepared, error,
                                                 pv_distance_mm=self.pv_distance_mm)}


class RecordWriter(BasePredictionWriter):
    """Writes each scan's record as soon as it is predicted; all ranks meet at the end."""

    def __init__(self, store: ResultStore) -> None:
        super().__init__(write_interval="batch")
        self.store = store

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        self.store.write(prediction["scan"], prediction["record"])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("wmhseg-records")


def predict_distributed(predictor: Predictor, store: ResultStore, scans: Sequence[Scan], *, strategy: str,
                        accelerator: str = "auto", devices: int | str = "auto", num_nodes: int = 1,
                        num_workers: int = 1, pv_distance_mm: float = 10.0, progress: bool = True) -> bool:
    """Predict ``scans`` with ``Trainer.predict``; return whether this process is rank 0.

    Records and masks are on disk when it returns (read them with ``store``).
    """
    module = PredictModule(predictor, store, scans, num_workers=num_workers, pv_distance_mm=pv_distance_mm)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress, use_distributed_sampler=False,
                        callbacks=[RecordWriter(store)], default_root_dir=str(store.out_dir))
    trainer.predict(module, return_predictions=False)
    return trainer.global_rank == 0
