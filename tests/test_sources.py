"""Data sources: the epoch order, the streaming source, and that the Trainer, evaluation,
scores, paths and Hessians give the same numbers from a stream as from memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prunelab.config import RunConfig, TrainConfig
from prunelab.data import (
    as_source,
    batches,
    epoch_order,
    load_dataset,
    sample,
    shard,
    split_tensors,
    stream,
)
from prunelab.errors import ConfigError, DataError
from prunelab.landscape.hessian import HessianOperator
from prunelab.landscape.paths import interpolate
from prunelab.methods import build_method
from prunelab.scores import parameter_scores
from prunelab.train import Trainer, evaluate


def _images(n_train=96, n_test=40, seed=0):
    """A small 1x8x8 image problem in memory (class = brightest quadrant)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, 1, 8, 8, generator=g)
    q = torch.stack([x[:, 0, :4, :4].mean((1, 2)), x[:, 0, :4, 4:].mean((1, 2)),
                     x[:, 0, 4:, :4].mean((1, 2))], 1)
    y = q.argmax(1)
    data = load_dataset("xor", n_irrelevant=0, n_train=8, n_test=8)  # metadata template
    return dataclasses.replace(data, name="quadrants", x_train=x[:n_train], y_train=y[:n_train],
                               x_test=x[n_train:], y_test=y[n_train:], num_classes=3,
                               feature_names=None, relevant_features=None, class_names=None,
                               meta={})


def _net(seed=0):
    torch.manual_seed(seed)
    # dropout draws from the global RNG: a stream must leave it as the in-memory path does
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 12),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))


def _streamed(data, **options):
    return stream(TensorDataset(data.x_train, data.y_train),
                  TensorDataset(data.x_test, data.y_test), **options)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch_and_shards_partition_batches():
    g = torch.Generator().manual_seed(5)
    sequential = [torch.randperm(50, generator=g) for _ in range(3)]  # the Trainer's old order
    assert torch.equal(epoch_order(50, 5, 3), sequential[2])  # asked first, out of sequence
    for e in (1, 2, 3, 2):
        assert torch.equal(epoch_order(50, 5, e), sequential[e - 1])
    assert not torch.equal(epoch_order(50, 6, 1), sequential[0])
    order, world, b = epoch_order(48, 1, 1), 3, 4
    shards = [shard(order, r, world) for r in range(world)]
    for k in range(48 // (b * world)):  # batch k of every rank = batch k of one process
        union = torch.cat([s[k * b:(k + 1) * b] for s in shards])
        assert sorted(union.tolist()) == sorted(order[k * b * world:(k + 1) * b * world].tolist())
    with pytest.raises(ConfigError, match="rank"):
        shard(order, 3, 3)


def test_stream_serves_the_in_memory_batches_in_the_same_order():
    data = _images()
    src = _streamed(data)
    assert (src.n_train, src.n_test, src.input_shape, src.num_classes) == (96, 40, (1, 8, 8), 3)
    for epoch in (1, 2):
        mem = list(data.train_batches(epoch, 32, seed=3))
        got = list(src.train_batches(epoch, 32, seed=3))
        assert len(mem) == len(got) == 3
        for (xa, ya), (xb, yb) in zip(mem, got):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ev = list(src.eval_batches("test", 16))
    assert torch.equal(torch.cat([b[0] for b in ev]), data.x_test)
    xs, ys = sample(src, 10, seed=4)
    sub = data.subset_train(10, seed=4)
    assert torch.equal(xs, sub.x_train) and torch.equal(ys, sub.y_train)
    assert torch.equal(split_tensors(src, "test")[0], data.x_test)
    assert sum(b[0].shape[0] for b in batches(src, 50, batch_size=16)) == 50


@pytest.mark.parametrize("method,options", [
    ("dense", {}),
    ("gmp", {"sparsity": 0.7, "frequency": 2}),
    ("units", {"fraction": 0.25, "score": "oracle", "score_samples": 32, "start_epoch": 1,
               "rounds": 2}),
])
def test_trainer_gives_identical_runs_from_memory_and_from_a_stream(method, options):
    data = _images()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=11)
    runs = []
    for d in (data, _streamed(data), (TensorDataset(data.x_train, data.y_train),
                                      TensorDataset(data.x_test, data.y_test))):
        res = Trainer(_net(), d, cfg, build_method(method, **options), progress=False).fit()
        runs.append(res)
    ref = runs[0]
    for other in runs[1:]:
        assert [m["train_loss"] for m in other.metrics] == [m["train_loss"] for m in ref.metrics]
        assert [m["test_loss"] for m in other.metrics] == [m["test_loss"] for m in ref.metrics]
        for k, v in ref.final_state.items():
            assert torch.equal(v, other.final_state[k]), k
    if method != "dense":
        assert ref.sparsity["global"]["weight_sparsity"] > 0.1


def test_evaluate_scores_paths_and_hessian_accept_a_source():
    data = _images()
    src = _streamed(data)
    model = _net().eval()
    for split, (x, y) in (("train", (data.x_train, data.y_train)),
                          ("test", (data.x_test, data.y_test))):
        assert evaluate(model, src, split=split, batch_size=32) == evaluate(model, x, y, 32)
    a = parameter_scores(model, src, "taylor1")
    b = parameter_scores(model, (data.x_train, data.y_train), "taylor1")
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    other = {k: v + 0.1 for k, v in model.state_dict().items()}
    p_mem = interpolate(model.state_dict(), other, data, model=model, points=5)
    p_src = interpolate(model.state_dict(), other, src, model=model, points=5)
    assert p_mem.metrics == p_src.metrics
    h_mem = HessianOperator(model, data.x_train, data.y_train)
    h_src = HessianOperator(model, src, None)
    assert h_mem.loss() == h_src.loss()


def test_split_tensors_refuses_to_fill_the_memory_unless_bounded():
    src = _streamed(_images())
    with pytest.raises(ConfigError, match="too large to hold in memory.*max_samples"):
        split_tensors(src, "train", max_bytes=1000)
    x, _ = split_tensors(src, "train", max_samples=3, max_bytes=1000)
    assert x.shape[0] == 3


class _Noisy(Dataset):
    """Images plus torch-RNG noise, as a random augmentation would add."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + torch.rand(self.x[i].shape), self.y[i]


def test_augmentation_is_a_function_of_seed_epoch_and_sample_whatever_the_workers():
    data = _images(n_train=24, n_test=8)
    runs = {}
    for workers in (0, 2):
        src = stream(_Noisy(data.x_train, data.y_train), TensorDataset(data.x_test, data.y_test),
                     workers=workers, train_eval=TensorDataset(data.x_train, data.y_train))
        state = torch.get_rng_state()
        runs[workers] = [torch.cat([b[0] for b in src.train_batches(e, 5, seed=2)])
                         for e in (1, 2)]
        assert torch.equal(state, torch.get_rng_state())  # the process RNG is left alone
        # evaluating on the training split reads train_eval, never the augmented set
        assert torch.equal(torch.cat([b[0] for b in src.eval_batches("train", 5)]),
                           data.x_train)
        src.close()
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    order1, order2 = epoch_order(24, 2, 1), epoch_order(24, 2, 2)
    noise1 = runs[0][0] - data.x_train[order1]
    noise2 = runs[0][1] - data.x_train[order2]
    assert not torch.allclose(noise1, noise2)  # another epoch, other draws
    # the same sample in a batch of a different size gets the same draw
    again = torch.cat([b[0] for b in src.train_batches(1, 7, seed=2)])
    assert torch.equal(again, runs[0][0])


class _NoisyBatched(_Noisy):
    """Batched fetch (`__getitems__`) with augmentation drawn once per batch."""

    def __getitems__(self, indices):
        t = torch.as_tensor(indices)
        return list(zip((self.x[t] + torch.rand(self.x[t].shape)).unbind(0), self.y[t]))


@pytest.mark.parametrize("cls", [_Noisy, _NoisyBatched])
def test_transfers_of_several_batches_give_the_same_batches_as_one_at_a_time(cls):
    data = _images(n_train=50, n_test=23)
    served = {}
    for name, options in (("in-process", {"workers": 0}),
                          ("one per transfer", {"workers": 2, "transfer_bytes": 0}),
                          ("grouped", {"workers": 2})):
        src = stream(cls(data.x_train, data.y_train), TensorDataset(data.x_test, data.y_test),
                     num_classes=3, **options)
        # 50 samples in batches of 6: eight full and a last one of 2, from batch 3 on too
        served[name] = ([b for e in (1, 2) for b in src.train_batches(e, 6, seed=4)]
                        + list(src.train_batches(1, 6, seed=4, start=3))
                        + list(src.eval_batches("test", 5)))
        if name == "grouped":  # 256 bytes a sample: eight batches of 6 in one transfer
            loader, sampler = src._loaders["fit", 6]
            assert sampler.group == 8 and len(sampler.batches) == 1
            assert [len(b) for b in sampler.batches] == [50 - 18]
        src.close()
    ref = served["in-process"]
    assert [len(b[0]) for b in ref[:9]] == [6] * 8 + [2]
    for name in ("one per transfer", "grouped"):
        assert len(served[name]) == len(ref)
        for (x, y), (rx, ry) in zip(served[name], ref):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_a_transfer_splits_back_into_its_collated_batches():
    from collections import namedtuple

    from torch.utils.data._utils.collate import default_collate

    from prunelab.data.stream import split_batches

    Pair = namedtuple("Pair", "x y")
    samples = [Pair(torch.full((2,), float(i)), {"label": i, "w": torch.tensor([i])})
               for i in range(7)]
    sizes = [3, 3, 1]
    parts = split_batches(default_collate(samples), sizes)
    at = 0
    for part, size in zip(parts, sizes):
        want = default_collate(samples[at : at + size])
        assert type(part) is Pair and torch.equal(part.x, want.x)
        assert torch.equal(part.y["label"], want.y["label"])
        assert torch.equal(part.y["w"], want.y["w"])
        at += size
    with pytest.raises(TypeError, match="cannot split"):
        split_batches("text", sizes)


class _Broken(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            raise DataError("cannot read image /data/x/3.png: truncated")
        return torch.zeros(2), 0


def test_a_data_error_in_a_worker_comes_back_as_one_line():
    src = stream(_Broken(), _Broken(), workers=1, num_classes=2, persistent_workers=False)
    with pytest.raises(DataError) as exc:
        list(src.train_batches(1, 4, seed=0))
    assert str(exc.value) == "cannot read image /data/x/3.png: truncated"


def test_a_dataloader_is_used_as_given_and_its_sampler_told_the_epoch():
    data = _images()

    class Sampler(torch.utils.data.Sampler):
        epochs: list[int] = []

        def __init__(self, n):
            self.n = n

        def set_epoch(self, e):
            self.epochs.append(e)

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=32,
                       sampler=Sampler(96))
    test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=64)
    res = Trainer(_net(), (train, test), TrainConfig(epochs=2, lr=0.05), progress=False).fit()
    assert Sampler.epochs == [1, 2] and res.final["steps"] == 6  # 3 loader batches per epoch
    assert res.final["test_accuracy"] == evaluate(_net_like(res), data.x_test, data.y_test,
                                                  64)["accuracy"]


def _net_like(res):
    model = _net()
    model.load_state_dict(res.final_state)
    return model


def test_holdout_validation_of_a_stream_is_stratified_and_needs_labels():
    data = _images()
    val = _streamed(data).holdout_validation(0.25, seed=1)
    assert val.n_train + val.n_test == 96 and val.summary()["evaluation"] == "validation"
    ref = data.holdout_validation(0.25, seed=1)
    assert torch.equal(split_tensors(val, "test")[1], ref.y_test)
    assert torch.equal(split_tensors(val, "train")[0], ref.x_train)
    with pytest.raises(ConfigError, match="targets"):
        stream(_Noisy(data.x_train, data.y_train), TensorDataset(data.x_test, data.y_test),
               num_classes=3).holdout_validation(0.2)


class _Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(1), 0


def test_bad_sources_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="pair of torch"):
        as_source([1, 2, 3])
    with pytest.raises(ConfigError, match="IterableDataset"):
        stream(_Endless(), TensorDataset(torch.zeros(2, 1)))
    with pytest.raises(ConfigError, match="num_classes"):
        stream(_Noisy(torch.zeros(4, 2), [0, 1, 0, 1]), _Noisy(torch.zeros(4, 2), [0] * 4))
    with pytest.raises(ConfigError, match="workers"):
        _streamed(_images(), workers=-1)
    with pytest.raises(ConfigError, match="transfer_bytes"):
        _streamed(_images(), workers=2, transfer_bytes=-1)
    with pytest.raises(ConfigError, match="worker_sharing"):
        _streamed(_images(), workers=2, worker_sharing="telepathy")


# ------------------------------------------------------------------ precision, memory format


def test_bf16_on_cpu_trains_and_keeps_masked_weights_exactly_zero():
    data = _images()
    cfg = dict(epochs=2, batch_size=16, lr=0.05, seed=3)
    runs = {p: Trainer(_net(), data, TrainConfig(precision=p, **cfg),
                       build_method("gmp", sparsity=0.8, frequency=2), progress=False).fit()
            for p in ("fp32", "bf16")}
    bf = runs["bf16"]
    for name, mask in bf.masks.items():
        assert torch.all(bf.final_state[name][~mask] == 0)
        assert bf.final_state[name].dtype == torch.float32
    assert bf.sparsity["global"]["weight_sparsity"] == pytest.approx(0.8, abs=0.01)
    # bf16 rounds the forward pass: another trajectory, still a working one
    assert bf.metrics[-1]["train_loss"] != runs["fp32"].metrics[-1]["train_loss"]
    assert abs(bf.metrics[-1]["train_loss"] - runs["fp32"].metrics[-1]["train_loss"]) < 0.1


def test_fp16_is_refused_on_cpu_and_unknown_precisions_are_named():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*bf16"):
        Trainer(_net(), _images(), TrainConfig(precision="fp16"))
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16"):
        TrainConfig(precision="fp8").validate()


def test_channels_last_trains_to_the_same_weights_up_to_rounding():
    data = _images()
    cfg = dict(epochs=1, batch_size=16, lr=0.05, seed=3)
    a = Trainer(_net(), data, TrainConfig(**cfg), build_method("gmp", sparsity=0.5,
                frequency=2), progress=False).fit()
    b = Trainer(_net(), data, TrainConfig(channels_last=True, **cfg),
                build_method("gmp", sparsity=0.5, frequency=2), progress=False).fit()
    for k in a.final_state:
        assert torch.allclose(a.final_state[k], b.final_state[k], atol=1e-5)
    assert all(torch.all(b.final_state[n][~m] == 0) for n, m in b.masks.items())


def test_new_train_options_leave_existing_run_names_alone():
    # names from before `precision` and `channels_last` existed
    assert RunConfig().run_name() == "dense-mlp-xor-50df0dce05"
    assert RunConfig(dataset="mnist", method="gmp").run_name() == "gmp-mlp-mnist-72d59835c4"
    assert RunConfig(train=TrainConfig(channels_last=True)).run_name() == \
        "dense-mlp-xor-50df0dce05"
    assert RunConfig(train=TrainConfig(precision="bf16")).run_name() != \
        "dense-mlp-xor-50df0dce05"
