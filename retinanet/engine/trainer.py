"""The training loop: iterations, mixed precision, DDP, checkpoints, resume, evaluation, logging."""
from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..build import build_criterion, build_model, categories_of, checkpoint_payload, with_categories
from ..checkpoint import load_checkpoint, load_model_state, save_checkpoint
from ..config import Config
from ..config_loader import dump_config
from ..data.loader import build_dataset, build_train_loader
from ..detector import Detector, resolve_device
from ..model import count_parameters
from ..schedules import gamma_at
from ..fusion import prepare_for_training
from .amp import autocast_dtype
from .distributed import all_reduce_max, barrier, init_distributed, is_main
from .solver import build_lr_scheduler, build_optimizer

log = logging.getLogger("retinanet")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stops before the weights are touched."""


def setup_logging(output_dir: Optional[Path]) -> None:
    """Logs of the ``retinanet`` logger go to stdout and OUTPUT/log.txt (replacing a previous run's)."""
    log.setLevel(logging.INFO)
    for h in [h for h in log.handlers if getattr(h, "_retinanet", False)]:
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output_dir is not None:
        handlers.append(logging.FileHandler(output_dir / "log.txt"))
    for h in handlers:
        h.setFormatter(fmt)
        h._retinanet = True  # type: ignore[attr-defined]
        log.addHandler(h)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [int(v) for v in np_state[1]], "numpy_pos": int(np_state[2]),
            "python": list(random.getstate()[1])}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


class Trainer:
    def __init__(self, cfg: Config, output_dir: Optional[str] = None, resume: bool = False):
        self.output = Path(output_dir or cfg.train.output_dir)
        self.device = resolve_device(cfg.train.device)
        self.rank, self.world, local = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local)
        if is_main():
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "checkpoints").mkdir(exist_ok=True)
        barrier()
        setup_logging(self.output if is_main() else None)
        torch.manual_seed(cfg.train.seed + self.rank)
        np.random.seed(cfg.train.seed + self.rank)
        random.seed(cfg.train.seed + self.rank)

        self.dataset = build_dataset(cfg, "train", train=True)
        self.cfg = cfg = with_categories(cfg, self.dataset.categories, f"the training annotations "
                                                                       f"{cfg.data.train.annotations}")
        self.categories = categories_of(cfg)
        if cfg.solver.ims_per_batch % self.world:
            raise ValueError(f"solver.ims_per_batch ({cfg.solver.ims_per_batch}) must be divisible by the number "
                             f"of processes ({self.world})")
        # channels_last pays on a CPU and with AMP on a GPU (fp32 NHWC convs are not faster there).
        self.channels_last = self.device.type == "cpu" or bool(cfg.train.amp)
        model = prepare_for_training(build_model(cfg), self.channels_last).to(self.device)  # same keys, faster
        if cfg.model.backbone.norm == "syncbn" and self.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[local] if self.device.type == "cuda"
                                                        else None) if self.world > 1 else model)
        self.criterion = build_criterion(cfg).to(self.device)
        self.optimizer = build_optimizer(cfg.solver, model)
        self.scheduler = build_lr_scheduler(cfg.solver, self.optimizer)
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.start_iter = 0
        self.skipped_images = 0
        self.skipped_steps = 0
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
                                  criterion=self.criterion.state_dict(), iteration=iteration, rng=_rng_state())

    def save(self, iteration: int, final: bool = False) -> None:
        if not is_main():
            return
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise NonFiniteLossError(f"iteration {iteration}: weights are not finite; no checkpoint written")
        ckpt_dir = self.output / "checkpoints"
        payload = self._payload(iteration)
        if not final:
            save_checkpoint(ckpt_dir / f"model_{iteration:07d}.pth", payload)
            periodic = sorted(ckpt_dir.glob("model_*.pth"))
            for old in periodic[: max(0, len(periodic) - self.cfg.train.keep_last)]:
                old.unlink()
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
        load_model_state(self.model, ckpt["model"], source=str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.criterion.load_state_dict(ckpt["criterion"])
        _set_rng_state(ckpt["rng"])
        self.start_iter = int(ckpt["iteration"])
        log.info("resumed from %s at iteration %d", path, self.start_iter)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, iteration: int) -> dict:
        val = self.cfg.data.val
        if not (val.images and val.annotations):
            return {}
        from ..evaluation.inference import inference_on_coco
        # The detector runs the model in eval mode and hands it back in train mode.
        detector = Detector(self.model, self.cfg, self.device)
        _, evaluator = inference_on_coco(detector, val.images, val.annotations, batch_size=2, progress=is_main(),
                                         rank=self.rank, world_size=self.world)
        metrics = evaluator.evaluate()
        if is_main() and metrics:
            log.info("iteration %d: AP %.2f AP50 %.2f AP75 %.2f", iteration, metrics["AP"], metrics["AP50"],
                     metrics["AP75"])
            for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                self.writer.add_scalar(f"eval/{k}", metrics[k], iteration)
            self._log_images(detector, iteration, save=iteration == self.cfg.solver.max_iter)
            self._log_jsonl({"iteration": iteration, **{k: v for k, v in metrics.items() if k != "per_category"}})
        return metrics

    def _log_images(self, detector: Detector, iteration: int, save: bool = False) -> None:
        """Draws the first ``train.vis_images`` val images to TensorBoard (and, at the end, to
        OUTPUT/predictions/)."""
        n = self.cfg.train.vis_images
        if n <= 0:
            return
        from PIL import Image

        from ..preprocess import read_image
        from ..visualize import draw_detections
        if not hasattr(self, "_vis_info"):  # the val JSON can be large: read it once per run
            self._vis_info = json.loads(Path(self.cfg.data.val.annotations).read_text())["images"][:n]
        for i, im in enumerate(self._vis_info):
            try:
                image = read_image(Path(self.cfg.data.val.images) / im["file_name"])
            except OSError:
                continue
            det = detector.predict(image, score_thresh=0.3)
            drawn = draw_detections(image, det["boxes"].numpy(), det["names"], det["scores"].numpy(),
                                    det["labels"].numpy())
            self.writer.add_image(f"val/{i}", np.asarray(drawn), iteration, dataformats="HWC")
            if save:
                (self.output / "predictions").mkdir(exist_ok=True)
                Image.fromarray(np.asarray(drawn)).save(self.output / "predictions" / (Path(im["file_name"]).stem + ".jpg"))

    def _log_jsonl(self, record: dict) -> None:
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- training ---------------------------------------------------------------------------
    def train(self) -> dict:
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
            self.skipped_images += batch["skipped"]
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
                self.evaluate(done)
        if bar is not None:
            bar.close()
        self.save(max_iter, final=True)
        metrics = self.evaluate(max_iter)
        if is_main():
            if metrics:
                (self.output / "metrics.json").write_text(json.dumps(metrics, indent=2))
            log.info("done: %d bad images skipped, %d non-finite steps skipped", self.skipped_images,
                     self.skipped_steps)
            self.writer.close()
        return metrics

    def step(self, batch: dict, it: int, gamma: float) -> dict:
        if len(batch["targets"]) == 0:  # every image of this batch was unreadable
            return {"loss": float("nan")}
        images = batch["images"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
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


def train(cfg: Config, output_dir: Optional[str] = None, resume: bool = False) -> dict:
    return Trainer(cfg, output_dir, resume).train()
