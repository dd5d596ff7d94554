"""One run over several processes: who am I, how many are we, and the few collective steps
the Trainer needs (data-parallel training with DistributedDataParallel).

`torchrun` (or any launcher setting the same variables) starts one process per rank with
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment; `detect` reads
them and joins the process group (`gloo` on CPU, `nccl` on CUDA). Without them the run is a
single process and every collective is a no-op, so code written against `Platform` runs
unchanged either way.

Conventions: rank 0 ("primary") writes every file; masks are computed on every rank from the
synchronised weights and verified equal by `verify_equal` (a checksum all-reduced as min and
max); each global batch is split across ranks by `shard` (rank r takes positions r::world of
the batch, so the union of the ranks' samples is exactly the single-process batch).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from prunelab.errors import ConfigError

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Platform:
    """The process's place in the run: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (sum, min or max) across ranks; the tensor itself when alone."""
        if self.distributed:
            ops = {"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN,
                   "max": torch.distributed.ReduceOp.MAX}
            torch.distributed.all_reduce(tensor, op=ops[op])
        return tensor

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of sample indices (positions rank::world)."""
        return indices[self.rank :: self.world_size] if self.distributed else indices

    def verify_equal(self, what: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise ConfigError when `tensors` (e.g. masks) differ between ranks."""
        if not self.distributed:
            return
        digest = checksum(tensors)
        lo = torch.tensor([digest], dtype=torch.int64, device=self._collective_device())
        hi = lo.clone()
        self.all_reduce(lo, "min")
        self.all_reduce(hi, "max")
        if int(lo) != int(hi):
            raise ConfigError(f"{what} differ between ranks (checksums {int(lo)} and {int(hi)}): "
                              "every rank must compute them from the same synchronised weights")

    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def shutdown(self) -> None:
        """Leave the process group (end of run)."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def checksum(tensors: Mapping[str, torch.Tensor]) -> int:
    """A 62-bit digest of named tensors' names, shapes, dtypes and bytes (order-independent of
    dict order: names are sorted)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "big") >> 2


def launched() -> bool:
    """True when a launcher (torchrun) started this process as one rank of several."""
    return os.environ.get("WORLD_SIZE") not in (None, "", "1")


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ConfigError(f"launched with WORLD_SIZE set but {name} missing: start the run with "
                          "torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
                          "MASTER_PORT)")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def detect(device: torch.device | str = "cpu", *, timeout_s: float = 120.0) -> Platform:
    """The platform of this process: a single process unless a launcher set WORLD_SIZE > 1, in
    which case the process group is joined (gloo on CPU, nccl on CUDA, one GPU per local rank).
    A broken launcher environment gives one ConfigError line."""
    device = torch.device(device)
    if not launched():
        return Platform(device=device)
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"launched with WORLD_SIZE={world} but {name} is not set: start "
                              "the run with torchrun")
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        from datetime import timedelta

        try:
            torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                                 timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            msg = " ".join(str(exc).split())[:200]
            raise ConfigError(f"cannot join the {backend} process group as rank {rank} of "
                              f"{world}: {msg}") from None
    return Platform(rank, world, local, device, backend)
