"""The training loop: iterations, mixed precision, DDP, checkpoints, resume, evaluation, logging."""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..build import build_criterion, build_model, categories_of, checkpoint_payload, with_categories
from ..checkpoint import load_checkpoint, load_model_state, nonfinite_tensors, save_checkpoint
from ..config import Config
from ..config_loader import dump_config
from ..data.loader import build_dataset, build_train_loader
from ..detector import Detector, resolve_device
from ..finetune import load_matching, read_detector_weights
from ..jsonio import dumps_finite, write_json
from ..evaluation.report import report_from_evaluator
from ..model import count_parameters
from ..schedules import gamma_at
from .. import fast
from .amp import autocast_dtype, grad_scaler
from .best import BestTracker
from .distributed import all_reduce_max, barrier, init_distributed, is_main
from .logs import draw_val_predictions, setup_logging
from .run_dir import (check_output_dir, check_readable, clean_stale_temp_files, load_val, lock_output_dir,
                      periodic_checkpoints, prune, rng_state, set_aside_metrics, set_rng_state)
from .solver import build_lr_scheduler, build_optimizer

log = logging.getLogger("retinanet")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stops before the weights are touched."""


class Trainer:
    def __init__(self, cfg: Config, output_dir: Optional[str] = None, resume: bool = False,
                 overwrite: bool = False):
        self.output = Path(output_dir or cfg.train.output_dir)
        self.device = resolve_device(cfg.train.device)
        self.rank, self.world, local = init_distributed(self.device.type)
        # One run per folder, held until this process ends or train() returns; taken before the
        # folder is judged, so a second run names the first instead of racing it.
        self._lock = lock_output_dir(self.output) if is_main() else None
        check_output_dir(self.output, resume, overwrite)  # before anything is written into it
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local)
        if is_main():
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "checkpoints").mkdir(exist_ok=True)
        barrier()
        setup_logging(self.output if is_main() else None)
        if is_main():  # no other process saves into this folder now: any temp file is stale
            clean_stale_temp_files(self.output)
            if overwrite and not resume:
                set_aside_metrics(self.output)
        torch.manual_seed(cfg.train.seed + self.rank)
        np.random.seed(cfg.train.seed + self.rank)
        random.seed(cfg.train.seed + self.rank)

        self.dataset = build_dataset(cfg, "train")
        check_readable(self.dataset, cfg.data.train.images)
        self.val_coco = load_val(cfg.data.val)  # validated now rather than after the whole run
        self.cfg = cfg = with_categories(cfg, self.dataset.categories, f"the training annotations "
                                                                       f"{cfg.data.train.annotations}")
        self.categories = categories_of(cfg)
        model = build_model(cfg)
        if cfg.model.weights and not (resume and (self.output / "checkpoints" / "last.pth").is_file()):
            load_matching(model, read_detector_weights(cfg.model.weights), cfg.model.weights)  # fine-tuning
        if cfg.model.fast:  # the same parameters, keys and gradients (retinanet/fast/)
            model = fast.for_training(model, self.device, amp=bool(cfg.train.amp))
        model = model.to(self.device)
        if cfg.model.backbone.norm == "syncbn" and self.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[local] if self.device.type == "cuda"
                                                        else None) if self.world > 1 else model)
        self.criterion = build_criterion(cfg).to(self.device)
        self.optimizer = build_optimizer(cfg.solver, model)
        self.scheduler = build_lr_scheduler(cfg.solver, self.optimizer)
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.scaler = grad_scaler(self.device, self.amp_dtype)  # fp16 on CUDA only; tests enable it on a CPU
        self.start_iter = 0
        self.skipped_steps = 0
        self._bad_images: set = set()  # distinct unreadable files (a file is drawn again every epoch)
        self._written: list[Path] = []  # periodic checkpoints of this run: the only ones pruning may delete
        self.best = BestTracker(cfg.train.best_metric, cfg.train.patience)
        if resume:
            self._resume()
        if is_main():
            dump_config(cfg, self.output / "config.yaml")
        self.writer = None
        if is_main():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.output / "tensorboard"))

    # -- checkpoints ------------------------------------------------------------------------
    def _payload(self, iteration: int) -> dict:
        return checkpoint_payload(self.cfg, self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                                  scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                                  criterion=self.criterion.state_dict(), iteration=iteration, rng=rng_state(),
                                  best=self.best.state_dict())

    @property
    def skipped_images(self) -> int:
        """Distinct training images that could not be read so far."""
        return len(self._bad_images)

    def save(self, iteration: int, final: bool = False) -> None:
        if not is_main():
            return
        bad = nonfinite_tensors(self.model.state_dict())  # buffers too: NaN BatchNorm statistics
        if bad:
            raise NonFiniteLossError(f"iteration {iteration}: {len(bad)} model tensor(s) hold NaN or Inf ("
                                     f"{', '.join(bad[:5])}); no checkpoint written, the last one is intact")
        ckpt_dir = self.output / "checkpoints"
        payload = self._payload(iteration)
        if not final:
            path = ckpt_dir / f"model_{iteration:07d}.pth"
            save_checkpoint(path, payload)
            if path not in self._written:
                self._written.append(path)
            prune(self._written, self.cfg.train.keep_last)
        save_checkpoint(ckpt_dir / "last.pth", payload)
        if final:
            save_checkpoint(self.output / "model_final.pth", {k: payload[k] for k in ("model", "config", "categories")}
                            | {"iteration": iteration})

    def _resume(self) -> None:
        path = self.output / "checkpoints" / "last.pth"
        if not path.is_file():
            log.info("--resume: no %s yet, starting from scratch", path)
            return
        ckpt = load_checkpoint(path)
        if int(ckpt["iteration"]) > self.cfg.solver.max_iter:
            raise ValueError(f"--resume: {path} is at iteration {ckpt['iteration']}, beyond solver.max_iter="
                             f"{self.cfg.solver.max_iter}; resuming would rewind it. Raise solver.max_iter, or "
                             f"train into another --output-dir")
        load_model_state(self.model, ckpt["model"], source=str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.criterion.load_state_dict(ckpt["criterion"])
        set_rng_state(ckpt["rng"])
        self.best.load_state_dict(ckpt.get("best", {}))  # checkpoints from before best tracking have none
        self.start_iter = int(ckpt["iteration"])
        # The earlier part of this run wrote these; later ones (none, normally) are left alone.
        self._written = periodic_checkpoints(self.output / "checkpoints", up_to=self.start_iter)
        log.info("resumed from %s at iteration %d", path, self.start_iter)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, iteration: int, final: bool = False) -> dict:
        val = self.cfg.data.val
        if not (val.images and val.annotations):
            return {}
        from ..evaluation.inference import inference_on_coco
        # The detector runs the model in eval mode and hands it back in train mode.
        detector = Detector(self.model, self.cfg, self.device)
        _, evaluator = inference_on_coco(detector, val.images, self.val_coco, batch_size=2, progress=is_main(),
                                         rank=self.rank, world_size=self.world)
        metrics = evaluator.evaluate()
        if is_main() and metrics:
            log.info("iteration %d: AP %.2f AP50 %.2f AP75 %.2f", iteration, metrics["AP"], metrics["AP50"],
                     metrics["AP75"])
            for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                self.writer.add_scalar(f"eval/{k}", metrics[k], iteration)
            self._log_images(detector, iteration, save=final)
            self._log_jsonl({"iteration": iteration, **{k: v for k, v in metrics.items() if k != "per_category"}})
            if final and self.cfg.evaluation.report:
                report_from_evaluator(self.output, evaluator, val.images, metrics, detector.categories, self.cfg)
        return metrics

    def _log_images(self, detector: Detector, iteration: int, save: bool = False) -> None:
        """The first ``train.vis_images`` val images with their predictions, to TensorBoard (and, at
        the end, to OUTPUT/predictions/)."""
        infos = self.val_coco.dataset["images"][: self.cfg.train.vis_images]
        draw_val_predictions(detector, infos, Path(self.cfg.data.val.images), self.writer, iteration,
                             self.output / "predictions" if save else None)

    def _log_jsonl(self, record: dict) -> None:
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(dumps_finite(record) + "\n")  # a NaN loss is logged as null: the file stays valid JSON

    # -- training ---------------------------------------------------------------------------
    def train(self) -> dict:
        """Runs to solver.max_iter (or an early stop); returns the final val metrics. Releases the folder."""
        try:
            return self._train()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _train(self) -> dict:
        cfg = self.cfg
        max_iter = cfg.solver.max_iter
        total, trainable = count_parameters(self.model)
        if is_main():
            s = self.dataset.stats
            log.info("train set: %s", json.dumps(s))
            log.info("classes (%d): %s", len(self.categories), ", ".join(c["name"] for c in self.categories))
            log.info("model: %s, %.2fM parameters (%.2fM trainable); device %s, %d process(es); "
                     "batch %d, %d iterations", cfg.model.backbone.name, total / 1e6, trainable / 1e6, self.device,
                     self.world, cfg.solver.ims_per_batch, max_iter)
        loader = iter(build_train_loader(cfg, self.dataset, self.rank, self.world, self.start_iter))
        self.model.train()
        bar = None
        if is_main():
            from tqdm import tqdm
            bar = tqdm(total=max_iter, initial=self.start_iter, dynamic_ncols=True, disable=None)
        t_last = time.perf_counter()
        for it in range(self.start_iter, max_iter):
            batch = next(loader)
            self._bad_images.update(batch.get("skipped_ids", ()))
            gamma = gamma_at(cfg.model.loss, it, max_iter)
            losses = self.step(batch, it, gamma)
            self.scheduler.step()
            done = it + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if is_main() and (done % cfg.train.log_period == 0 or done == max_iter):
                now = time.perf_counter()
                record = {"iteration": done, **losses, "lr": self.optimizer.param_groups[0]["lr"], "gamma": gamma,
                          "time_per_iter": (now - t_last) / min(cfg.train.log_period, done - self.start_iter or 1)}
                t_last = now
                self._log_jsonl(record)
                for k, v in record.items():
                    if k != "iteration":
                        self.writer.add_scalar(f"train/{k}", v, done)
            if cfg.train.checkpoint_period and done % cfg.train.checkpoint_period == 0 and done < max_iter:
                self.save(done)
            if cfg.train.eval_period and done % cfg.train.eval_period == 0 and done < max_iter:
                if self.best.step(done, self.evaluate(done), self.output, self.cfg, self.model, is_main()):
                    break  # early stop (train.patience), logged by the tracker
        if bar is not None:
            bar.close()
        last = done if self.start_iter < max_iter else max_iter
        self.save(last, final=True)
        metrics = self.evaluate(last, final=True)
        if cfg.train.eval_period and self.best.last_iteration != last:  # not already tracked (early stop)
            self.best.step(last, metrics, self.output, self.cfg, self.model, is_main())
        if is_main():
            if metrics:
                metrics = {**metrics, **self.best.summary()} if cfg.train.eval_period else metrics
                write_json(self.output / "metrics.json", metrics, indent=2)
            log.info("done: %d bad images skipped, %d non-finite steps skipped", self.skipped_images,
                     self.skipped_steps)
            self.writer.close()
        return metrics

    def step(self, batch: dict, it: int, gamma: float) -> dict:
        if len(batch["targets"]) == 0:  # every image of this batch was unreadable
            return {"loss": float("nan")}
        images = batch["images"].to(self.device, non_blocking=True)  # async from pinned memory to a GPU: untested here
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in batch["targets"]]
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            outputs = self.ddp(images)
        # Loss, box decoding and matching stay in fp32 (outputs are cast inside the criterion).
        losses = self.criterion(outputs, targets, gamma=gamma)
        loss = losses["loss_cls"] + losses["loss_box"]
        bad = all_reduce_max((~torch.isfinite(loss.detach())).float().reshape(1))
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(loss.detach())
        if bad.item() > 0:
            terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            if self.cfg.train.skip_nonfinite:
                self.skipped_steps += 1
                log.warning("iteration %d: non-finite loss (%s); step skipped", it, terms)
                self.optimizer.zero_grad(set_to_none=True)
                return values
            raise NonFiniteLossError(f"iteration {it}: non-finite loss ({terms}). The weights were not updated and "
                                     f"the last checkpoint is intact. Lower solver.base_lr, raise "
                                     f"solver.warmup_iters, set solver.clip_grad_norm, or set "
                                     f"train.skip_nonfinite=true to skip such steps.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.solver.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values


def train(cfg: Config, output_dir: Optional[str] = None, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains ``cfg`` into ``output_dir`` (default train.output_dir); see ``check_output_dir`` for
    ``resume`` and ``overwrite``. Returns the final val metrics ({} without a val set)."""
    return Trainer(cfg, output_dir, resume, overwrite).train()
