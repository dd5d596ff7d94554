"""Issue 19's acceptance: every method trains a ResNet-20-tiny and a VGG-tiny on small data
written in the exact CIFAR-10 format (python pickles read from a data directory): weight masks
stay exactly zero with BatchNorm present, channel methods end with a smaller network whose
run directory reloads, and the run directory is complete."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.config import RunConfig, TrainConfig
from prunelab.masks import save_masks
from prunelab.runs import load_run
from prunelab.train import run
from test_image_sets import write_cifar10

MODELS = {"resnet20": {"width": 0.125}, "vgg11-bn": {"width": 0.0625}}
METHODS = {
    "dense": {},
    "magnitude": {"sparsity": 0.5, "at_epoch": 0},
    "gmp": {"sparsity": 0.5, "begin": 0, "end": 4, "frequency": 1},
    "annealed": {"sparsity": 0.5, "unit": "step", "length": 6},
    "biobjective": {"weight": 0.9, "l1_params": ["Conv2d", "Linear"], "tau": 1e-2,
                    "persistent_mask": True},
    "snip": {"sparsity": 0.5},
    "grasp": {"sparsity": 0.5},
    "synflow": {"sparsity": 0.5, "iterations": 5},
    "random": {"sparsity": 0.5},
    "set": {"sparsity": 0.5, "update_interval": 2, "end": 0.75},
    "rigl": {"sparsity": 0.5, "update_interval": 2, "end": 0.75},
    "imp": {"rounds": 1, "rate": 0.5},
    "units": {"fraction": 0.25, "rounds": 1, "score_steps": 1},
    "bernoulli": {"penalty_scale": 20.0, "lr_theta": 5.0, "theta_init": 0.6},
}
WEIGHT_METHODS = {"magnitude", "gmp", "annealed", "biobjective", "snip", "grasp", "synflow",
                  "random", "set", "rigl"}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, per_batch=16, n_test=20)  # 80 training, 20 test images, 32x32x3
    return root


def _cfg(cifar_dir, model, method, options, epochs=2):
    return RunConfig(dataset="cifar10", data_dir=str(cifar_dir), model=model,
                     model_options=dict(MODELS[model]), method=method,
                     method_options=dict(options),
                     train=TrainConfig(epochs=epochs, batch_size=16, lr=0.05, eval_train=False))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_tiny_cifar_networks_from_cifar_files(cifar_dir, tmp_path, model,
                                                                   method):
    cfg = _cfg(cifar_dir, model, method, METHODS[method])
    out = tmp_path / "run"
    if method == "imp":
        from prunelab.methods.lottery import run_imp

        result = run_imp(cfg, out, progress=False)[-1]
        out = out / "level_1"
    else:
        result = run(cfg, out, progress=False)
    summary = json.loads((out / "results.json").read_text())
    assert summary["dataset"]["name"].startswith("cifar10") and summary["dataset"]["n_train"] == 80
    loaded = load_run(out)
    params = dict(loaded.model.named_parameters())
    bn = {f"{m}.{p}" for m, mod in loaded.model.named_modules()
          if isinstance(mod, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    if method in WEIGHT_METHODS or method == "imp":
        assert result.masks and not set(result.masks) & bn
        pruned = 0
        for name, mask in result.masks.items():
            assert torch.all(params[name].detach()[~mask] == 0)
            pruned += int((~mask).sum())
        assert pruned > 0
    if method in ("units", "bernoulli"):
        start = sum(v.numel() for v in result.initial_state.values())
        assert sum(p.numel() for p in loaded.model.parameters()) < start
        x = torch.randn(2, 3, 32, 32)
        assert loaded.model.eval()(x).shape == (2, 10)


def test_fixed_mask_from_a_file_on_a_resnet(cifar_dir, tmp_path):
    first = run(_cfg(cifar_dir, "resnet20", "magnitude", METHODS["magnitude"]), progress=False)
    save_masks(tmp_path / "masks.pt", first.masks)
    cfg = _cfg(cifar_dir, "resnet20", "fixed-mask", {"masks_path": str(tmp_path / "masks.pt")})
    result = run(cfg, tmp_path / "fixed", progress=False)
    for name, mask in first.masks.items():
        assert torch.equal(result.masks[name], mask)
        assert torch.all(result.final_state[name][~mask] == 0)
