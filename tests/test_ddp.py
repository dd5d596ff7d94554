"""Data-parallel training over several processes (DistributedDataParallel, gloo on the CPU):
two processes follow the single-process trajectory with the same global batch, masks are equal
on every rank, rank 0 alone writes, and what DDP cannot do is refused in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from prunelab.config import TrainConfig
from prunelab.data import load_dataset, stream
from prunelab.dist import Platform
from prunelab.errors import ConfigError
from prunelab.methods import build_method
from prunelab.models import build_model
from prunelab.train import Trainer

COMMON = ["train", "--dataset", "xor", "--data-option", "n_train=200", "--data-option",
          "n_test=100", "--model", "mlp", "--model-option", "widths=[16,8]", "--method", "gmp",
          "--sparsity", "0.8", "-o", "begin=5", "-o", "end=30", "-o", "frequency=5",
          "--steps", "50", "--batch-size", "20", "--lr", "0.05", "--quiet"]


def test_torchrun_two_processes_match_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "prunelab.cli", *COMMON, "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "prunelab.cli", *COMMON, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr
    assert "2 processes, gloo" in two.stdout
    assert two.stdout.count("wrote") == 1  # rank 0 alone prints and writes
    a = torch.load(tmp_path / "one" / "weights.pt")
    b = torch.load(tmp_path / "two" / "weights.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    ma, mb = (torch.load(tmp_path / d / "masks.pt") for d in ("one", "two"))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    losses = [[json.loads(line)["train_loss"] for line in open(tmp_path / d / "metrics.jsonl")]
              for d in ("one", "two")]
    assert len(losses[0]) == len(losses[1]) == 5
    assert max(abs(x - y) for x, y in zip(*losses)) <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no stray folders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    return load_dataset("xor", n_irrelevant=3, n_train=90, n_test=40, seed=1)


def _cfg():
    return TrainConfig(epochs=3, batch_size=16, lr=0.1, eval_train=False, seed=3)


def _fit(platform=None, streamed=False):
    data = _data()
    if streamed:  # the same tensors served by worker-less loaders
        data = stream(torch.utils.data.TensorDataset(data.x_train, data.y_train),
                      torch.utils.data.TensorDataset(data.x_test, data.y_test))
    torch.manual_seed(0)
    model = build_model("mlp", (5,), 2, widths=[12])
    return Trainer(model, data, _cfg(), build_method("magnitude", sparsity=0.5, at_epoch=1),
                   progress=False, platform=platform).fit()


def _worker(rank: int, port: int, out) -> None:
    from prunelab import dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    platform = dist.detect("cpu")
    try:
        result = _fit(platform, streamed=True)
        out[rank] = ({k: v.clone() for k, v in result.final_state.items()},
                     [r["train_loss"] for r in result.metrics],
                     "test_accuracy" in result.final)
    finally:
        platform.shutdown()


def test_streamed_source_sharded_over_two_ranks_matches_one_process():
    """90 samples in batches of 16: the last batch (10) splits 5/5, weighted by its share."""
    single = _fit()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        got = dict(out)
    for rank in (0, 1):
        state, losses, evaluated = got[rank]
        for k, v in single.final_state.items():
            torch.testing.assert_close(state[k], v, atol=1e-5, rtol=1e-5)
        assert losses == pytest.approx([r["train_loss"] for r in single.metrics], abs=1e-6)
        assert evaluated == (rank == 0)  # rank 0 alone evaluates


def test_what_ddp_cannot_do_is_refused_in_one_line():
    two = Platform(rank=0, world_size=2)
    data = _data()
    model = build_model("mlp", (5,), 2, widths=[4])
    with pytest.raises(ConfigError, match="multiple of the 2 processes"):
        Trainer(model, data, TrainConfig(batch_size=15), platform=two)
    odd = load_dataset("xor", n_irrelevant=3, n_train=91, n_test=40, seed=1)
    with pytest.raises(ConfigError, match="last batch of each epoch has 1 sample"):
        Trainer(model, odd, TrainConfig(batch_size=18), platform=two)  # 91 = 5 * 18 + 1
    with pytest.raises(ConfigError, match="changes the network's shape"):
        Trainer(model, data, TrainConfig(batch_size=16), build_method("bernoulli"), platform=two)
