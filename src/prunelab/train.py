"""The Trainer: minibatch training with a pruning method hooked in, evaluation, checkpoints,
and the run directory (config.yaml, metrics.jsonl, weights, masks, sparsity.json, results.json).

Determinism: one seed fixes the initialisation (set before the model is built by `run`), the
data split (passed to the loader) and the batch order (`prunelab.data.epoch_order`, a pure
function of (seed, epoch)).

Data is any source (`prunelab.data.DataSource`): an in-memory `Dataset` is served from tensors
moved to the device once (the fast path); a streaming source's batches are moved per step.
Precision `bf16`/`fp16` runs the forward pass and loss under `torch.autocast` (weights, masks,
gradients and optimizer state stay float32); `fp16` adds a GradScaler and needs CUDA.

Several processes (`platform`, from `prunelab.dist.detect` under torchrun): data-parallel
training with DistributedDataParallel. `batch_size` stays the global batch: each of the W ranks
takes positions rank::W of every batch of the single-process order, and its loss is weighted
by its share of the batch, so the averaged gradient is exactly the single-process one (up to
float rounding of the all-reduce). Rank 0 alone evaluates and writes; masks are computed on
every rank from the synchronised weights and checked equal after every epoch. BatchNorm keeps
per-rank batch statistics (as DistributedDataParallel does by default), so BatchNorm networks
match a single process in distribution, not bit for bit; and methods that change the
network's shape during training (`units`, `bernoulli`) are refused under DDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunelab import atomic, runlog
from prunelab import resume as prunelab_resume
from prunelab.config import RunConfig, TrainConfig, save_config
from prunelab.data import Dataset, DataSource, as_source, load_dataset
from prunelab.data.source import Batch, EpochOrder, derive_seed, shard, tensor_batches
from prunelab.dist import Platform, checksum
from prunelab.errors import ConfigError, MaskError
from prunelab.masks import apply_masks, save_masks, sparsity_report
from prunelab.methods import PruningMethod, TrainContext, build_method
from prunelab.models import build_model
from prunelab.runlog import EpochLog
from prunelab.signals import RunInterrupted, StopRequest, signal_name, stop_on_signals


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available) -> torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision ('fp32': none) on a device; fp16 needs CUDA."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device (its loss scaling is for GPUs); "
                          "use --precision bf16 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _eval_batches(x: Any, y: torch.Tensor | None, batch_size: int, split: str
                  ) -> Iterable[Batch]:
    if isinstance(x, torch.Tensor):
        if y is None:
            raise ConfigError("evaluate(model, x, y): labels y are missing")
        return ((x[i : i + batch_size], y[i : i + batch_size])
                for i in range(0, x.shape[0], batch_size))
    return as_source(x).eval_batches(split, batch_size)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor | DataSource,
    y: torch.Tensor | None = None,
    batch_size: int = 2048,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    split: str = "test",
    precision: str = "fp32",
) -> dict[str, float]:
    """Mean loss and accuracy of `model` on tensors (x, y) or on a data source's `split`
    ("train" unaugmented, or "test"), in eval mode, model mode restored after."""
    loss_fn = loss_fn or F.cross_entropy
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cast = autocast(device, precision)
    total_loss, correct, n = 0.0, 0, 0
    for xb, yb in _eval_batches(x, y, batch_size, split):
        xb, yb = xb.to(device), yb.to(device)
        with cast:
            out = model(xb)
            loss = loss_fn(out, yb)
        total_loss += float(loss) * xb.shape[0]
        correct += int((out.argmax(dim=1) == yb).sum())
        n += xb.shape[0]
    model.train(was_training)
    n = max(n, 1)
    return {"loss": total_loss / n, "accuracy": correct / n}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW from the config."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def preload_optimizers() -> None:
    """Construct each optimizer class once, so torch's lazy imports on first use (about 1 s
    on this CPU, measured) do not land in the first of several timed training runs."""
    probe = [torch.zeros(1, requires_grad=True)]
    for cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        cls(probe, lr=0.1)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total`."""
    if cfg.lr_schedule == "constant":
        return 1.0
    frac = step / max(total, 1)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    milestones = cfg.lr_milestones if cfg.lr_schedule == "multistep" else [0.5]
    return cfg.lr_gamma ** sum(frac >= m for m in milestones)


def _rank_local_buffers() -> dict[str, bool]:
    """DDP's option for rank-local BatchNorm statistics (no sync at each forward), under the
    name this torch version uses."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    names = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in names else \
        {"broadcast_buffers": False}


@torch.no_grad()
def _broadcast_state(model: nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank (the process group must exist)."""
    for t in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(t.data, src=0)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _architecture_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return set(before) != set(after) or any(before[k].shape != after[k].shape for k in before)


@dataclass
class TrainResult:
    """What a finished training run returns (also written to results.json)."""

    metrics: list[dict[str, Any]]
    final: dict[str, Any]
    sparsity: dict[str, Any]
    masks: dict[str, torch.Tensor] | None = None
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    checkpoints: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    final_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


class Trainer:
    """Trains `model` on `data` with `method` hooked in.

    Works on any nn.Module classifier (logits out) and any data source: an in-memory
    `Dataset`, a `StreamingSource` (`prunelab.data.stream(train, test)`), or a (train, test)
    pair of torch Datasets/DataLoaders; `loss_fn` defaults to cross-entropy. With `out_dir`,
    writes metrics.jsonl, metrics.csv, checkpoints, weights.pt, masks.pt and sparsity.json
    there as training goes, and a resumable checkpoint (`prunelab.resume`) after every epoch
    and every `config.checkpoint_every` steps; with `resume`, a matching checkpoint found in
    `out_dir` (or `resume_dir`, which every rank of a multi-process run reads) is continued
    from, bit for bit. While it trains with a checkpoint directory, SIGTERM and SIGINT stop
    it at the next step boundary with a checkpoint written (`prunelab.signals.RunInterrupted`).
    `log` receives one line per epoch; `tensorboard` names a TensorBoard log directory.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSource | Any,
        config: TrainConfig | None = None,
        method: PruningMethod | None = None,
        *,
        out_dir: str | Path | None = None,
        progress: bool | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        log: Callable[[str], None] | None = None,
        platform: Platform | None = None,
        resume: bool = False,
        resume_dir: str | Path | None = None,
        fingerprint: dict[str, Any] | None = None,
        handle_signals: bool = True,
        tensorboard: str | Path | None = None,
        resume_hint: str | None = None,
    ):
        self.config = (config or TrainConfig()).validate()
        self.device = resolve_device(self.config.device)
        self.data = as_source(data)
        self.method = method or PruningMethod()
        self.platform = platform or Platform(device=self.device)
        if self.platform.distributed:
            self._check_distributed()
            if self.device.type == "cuda":
                self.device = self.platform.device  # one GPU per local rank
        autocast(self.device, self.config.precision)  # refuses fp16 off CUDA, before any work
        if self.config.precision == "fp16" and not getattr(self.method, "loss_scaling_ok", True):
            raise ConfigError(f"method '{self.method.name}' reads gradients outside the "
                              "optimizer, which fp16 loss scaling would distort; use --precision "
                              "bf16 or fp32")
        if self.config.channels_last:
            self.model = model.to(self.device, memory_format=torch.channels_last)
        else:
            self.model = model.to(self.device)
        primary = self.platform.is_primary
        self.out_dir = Path(out_dir) if out_dir is not None and primary else None
        self.progress = primary and (sys.stderr.isatty() if progress is None else progress)
        self.loss_fn = loss_fn or F.cross_entropy
        self.log = log if primary else None
        self.resume = resume
        # where checkpoints are read (every rank) and written (rank 0, when it has out_dir)
        self.resume_dir = Path(resume_dir) if resume_dir is not None else (
            Path(out_dir) if out_dir is not None else None)
        self.fingerprint = fingerprint
        self.handle_signals = handle_signals
        self.resume_hint = resume_hint
        self.epoch_log = EpochLog(self.out_dir, echo=self.log,
                                  tensorboard=tensorboard if primary else None)
        self.resumed_from: int | None = None  # the step a resumed run continued from
        self._no_checkpoint = False

    def _check_distributed(self) -> None:
        """What data-parallel training cannot do, refused in one line before any work."""
        world, cfg = self.platform.world_size, self.config
        if not getattr(self.method, "ddp_ok", True):
            raise ConfigError(f"method '{self.method.name}' changes the network's shape during "
                              "training, which data-parallel training cannot follow; run it in "
                              "one process")
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the "
                              f"{world} processes (each takes an equal share of a batch)")
        last = self.data.n_train - (self.data.steps_per_epoch(cfg.batch_size) - 1) * \
            cfg.batch_size
        if last < world:
            raise ConfigError(f"the last batch of each epoch has {last} sample(s), fewer than "
                              f"the {world} processes; choose a batch size that leaves at least "
                              f"{world} (n_train {self.data.n_train})")

    def _feed(self) -> Callable[..., Iterator[Batch]]:
        """(epoch, start=0, augment_state=None) -> that epoch's training batches on the device,
        from batch `start` on. An in-memory Dataset is moved to the device once and gathered
        there, its augmentation generator kept in `self._augment_generator` (a checkpoint saves
        its state mid-epoch); a streaming source's batches are moved one by one
        (asynchronously from pinned memory on CUDA)."""
        data, cfg, device = self.data, self.config, self.device
        rank, world = self.platform.rank, self.platform.world_size
        batch_size = cfg.batch_size // world  # this rank's share of each batch
        self._augment_generator: torch.Generator | None = None
        if isinstance(data, Dataset):
            x, y = data.x_train.to(device), data.y_train.to(device)
            order_of = EpochOrder(data.n_train, cfg.seed)

            def in_memory(epoch: int, start: int = 0, augment_state: Any = None
                          ) -> Iterator[Batch]:
                order = shard(order_of(epoch), rank, world).to(device)
                generator = None
                if data.augment is not None:
                    generator = torch.Generator(device=x.device).manual_seed(
                        derive_seed(cfg.seed, epoch, "augment"))
                    if augment_state is not None:
                        generator.set_state(augment_state)
                self._augment_generator = generator
                return tensor_batches(x, y, order[start * batch_size:], batch_size,
                                      data.augment, generator=generator)
            return in_memory
        non_blocking = device.type == "cuda"
        takes_start = "start" in inspect.signature(data.train_batches).parameters

        def streamed(epoch: int, start: int = 0, augment_state: Any = None
                     ) -> Iterator[Batch]:
            if takes_start:
                batches = data.train_batches(epoch, batch_size, cfg.seed, rank=rank,
                                             world=world, start=start)
            else:  # a source that cannot seek: its first `start` batches are drawn and dropped
                batches = itertools.islice(data.train_batches(
                    epoch, batch_size, cfg.seed, rank=rank, world=world), start, None)
            for xb, yb in batches:
                yield xb.to(device, non_blocking=non_blocking), \
                    yb.to(device, non_blocking=non_blocking)
        return streamed

    def _fingerprint(self, initial_state: dict[str, torch.Tensor], total_steps: int
                     ) -> dict[str, Any]:
        """What a checkpoint must match to be continued: the training settings (not
        checkpoint_every), the method and its options, the data, the initial weights (their
        checksum) and the training length; plus the caller's `fingerprint` (a run's config)."""
        train = dataclasses.asdict(self.config)
        train.pop("checkpoint_every", None)
        options = json.dumps(self.method.options(), sort_keys=True, default=str)
        return {"train": train, "method": self.method.name, "options": options,
                "data": json.dumps(self.data.summary(), sort_keys=True, default=str),
                "init": checksum(initial_state), "total_steps": total_steps,
                "world": self.platform.world_size, "extra": self.fingerprint}

    def fit(self) -> TrainResult:
        cfg = self.config
        data = self.data
        model = self.model
        steps_per_epoch = data.steps_per_epoch(cfg.batch_size)
        total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
        epochs = math.ceil(total_steps / steps_per_epoch)
        optimizer = make_optimizer(model, cfg)
        ctx = TrainContext(model, optimizer, steps_per_epoch, total_steps, epochs, self.device,
                           data)
        platform = self.platform
        if platform.distributed:  # every rank starts from rank 0's weights
            _broadcast_state(model)
        initial_state = _snapshot(model)
        fingerprint = self._fingerprint(initial_state, total_steps)
        self.method.attach(ctx)
        ckpt = (prunelab_resume.load_checkpoint(self.resume_dir, fingerprint)
                if self.resume else None)
        if platform.distributed:
            self._agree_on_checkpoint(ckpt)
        if ckpt is not None:
            self._restore(ckpt, ctx)
            model = self.model = ctx.model
            optimizer = ctx.optimizer
        forward_model: nn.Module | None = None  # the DDP wrapper (shape-changing methods refused)
        if platform.distributed:
            from torch.nn.parallel import DistributedDataParallel

            forward_model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_rank_local_buffers())
            if self.method.masks is not None:
                platform.verify_equal("masks", self.method.masks)
        n_train, world = data.n_train, platform.world_size
        feed = self._feed()
        cast = autocast(self.device, cfg.precision)
        scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        if scaler is not None and ckpt is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        channels_last = cfg.channels_last
        checkpoints: dict[str, dict[str, torch.Tensor]] = {"step0": initial_state}
        wanted_steps = set(cfg.checkpoint_steps)
        ckpt_dir = self.out_dir / "checkpoints" if self.out_dir is not None else None
        metrics: list[dict[str, Any]] = []
        step, start_epoch, start_batch = 0, 1, 0
        running_state: tuple[torch.Tensor, int] | None = None
        elapsed_before, warmup_total, resumes = 0.0, 0.0, 0
        if ckpt is not None and ckpt.get("ranks"):  # this rank's own part of the state
            ckpt.update(ckpt["ranks"][platform.rank])
        if ckpt is not None:
            step, metrics = int(ckpt["step"]), list(ckpt["metrics"])
            start_epoch = int(ckpt["epoch"]) + (1 if ckpt["epoch_done"] else 0)
            start_batch = 0 if ckpt["epoch_done"] else int(ckpt["batch"])
            if not ckpt["epoch_done"]:
                running_state = (ckpt["running"].to(self.device), int(ckpt["seen"]))
            elapsed_before, warmup_total = float(ckpt["elapsed"]), float(ckpt["warmup"])
            resumes = int(ckpt.get("resumes", 0)) + 1
            checkpoints.update(self._load_snapshots(ckpt["snapshots"]))
            self.resumed_from = step
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if ckpt is None:  # a fresh start: no snapshot of an earlier attempt may stay
                for stale in self.out_dir.glob("checkpoints/*.pt"):
                    stale.unlink()
            else:
                runlog.stderr_line(f"prunelab: resuming from step {step} of {total_steps} "
                                   f"(epoch {start_epoch}) in {self.out_dir}")
            atomic.save_torch(self.out_dir / "init.pt", initial_state)
            atomic.write_text(self.out_dir / "metrics.jsonl",
                              "".join(json.dumps(r) + "\n" for r in metrics))
            self.epoch_log.rows(metrics)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, initial=step, desc=self.method.name, unit="step",
                       leave=False)
        checkpointing = self.resume_dir is not None  # every rank takes part in stopping
        writes = checkpointing and platform.is_primary and self.out_dir is not None
        signals = stop_on_signals() if checkpointing and self.handle_signals else \
            contextlib.nullcontext(StopRequest())
        every = cfg.checkpoint_every
        timer = _WarmupTimer(self.device)

        def save(epoch: int, batch: int, epoch_done: bool, running: torch.Tensor,
                 seen: int) -> None:
            ranks = None
            if platform.distributed:  # each rank's own accumulators and generators
                ranks = [None] * world
                torch.distributed.all_gather_object(ranks, self._rank_state(running, seen))
            if not writes:
                return
            self._save_checkpoint(
                fingerprint=fingerprint, ctx=ctx, scaler=scaler, step=step, epoch=epoch,
                batch=batch, epoch_done=epoch_done, metrics=metrics, running=running,
                seen=seen, snapshots=[k for k in checkpoints if k != "step0"],
                elapsed=elapsed_before + timer.elapsed(), warmup=warmup_total + timer.warmup,
                resumes=resumes, initial_state=initial_state, ranks=ranks)

        def stop_signal(request: StopRequest) -> int | None:
            signum = request.signum
            if platform.distributed:  # every rank stops at the same step
                flag = torch.tensor([signum or 0], dtype=torch.int64,
                                    device=platform._collective_device())
                platform.all_reduce(flag, "max")
                signum = int(flag) or None
            return signum

        def interrupt(signum: int, epoch: int, batch: int) -> None:
            platform.barrier()  # rank 0's checkpoint is on disk before any rank leaves
            if bar is not None:
                bar.close()
            where = (f"the end of epoch {epoch} (step {step} of {total_steps})"
                     if batch >= steps_per_epoch else
                     f"step {step} of {total_steps} (epoch {epoch}, batch {batch})")
            raise RunInterrupted(signum, f"stopped by {signal_name(signum)} at {where}; "
                                 f"checkpoint saved in {self.resume_dir}; "
                                 + (self.resume_hint or "start the same run again on the same "
                                    "output to continue"))

        if ckpt is not None:
            # every draw made while setting up (a method's initial masks, ...) is behind us
            prunelab_resume.set_rng_state(ckpt["rng"])
        model.train()
        with signals as request:
            if platform.distributed and ckpt is not None:
                platform.barrier()  # every rank has read the checkpoint before rank 0 rewrites
            timer.start()
            # The method may replace ctx.model / ctx.optimizer (e.g. after physically removing
            # units), so both are read back from the context after every hook.
            for epoch in range(start_epoch, epochs + 1):
                if epoch == start_epoch and running_state is not None:
                    running, seen = running_state
                    b0 = start_batch
                    batches = feed(epoch, b0, ckpt.get("augment_rng"))
                else:
                    running, seen, b0 = torch.zeros((), device=self.device), 0, 0
                    batches = feed(epoch)
                for b, (xb, yb) in enumerate(batches, start=b0):
                    if channels_last and xb.dim() == 4:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.lr * lr_factor(cfg, step, total_steps)
                    with cast:
                        # the method may have replaced the model (units removed): read it afresh
                        fwd = forward_model if platform.distributed else model
                        loss = self.method.batch_loss(fwd, xb, yb, self.loss_fn)
                    scaled = loss
                    if world > 1:  # this rank's share of the batch's mean (DDP averages)
                        in_batch = min(cfg.batch_size, n_train - b * cfg.batch_size)
                        scaled = loss * (xb.shape[0] * world / in_batch)
                    penalty = self.method.penalty(model)
                    total = scaled if penalty is None else scaled + penalty
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is None:
                        total.backward()
                        optimizer.step()
                    else:  # fp16: scaled loss; step skipped (weights untouched) on inf/nan
                        scaler.scale(total).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    step += 1
                    self.method.after_step(step)
                    model = self.model = ctx.model
                    optimizer = ctx.optimizer
                    running = running + loss.detach() * xb.shape[0]  # no per-step device sync
                    seen += xb.shape[0]
                    timer.step_done()
                    if step in wanted_steps:
                        self._take_snapshot(checkpoints, f"step{step}", model, ckpt_dir)
                    if bar is not None:
                        bar.update(1)
                    if step >= total_steps:
                        break
                    if checkpointing and b + 1 < steps_per_epoch:  # (else: the epoch's end)
                        signum = stop_signal(request)
                        if signum or (every and step % every == 0):
                            save(epoch, b + 1, False, running, seen)
                        if signum:
                            interrupt(signum, epoch, b + 1)
                self.method.after_epoch(epoch)
                model = self.model = ctx.model
                optimizer = ctx.optimizer
                if platform.distributed:
                    totals = torch.stack([running.double().cpu(),
                                          torch.tensor(float(seen), dtype=torch.float64)])
                    platform.all_reduce(totals)
                    running, seen = totals[0], int(totals[1])
                    if self.method.masks is not None:
                        platform.verify_equal("masks", self.method.masks)
                epoch_loss = float(running) / max(seen, 1)
                if not math.isfinite(epoch_loss):
                    raise ConfigError(f"training diverged (loss {epoch_loss}) in epoch {epoch}; "
                                      "lower the learning rate")
                seconds = elapsed_before + timer.elapsed()
                row = self._epoch_metrics(epoch, step, epoch_loss, seconds)
                metrics.append(row)
                if cfg.checkpoint_epochs:
                    self._take_snapshot(checkpoints, f"epoch{epoch}", model, ckpt_dir)
                if self.out_dir is not None:
                    with open(self.out_dir / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                if bar is not None:
                    bar.set_postfix(test_acc=f"{row['test_accuracy']:.4f}")
                self.epoch_log.epoch(row, metrics, epochs, total_steps)
                if checkpointing:
                    signum = stop_signal(request)
                    save(epoch, steps_per_epoch, True, running, seen)
                    if signum:
                        interrupt(signum, epoch, steps_per_epoch)
                if step >= total_steps:
                    break
        if bar is not None:
            bar.close()
        self.epoch_log.close()
        masks = self.method.masks
        if masks is not None:
            apply_masks(model, masks)
        report = sparsity_report(model, masks, data.input_shape)
        final = dict(metrics[-1])
        final["train_seconds"] = elapsed_before + timer.elapsed()
        final["warmup_seconds"] = warmup_total + timer.warmup
        final["steps"] = step
        if resumes:
            final["resumes"] = resumes
        result = TrainResult(metrics, final, report, masks, initial_state, checkpoints,
                             _snapshot(model))
        if self.out_dir is not None:
            self._write_outputs(result)
        return result

    # ------------------------------------------------------------------ checkpoints

    def _take_snapshot(self, checkpoints: dict[str, dict[str, torch.Tensor]], name: str,
                       model: nn.Module, ckpt_dir: Path | None) -> None:
        """Keep the weights at a named point (epochK, stepK) in memory and, with an output
        directory, on disk at once (a resumed run reads them back)."""
        checkpoints[name] = _snapshot(model)
        if ckpt_dir is not None:
            atomic.save_torch(ckpt_dir / f"{name}.pt", checkpoints[name])

    def _load_snapshots(self, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        if self.resume_dir is None:
            return out
        for name in names:
            path = self.resume_dir / "checkpoints" / f"{name}.pt"
            if path.is_file():
                out[name] = torch.load(path, map_location="cpu", weights_only=True)
        return out

    def _save_checkpoint(self, *, fingerprint: dict[str, Any], ctx: TrainContext,
                         scaler: Any, step: int, epoch: int, batch: int, epoch_done: bool,
                         metrics: list[dict[str, Any]], running: torch.Tensor, seen: int,
                         snapshots: list[str], elapsed: float, warmup: float, resumes: int,
                         initial_state: dict[str, torch.Tensor],
                         ranks: list[dict[str, Any]] | None = None) -> None:
        """Write everything the next step depends on (see `prunelab.resume`); `ranks`: every
        rank's `_rank_state` in a multi-process run. A network a method reshaped into one
        `prunelab.shrink.architecture` cannot describe gets no checkpoint (said once)."""
        if self._no_checkpoint:
            return
        model = ctx.model
        state = _snapshot(model)
        arch = None
        try:
            if _architecture_changed(initial_state, state):
                from prunelab.shrink import architecture

                arch = architecture(model)
            method_state = self.method.state_dict()
        except MaskError as exc:
            self._no_checkpoint = True
            runlog.stderr_line(f"prunelab: no resumable checkpoint from step {step} on: {exc}")
            return
        generator = self._augment_generator
        prunelab_resume.save_checkpoint(self.resume_dir, {
            "fingerprint": fingerprint, "step": step, "epoch": epoch, "batch": batch,
            "epoch_done": epoch_done, "model": state, "architecture": arch,
            "optimizer": ctx.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "method": method_state, "rng": prunelab_resume.rng_state(),
            "augment_rng": generator.get_state() if generator is not None else None,
            "metrics": metrics, "snapshots": snapshots,
            "running": running.detach().to("cpu").clone(), "seen": seen,
            "elapsed": elapsed, "warmup": warmup, "resumes": resumes, "ranks": ranks,
        })

    def _rank_state(self, running: torch.Tensor, seen: int) -> dict[str, Any]:
        """What differs between the ranks of a multi-process run: each one's share of the
        epoch's loss, its generators (saved by rank 0 for all, restored by each its own)."""
        generator = self._augment_generator
        return {"running": running.detach().to("cpu").clone(), "seen": seen,
                "rng": prunelab_resume.rng_state(),
                "augment_rng": generator.get_state() if generator is not None else None}

    def _agree_on_checkpoint(self, ckpt: dict[str, Any] | None) -> None:
        """Every rank must continue from the same step (or all start afresh)."""
        step = -1 if ckpt is None else int(ckpt["step"])
        dev = self.platform._collective_device()
        lo = torch.tensor([step], dtype=torch.int64, device=dev)
        hi = lo.clone()
        self.platform.all_reduce(lo, "min")
        self.platform.all_reduce(hi, "max")
        if int(lo) != int(hi):
            raise ConfigError(f"the processes found different checkpoints to resume from "
                              f"(steps {int(lo)} and {int(hi)}) in {self.resume_dir}")

    def _restore(self, ckpt: dict[str, Any], ctx: TrainContext) -> None:
        """Model (rebuilt at its saved architecture if a method changed its shape), method
        state, optimizer: in that order, so the method's own bookkeeping (clearing optimizer
        state at pruned entries) cannot touch the optimizer state being restored."""
        if ckpt.get("architecture") is not None:
            from prunelab.shrink import from_architecture

            model = from_architecture(ckpt["architecture"]).to(self.device)
            if self.config.channels_last:
                model = model.to(memory_format=torch.channels_last)
            ctx.model = model
            ctx.optimizer = make_optimizer(model, self.config)
        ctx.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        ctx.optimizer.load_state_dict(ckpt["optimizer"])

    def _epoch_metrics(self, epoch: int, step: int, train_loss: float, seconds: float) -> dict:
        row: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": train_loss}
        cfg = self.config
        if not self.platform.is_primary:  # rank 0 evaluates and writes
            row["seconds"] = seconds
            return row
        if cfg.eval_train:
            ev = evaluate(self.model, self.data, None, cfg.eval_batch_size, self.loss_fn,
                          split="train", precision=cfg.precision)
            row["train_eval_loss"], row["train_accuracy"] = ev["loss"], ev["accuracy"]
        ev = evaluate(self.model, self.data, None, cfg.eval_batch_size, self.loss_fn,
                      split="test", precision=cfg.precision)
        row["test_loss"], row["test_accuracy"] = ev["loss"], ev["accuracy"]
        row.update(self.method.metrics())
        row["seconds"] = seconds
        return row

    def _write_outputs(self, result: TrainResult) -> None:
        out = self.out_dir
        assert out is not None
        ckpt_dir = out / "checkpoints"
        ckpt_dir.mkdir(exist_ok=True)
        for name, state in result.checkpoints.items():  # (written when taken; not twice)
            if name != "step0" and not (ckpt_dir / f"{name}.pt").is_file():
                atomic.save_torch(ckpt_dir / f"{name}.pt", state)
        atomic.save_torch(out / "weights.pt", result.final_state)
        if _architecture_changed(result.initial_state, result.final_state):
            # A method removed units physically: weights.pt no longer fits the registry model,
            # so the run also carries the shrunk model with its architecture.
            from prunelab.shrink import save_shrunk

            save_shrunk(out / "shrunk.pt", self.model)
        if result.masks is not None:
            save_masks(out / "masks.pt", result.masks)
        atomic.save_torch(out / "method_state.pt", self.method.state_dict())
        self.method.write_outputs(out)
        atomic.write_json(out / "sparsity.json", result.sparsity)
        prunelab_resume.remove_checkpoint(out)  # finished: nothing left to resume


class _WarmupTimer:
    """Training time without the first step's warm-up (lazy imports, allocator and kernel
    set-up: 2.6 s of a first run's 2.7 s on this CPU, 0.03 s on a rerun). The warm-up is the
    first step's time beyond the second's, measured with the device synchronised over those
    two steps only (no sync, no numeric change afterwards)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.warmup = 0.0
        self._t0 = self._last = 0.0
        self._first: float | None = None
        self._steps = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._t0 = self._last = time.perf_counter()

    def step_done(self) -> None:
        if self._steps >= 2:
            return
        self._sync()
        now = time.perf_counter()
        took, self._last = now - self._last, now
        self._steps += 1
        if self._steps == 1:
            self._first = took
        else:
            self.warmup = max(0.0, self._first - took)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0 - self.warmup


# ----------------------------------------------------------------------------- runs


def init_seed(cfg: RunConfig) -> int:
    """The seed of the weight initialisation (defaults to the run's seed)."""
    return cfg.train.seed if cfg.train.init_seed is None else cfg.train.init_seed


def load_data(cfg: RunConfig) -> DataSource:
    """The data source of a run config (its seed fixes the split)."""
    return load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.train.seed,
                        **cfg.data_options)


def prepare(cfg: RunConfig, data: DataSource | None = None,
            method: PruningMethod | None = None,
            architecture: list[dict[str, Any]] | None = None
            ) -> tuple[DataSource, nn.Module, PruningMethod]:
    """Load the data and build the method (unless given) and the model (seeded init) for a
    run config; `architecture` (`prunelab.shrink.architecture`) builds that chain in place of
    the config's model."""
    cfg.train.validate()
    if data is None:
        data = load_data(cfg)
    method = method or build_method(cfg.method, **cfg.method_options)
    torch.manual_seed(init_seed(cfg))
    if architecture is not None:
        from prunelab.shrink import from_architecture

        return data, from_architecture(architecture), method
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    return data, model, method


def run(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool | None = None,
    data: DataSource | None = None,
    method: PruningMethod | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
    extra_results: dict[str, Any] | None = None,
    architecture: list[dict[str, Any]] | None = None,
    platform: Platform | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    tensorboard: str | Path | None = None,
    resume_hint: str | None = None,
) -> TrainResult:
    """Train one run config end to end. With `out_dir`, everything is written to its staging
    directory (`prunelab.atomic.stage_path`), renamed into place only on success, ending with
    results.json; a resumable checkpoint is kept there while it trains, so a run killed or
    stopped by a signal continues from it when started again on the same output (`resume`,
    the default; only a checkpoint of the same config, data and initial weights is trusted).
    `architecture` (`prunelab.shrink.architecture` of a shrunk network) replaces the config's
    model by that chain, freshly initialised with the run's init seed; the run then also saves
    shrunk.pt. `platform` (`prunelab.dist.detect()` under torchrun): data-parallel over its
    processes, rank 0 writing, every rank reading the checkpoint. `log` gets one line per
    epoch; `tensorboard` names a TensorBoard log directory; `resume_hint` ends the line of a
    run stopped by a signal (how to continue it)."""
    data, model, method = prepare(cfg, data, method, architecture)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    options = dict(progress=progress, platform=platform, log=log, tensorboard=tensorboard)
    if out_dir is None:
        return Trainer(model, data, cfg.train, method, **options).fit()
    key = {"config": cfg.config_hash()}
    if platform is not None and not platform.is_primary:
        platform.barrier()  # rank 0 has claimed the stage and checked what it holds
        return Trainer(model, data, cfg.train, method, resume=resume, fingerprint=key,
                       resume_dir=atomic.stage_path(out_dir), **options).fit()
    with atomic.staged_directory(out_dir, resumable=True) as stage:
        _check_stage(stage, cfg, resume)
        save_config(stage / "config.yaml", cfg)
        if platform is not None:
            platform.barrier()
        trainer = Trainer(model, data, cfg.train, method, out_dir=stage, resume=resume,
                          fingerprint=key, resume_hint=resume_hint, **options)
        result = trainer.fit()
        if architecture is not None and not (stage / "shrunk.pt").exists():
            # weights.pt fits this chain, not the config's model: load_run reads shrunk.pt
            from prunelab.shrink import save_shrunk

            save_shrunk(stage / "shrunk.pt", trainer.model)
        atomic.write_json(stage / "results.json", {
            "config": cfg.to_dict(),
            "run_name": cfg.run_name(),
            "dataset": data.summary(),
            "final": result.final,
            "sparsity": result.sparsity["global"],
            **(extra_results or {}),
        })
    return result


def _check_stage(stage: Path, cfg: RunConfig, resume: bool) -> None:
    """Keep what an interrupted run of this config left in its stage; anything else there
    (another config's state, a run killed before its first checkpoint, `resume=False`) is
    cleared so no stale file ends up in the finished run."""
    recorded = stage / "config.yaml"
    if not recorded.is_file() and not any(p.name != atomic.OWNER_FILE for p in stage.iterdir()):
        return
    same = False
    if resume and recorded.is_file():
        try:
            from prunelab.config import load_config

            same = load_config(recorded).config_hash() == cfg.config_hash()
        except Exception:  # unreadable: not something to continue from
            same = False
    if same and prunelab_resume.checkpoint_path(stage).is_file():
        return
    if recorded.is_file() and not same and resume:
        runlog.stderr_line(f"prunelab: {stage} holds another run's state (a different "
                           "config); starting afresh")
    atomic.clear_stage(stage)
