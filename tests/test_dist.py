"""The multi-process platform: launcher detection, broken environments, batch sharding and the
all-reduced equality check of masks (2 gloo processes on the CPU)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from prunelab import dist
from prunelab.errors import ConfigError


def test_checksum_sees_values_names_and_shapes():
    a = {"w": torch.tensor([True, False, True]), "v": torch.ones(2, 2)}
    assert dist.checksum(a) == dist.checksum(dict(reversed(list(a.items()))))
    assert dist.checksum(a) != dist.checksum({**a, "w": torch.tensor([True, True, True])})
    assert dist.checksum(a) != dist.checksum({"w2": a["w"], "v": a["v"]})
    assert dist.checksum(a) != dist.checksum({**a, "v": torch.ones(4)})
    assert 0 <= dist.checksum(a) < 2**62


def test_single_process_without_a_launcher(monkeypatch):
    for name in dist.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    p = dist.detect("cpu")
    assert not p.distributed and p.is_primary
    idx = torch.arange(10)
    assert torch.equal(p.shard(idx), idx)
    p.verify_equal("masks", {"w": torch.ones(3, dtype=torch.bool)})  # no-op


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK"),
    ({"WORLD_SIZE": "2", "RANK": "a", "LOCAL_RANK": "0"}, "not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
      "MASTER_PORT": "1"}, "outside"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR"),
])
def test_broken_launcher_environment_is_one_line(monkeypatch, env, message):
    for name in dist.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        dist.detect("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    p = dist.detect("cpu")
    try:
        shard = p.shard(torch.arange(7)).tolist()
        total = p.all_reduce(torch.tensor([float(rank + 1)]))
        p.verify_equal("masks", {"w": torch.tensor([True, False])})
        try:
            p.verify_equal("masks", {"w": torch.tensor([rank == 0, True])})
            differ = "not detected"
        except ConfigError as exc:
            differ = str(exc)
        out[rank] = (shard, float(total), differ)
    finally:
        p.shutdown()


def test_two_gloo_processes_shard_reduce_and_verify():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        result = dict(out)
    assert result[0][0] == [0, 2, 4, 6] and result[1][0] == [1, 3, 5]
    assert result[0][1] == result[1][1] == 3.0
    assert all("differ between ranks" in result[r][2] for r in (0, 1))
