"""Every weight-mask method trains the residual and BatchNorm networks (tiny widths): masks
stay exactly zero with BatchNorm present, BatchNorm parameters are never pruned, and the
sparsity report counts FLOPs from forward hooks."""

import pytest
import torch

from conftest import tiny_images
from prunelab.config import RunConfig, TrainConfig
from prunelab.masks import prunable_parameters
from prunelab.methods import build_method
from prunelab.models import build_model
from prunelab.train import Trainer

METHOD_OPTIONS = {
    "magnitude": {"sparsity": 0.8},
    "gmp": {"sparsity": 0.8, "begin": 0, "end": 6, "frequency": 2},
    "annealed": {"sparsity": 0.8, "unit": "step", "length": 8},
    "biobjective": {"weight": 0.9, "l1_params": ["Conv2d", "Linear"], "tau": 1e-2,
                    "persistent_mask": True},
}


@pytest.mark.parametrize("model_name,options", [
    ("resnet20", {"width": 0.125}), ("resnet20", {"width": 0.125, "shortcut": "B"}),
    ("vgg11-bn", {"width": 0.0625}), ("wrn-16-4", {"width": 0.0625}),
])
@pytest.mark.parametrize("method_name", sorted(METHOD_OPTIONS))
def test_weight_methods_train_bn_residual_nets_with_masks_exactly_zero(
    model_name, options, method_name
):
    data = tiny_images()
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes, **options)
    bn_names = {f"{m}.{p}" for m, mod in model.named_modules()
                if isinstance(mod, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    bn_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in bn_names}
    assert bn_before
    method = build_method(method_name, **METHOD_OPTIONS[method_name])
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, eval_train=False)
    result = Trainer(model, data, cfg, method, progress=False).fit()
    masks = result.masks
    assert masks, "a weight method must end with masks"
    params = dict(model.named_parameters())
    pruned = 0
    for name, mask in masks.items():
        assert name in prunable_parameters(model)
        assert torch.all(params[name].detach()[~mask] == 0)
        pruned += int((~mask).sum())
    assert pruned > 0
    assert not set(masks) & bn_names
    # BatchNorm trained (its parameters moved) but nothing masked them
    assert any(not torch.equal(bn_before[n], params[n].detach()) for n in bn_before)
    glob = result.sparsity["global"]
    assert glob["flops_dense"] > glob["flops_sparse"] > 0


def test_imp_and_fixed_mask_runs_on_a_resnet(tmp_path):
    from prunelab.methods.lottery import run_imp
    from prunelab.train import run

    cfg = RunConfig(dataset="xor", model="resnet20", model_options={"width": 0.125},
                    method="imp", method_options={"rounds": 2, "rate": 0.5,
                                                 "keep_first_last": True},
                    train=TrainConfig(epochs=2, batch_size=16, lr=0.05, eval_train=False))
    data = tiny_images()
    import prunelab.methods.lottery as lottery

    original = lottery.load_data
    lottery.load_data = lambda c: data
    try:
        results = run_imp(cfg)
    finally:
        lottery.load_data = original
    final = results[-1]
    assert "conv1.weight" not in final.masks and "fc.weight" not in final.masks
    kept = sum(int(m.sum()) for m in final.masks.values())
    total = sum(m.numel() for m in final.masks.values())
    assert kept / total == pytest.approx(0.25, abs=0.01)
    masks_path = tmp_path / "masks.pt"
    from prunelab.masks import save_masks

    save_masks(masks_path, final.masks)
    fixed = RunConfig(dataset="xor", model="resnet20", model_options={"width": 0.125},
                      method="fixed-mask", method_options={"masks_path": str(masks_path)},
                      train=TrainConfig(epochs=1, batch_size=16, lr=0.05, eval_train=False))
    res = run(fixed, data=data)
    params = dict(res.final_state)
    for name, mask in final.masks.items():
        assert torch.all(params[name][~mask] == 0)


def test_sparsity_report_leaves_batchnorm_statistics_alone():
    """The FLOP probe runs in eval mode: a train-mode probe folded a zero image into every
    BatchNorm's running statistics at the end of each training run."""
    from prunelab.masks import sparsity_report

    model = build_model("resnet20", (3, 28, 28), 10, width=0.125).train()
    model(torch.randn(8, 3, 28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = sparsity_report(model, None, (3, 28, 28))
    assert report["global"]["flops_dense"] > 0
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
