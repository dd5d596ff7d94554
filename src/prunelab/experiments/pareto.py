"""Reproduction of Reiners et al.: the (CE, l1) Pareto front of LeNet-5 (avgpool variant) on
MNIST by adaptive weighted sums, its knee retrained for the full budget, a fixed weight grid for
comparison, and stochastic multi-gradient descent (SMGD).

Protocol (choices where the paper leaves room are documented in the report):
- A validation split is carved (seeded) from the MNIST training set; every short run of the
  searches is measured on it ((f1, f2) = (validation CE, l1 of the dense kernels)) and the knee is
  chosen on it. The test set is only used to report the retrained knee and SMGD.
- Weighted-sum runs: `BiobjectiveTraining` (CE + L2 on conv kernels + ((1 - lambda) / lambda)
  l1 of the dense kernels, threshold pruning at tau = 1e-3 after every minibatch), Adam.
- The knee (see `prunelab.multiobjective.knee`) is retrained from a fresh initialisation for the
  full budget (30 epochs, batch 32 in the full run): `full_epochs - finetune_epochs` epochs of
  the weighted sum (constant learning rate, as the short runs), then `finetune_epochs` epochs
  of fine-tuning the sparse solution (`knee.finetune_sparse`: its zeros frozen as a persistent
  mask, the l1 term off, a cosine learning-rate decay), the standard way a sparse network
  recovers accuracy; the nonzero count is the weighted sum's.
- SMGD (momentum SGD, as in the paper; the Adam variant too) runs for the short-run budget and
  its validation point is compared with the weighted-sum front: the dominance gap (additive
  epsilon indicator scaled by the front's range) must be <= SMGD_TOLERANCE.
- Test-set firewall (`prunelab.firewall`): MNIST is loaded with its test split sealed; the knee
  is chosen on validation data and frozen before any test data is read; the knee's and SMGD's
  test evaluations are recorded in results.json. Claims are declared in `CLAIMS` and judged by
  `prunelab.claims` (one training run: the accuracy target takes a bootstrap over the test
  images, the others are single measurements).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab import atomic
from prunelab.claims import (
    Claim,
    Measured,
    claims_markdown,
    declare,
    judge_all,
    log_lines,
    samples,
    single,
)
from prunelab.config import TrainConfig
from prunelab.firewall import Firewall
from prunelab.models import build_model
from prunelab.multiobjective.knee import (
    FrontPoint,
    KneeSearch,
    WeightedSumRunner,
    dichotomic_search,
    grid_search,
    validation_split,
)
from prunelab.multiobjective.pareto import (
    dominance_gap,
    hypervolume_2d,
    plot_accuracy_front,
    plot_loss_front,
)
from prunelab.multiobjective.smgd import SMGDConfig, train_smgd
from prunelab.report import figure_title, markdown_table, new_figure, save_figure, text_table
from prunelab.seed_noise import misclassified
from prunelab.threads import torch_threads
from prunelab.train import evaluate

REFERENCE = {"test_accuracy": 0.989, "nonzero_per_layer": [2107, 300, 170], "dense_weights": 58920}
TARGET_PRUNED, TARGET_ACCURACY, TARGET_RUNS = 0.95, 0.985, 20
SMGD_TOLERANCE = 0.05  # dominance gap, as a fraction of the front's range per objective
_RETRAIN = "quick: the knee is retrained 6 epochs on 12k images"

CLAIMS = declare(
    Claim("knee-pruned", f">= {TARGET_PRUNED:.0%} of the dense weights pruned at the knee",
          "the knee, retrained (nonzero dense-layer weights)", "pruned fraction", ">=",
          TARGET_PRUNED, "single", quick_expected=False, source=f"Reiners et al.; {_RETRAIN}"),
    Claim("knee-accuracy", f"the knee reaches >= {TARGET_ACCURACY:.1%} test accuracy",
          "test accuracy of the retrained knee, per test image", "accuracy", ">=",
          TARGET_ACCURACY, "bootstrap_mean", n=1, unit="test images (one training run)",
          quick_expected=False, source=f"Reiners et al.; {_RETRAIN}"),
    Claim("knee-budget", f"the knee is found in <= {TARGET_RUNS} short runs",
          "short weighted-sum runs of the adaptive search", "runs", "<=", TARGET_RUNS,
          "single", source="Reiners et al."),
    *[Claim(f"smgd-{v}", f"SMGD ({v}) is not dominated by the weighted-sum front",
            "validation (CE, l1) point after the short-run budget", "dominance gap (fraction "
            "of the front's range)", "<=", SMGD_TOLERANCE, "single", source="Reiners et al.")
      for v in ("sgd", "adam")],
)


@dataclass
class ParetoSettings:
    """Sizes of one reproduction (quick or full)."""

    n_train: int | None  # None: all 60,000
    n_val: int
    short_epochs: int
    full_epochs: int
    budget: int
    grid: list[float]
    batch_size: int = 32
    lr: float = 1e-3
    smgd_lr: float = 0.01
    smgd_adam_lr: float = 1e-3
    seed: int = 0
    finetune_epochs: int = 5  # of full_epochs: the knee retrain's frozen-mask, CE-only phase
    finetune_lr_schedule: str = "cosine"
    method_options: dict[str, Any] = field(default_factory=lambda: {"tau": 1e-3,
                                                                    "conv_l2": 5e-4})


def settings(quick: bool) -> ParetoSettings:
    """Quick: 12,000 training images, 2-epoch short runs, 10 searched weights, 6-epoch knee
    retrain (the last 1 a fine-tune). Full: all of MNIST, 2-epoch short runs, <= 20 searched
    weights, 30-epoch retrain (the last 5 a fine-tune)."""
    grid = [1.0, 0.99999, 0.9999, 0.9995, 0.999, 0.998, 0.995, 0.99]
    if quick:
        return ParetoSettings(n_train=12000, n_val=2000, short_epochs=2, full_epochs=6,
                              budget=10, grid=[1.0, 0.9999, 0.999, 0.998, 0.99],
                              finetune_epochs=1)
    return ParetoSettings(n_train=None, n_val=5000, short_epochs=2, full_epochs=30,
                          budget=TARGET_RUNS, grid=grid)


def _model_fn(input_shape, num_classes, seed: int) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model("lenet5-avg", input_shape, num_classes)
    return build


def _layers(nonzero_per_layer: dict[str, int]) -> list[int]:
    return list(nonzero_per_layer.values())


@torch_threads(1)  # LeNet-5 at batch 32 only loses time to intra-op threads
def run(
    out: Path,
    *,
    quick: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the reproduction; write report.md, results.json and figures/ into `out` atomically
    (single-threaded, the thread count restored after)."""
    out = Path(out)
    s = settings(quick)
    start, cpu_start = time.perf_counter(), time.process_time()
    fw = Firewall("pareto")
    data = fw.load("mnist", seed=s.seed)  # $PRUNELAB_DATA; a one-line DataError if absent
    if s.n_train is not None:
        data = data.subset_train(s.n_train, seed=s.seed)
    train_val = validation_split(data, s.n_val, seed=s.seed)
    model_fn = _model_fn(data.input_shape, data.num_classes, s.seed)
    short = TrainConfig(epochs=s.short_epochs, batch_size=s.batch_size, optimizer="adam",
                        lr=s.lr, seed=s.seed, eval_train=False, checkpoint_epochs=False)
    runner = WeightedSumRunner(model_fn, train_val, short, dict(s.method_options),
                               progress=progress)
    log(f"pareto: {train_val.n_train} training / {s.n_val} validation images, short runs of "
        f"{s.short_epochs} epochs, budget {s.budget}")

    t0 = time.perf_counter()
    search = dichotomic_search(runner, s.budget, log=log)
    search_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid = grid_search(runner, s.grid, log=log)
    grid_seconds = time.perf_counter() - t0
    knee = search.knee
    assert knee is not None
    log(f"knee: lambda={knee.weight:.6g} (run {knee.index + 1}), validation CE {knee.f1:.4f}, "
        f"nonzero {knee.extra['nonzero']}")
    fw.freeze(knee_weight=knee.weight, knee_run=knee.index + 1,
              rule="interior point of the validation front where its slope jumps most",
              finetune_epochs=s.finetune_epochs, smgd_lr=s.smgd_lr, smgd_adam_lr=s.smgd_adam_lr)

    # Final retrain of the knee for the full budget, fresh init; test set used only here.
    full = TrainConfig(**{**asdict(short), "epochs": s.full_epochs - s.finetune_epochs})
    tune = TrainConfig(**{**asdict(short), "epochs": s.finetune_epochs,
                          "lr_schedule": s.finetune_lr_schedule})
    t0 = time.perf_counter()
    final_runner = WeightedSumRunner(model_fn, train_val, full, dict(s.method_options),
                                     progress=progress, finetune=tune)
    knee_final = final_runner(knee.weight)
    model = model_fn()
    model.load_state_dict(knee_final.state)
    test = fw.test(data, "the knee, retrained", "test accuracy and loss, per test image")
    knee_test = evaluate(model, test.x_test, test.y_test)
    wrong = set(misclassified(model, test.x_test, test.y_test))
    knee_correct = [0.0 if i in wrong else 1.0 for i in range(test.n_test)]
    retrain_seconds = time.perf_counter() - t0
    before = knee_final.extra["before_finetune"]
    log(f"knee retrained ({s.full_epochs} epochs, the last {s.finetune_epochs} a fine-tune): "
        f"validation accuracy {before['val_accuracy']:.4f} before the fine-tune, "
        f"{knee_final.extra['val_accuracy']:.4f} after; test accuracy "
        f"{knee_test['accuracy']:.4f}, pruned {knee_final.extra['pruned_fraction']:.4f}")

    # SMGD for the short-run budget, compared with the weighted-sum front on validation.
    smgd_rows, smgd_coeffs = [], {}
    front_pts = np.array([p.objectives for p in search.front])
    for variant, lr in (("sgd", s.smgd_lr), ("adam", s.smgd_adam_lr)):
        t0 = time.perf_counter()
        cfg = SMGDConfig(epochs=s.short_epochs, batch_size=s.batch_size, optimizer=variant,
                         lr=lr, seed=s.seed, tau=s.method_options["tau"],
                         conv_l2=s.method_options["conv_l2"])
        m = model_fn()
        res = train_smgd(m, train_val, cfg, progress=progress)
        val = evaluate(m, train_val.x_test, train_val.y_test)
        test_data = fw.test(data, f"SMGD ({variant})", "test accuracy")
        test = evaluate(m, test_data.x_test, test_data.y_test)
        dense = {n: p for n, p in m.named_parameters() if n in knee.extra["nonzero_per_layer"]}
        nz = {n: int(p.detach().ne(0).sum()) for n, p in dense.items()}
        point = (val["loss"], res.final["l1"])
        gap = dominance_gap(point, front_pts)
        smgd_rows.append({
            "variant": variant, "lr": lr, "val_ce": val["loss"], "l1": res.final["l1"],
            "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            "nonzero": sum(nz.values()), "nonzero_per_layer": nz,
            "pruned_fraction": 1 - sum(nz.values()) / sum(p.numel() for p in dense.values()),
            "dominance_gap": gap, "trivial": bool(val["accuracy"] < 2.0 / data.num_classes),
            "c1_mean": float(np.mean(res.coefficients)),
            "c1_min": float(np.min(res.coefficients)), "c1_max": float(np.max(res.coefficients)),
            "steps": len(res.coefficients), "seconds": time.perf_counter() - t0,
        })
        smgd_coeffs[variant] = res.coefficients
        log(f"smgd ({variant}): validation CE {val['loss']:.4f}, l1 {res.final['l1']:.4g}, "
            f"nonzero {sum(nz.values())}, dominance gap {gap:.4f}")

    # Hypervolumes of the two strategies with a common reference point.
    all_pts = np.array([p.objectives for p in search.points + grid.points])
    ref = all_pts.max(axis=0) * 1.05 + 1e-9
    hv = {"dichotomic": hypervolume_2d([p.objectives for p in search.points], ref),
          "grid": hypervolume_2d([p.objectives for p in grid.points], ref)}

    elapsed = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    verdicts = judge_all(CLAIMS, measure(knee_final, knee_test, knee_correct, search,
                                         smgd_rows))
    table = _comparison_table(knee_final, knee_test, smgd_rows, search)
    results = {
        "quick": quick,
        "settings": asdict(s),
        "seconds": elapsed,
        "cpu_seconds": cpu_seconds,
        "search_seconds": search_seconds,
        "grid_seconds": grid_seconds,
        "retrain_seconds": retrain_seconds,
        "reference": REFERENCE,
        "search": search.to_dict(),
        "grid": grid.to_dict(),
        "hypervolume": {"reference_point": ref.tolist(), **hv},
        "knee": {"weight": knee.weight, "short_run": knee.to_dict(),
                 "retrained": {**knee_final.to_dict(), "test_accuracy": knee_test["accuracy"],
                               "test_loss": knee_test["loss"]}},
        "smgd": smgd_rows,
        "table": table,
        "claims": [v.to_dict() for v in verdicts],
        **fw.to_results(),
    }
    with atomic.staged_directory(out) as stage:
        figures = _figures(stage, search, grid, knee, smgd_rows, smgd_coeffs,
                           f"pareto{' (quick)' if quick else ''}: {s.short_epochs}/"
                           f"{s.full_epochs} epochs, budget {s.budget}, seed {s.seed}")
        results["figures"] = figures
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results, s, verdicts, fw))
    log(text_table(table, ["solution", "test_accuracy", "dense_1", "dense_2", "dense_3",
                           "nonzero", "pruned"]))
    for line in log_lines(verdicts, quick):
        log(line)
    log(f"pareto: {elapsed:.0f} s wall, {cpu_seconds:.0f} s CPU")
    return results


def measure(knee_final: FrontPoint, knee_test: dict[str, float], knee_correct: list[float],
            search: KneeSearch, smgd_rows: list[dict[str, Any]]) -> dict[str, Measured]:
    """What each declared claim (`CLAIMS`) measured."""
    out = {
        "knee-pruned": single(knee_final.extra["pruned_fraction"],
                              f"{knee_final.extra['nonzero']} nonzero dense weights"),
        "knee-accuracy": samples(knee_correct, f"test accuracy {knee_test['accuracy']:.4f}"),
        "knee-budget": single(search.runs),
    }
    for row in smgd_rows:
        out[f"smgd-{row['variant']}"] = single(
            row["dominance_gap"], "a trivial, all-pruned solution" if row["trivial"] else "")
    return out


def _comparison_table(knee_final: FrontPoint, knee_test, smgd_rows, search: KneeSearch):
    ref_nz = REFERENCE["nonzero_per_layer"]
    rows = [{"solution": "reference (Reiners et al.)", "test_accuracy": REFERENCE["test_accuracy"],
             "dense_1": ref_nz[0], "dense_2": ref_nz[1], "dense_3": ref_nz[2],
             "nonzero": sum(ref_nz), "pruned": 1 - sum(ref_nz) / REFERENCE["dense_weights"]}]
    layers = _layers(knee_final.extra["nonzero_per_layer"])
    rows.append({"solution": f"knee, retrained (lambda={knee_final.weight:.6g})",
                 "test_accuracy": knee_test["accuracy"], "dense_1": layers[0],
                 "dense_2": layers[1], "dense_3": layers[2],
                 "nonzero": knee_final.extra["nonzero"],
                 "pruned": knee_final.extra["pruned_fraction"]})
    for r in smgd_rows:
        layers = list(r["nonzero_per_layer"].values())
        rows.append({"solution": f"SMGD ({r['variant']}, short budget)",
                     "test_accuracy": r["test_accuracy"], "dense_1": layers[0],
                     "dense_2": layers[1], "dense_3": layers[2], "nonzero": r["nonzero"],
                     "pruned": r["pruned_fraction"]})
    return rows


def _figures(stage: Path, search: KneeSearch, grid: KneeSearch, knee: FrontPoint, smgd_rows,
             coeffs, title: str = "pareto") -> list[str]:
    (stage / "figures").mkdir()
    sgd = next(r for r in smgd_rows if r["variant"] == "sgd")
    adam = next(r for r in smgd_rows if r["variant"] == "adam")
    fig, axes = new_figure(2)
    plot_loss_front(axes[0][0], [p.objectives for p in search.points], knee=knee.objectives,
                    smgd=(sgd["val_ce"], sgd["l1"]),
                    extra={"SMGD (adam)": (adam["val_ce"], adam["l1"])})
    axes[0][0].set_title("adaptive weighted sums")
    plot_loss_front(axes[0][1], [p.objectives for p in grid.points], knee=knee.objectives,
                    smgd=(sgd["val_ce"], sgd["l1"]))
    axes[0][1].set_title("fixed weight grid")
    loss = "figures/loss_vs_l1.png"
    figure_title(fig, title)
    save_figure(fig, stage / loss)
    fig, axes = new_figure(1)
    pts = search.points
    plot_accuracy_front(axes[0][0], [p.extra["nonzero"] for p in pts],
                        [p.extra["val_accuracy"] for p in pts],
                        knee=(knee.extra["nonzero"], knee.extra["val_accuracy"]),
                        smgd=(sgd["nonzero"], sgd["val_accuracy"]),
                        extra={"SMGD (adam)": (adam["nonzero"], adam["val_accuracy"])},
                        ylabel="validation accuracy")
    acc = "figures/accuracy_vs_nonzero.png"
    figure_title(fig, title)
    save_figure(fig, stage / acc)
    fig, axes = new_figure(1)
    for variant, c in coeffs.items():
        axes[0][0].plot(np.arange(1, len(c) + 1), 1.0 - np.asarray(c), label=variant, lw=0.7)
    axes[0][0].set(xlabel="step", ylabel="1 - c1 (weight of the l1 gradient)", yscale="log",
                   title="SMGD coefficients per step")
    axes[0][0].legend(fontsize=8)
    coef = "figures/smgd_coefficients.png"
    figure_title(fig, title)
    save_figure(fig, stage / coef)
    return [loss, acc, coef]


def _report(results: dict[str, Any], s: ParetoSettings, verdicts, fw: Firewall) -> str:
    search, grid = results["search"], results["grid"]
    cols = ["solution", "test_accuracy", "dense_1", "dense_2", "dense_3", "nonzero", "pruned"]
    pts = search["points"]
    front_rows = [{"run": p["index"] + 1, "lambda": f"{p['weight']:.7g}", "val_ce": p["f1"],
                   "l1": p["f2"], "val_accuracy": p["val_accuracy"], "nonzero": p["nonzero"],
                   "on_front": p["index"] in search["front"],
                   "knee": p["index"] == search["knee"]} for p in pts]
    smgd_cols = ["variant", "lr", "val_ce", "l1", "val_accuracy", "test_accuracy", "nonzero",
                 "dominance_gap", "trivial", "c1_mean", "c1_min", "c1_max"]
    size = "all 60,000" if s.n_train is None else f"{s.n_train:,}"
    hv = results["hypervolume"]
    lines = [
        "# Pareto front of CE vs l1 on MNIST, LeNet-5 (avgpool)"
        + (" (quick)" if results["quick"] else ""),
        "",
        f"MNIST training images: {size}, of which {s.n_val:,} form the validation split (seeded); "
        f"short runs: {s.short_epochs} epochs, batch {s.batch_size}, Adam lr {s.lr}; knee "
        f"retrained for {s.full_epochs} epochs: {s.full_epochs - s.finetune_epochs} of the "
        f"weighted sum, then {s.finetune_epochs} fine-tuning the sparse solution (its zeros "
        f"frozen as a persistent mask, l1 term off, {s.finetune_lr_schedule} learning rate). "
        "Weighted sum lambda (CE + L2 conv, "
        f"conv_l2={s.method_options['conv_l2']}) + (1 - lambda) l1 of the dense kernels, "
        f"trained as CE + ((1-lambda)/lambda) l1; weights with |w| <= tau = "
        f"{s.method_options['tau']} zeroed after every minibatch. Front and knee are measured "
        "on validation data; test accuracy only for the retrained knee and SMGD.",
        "",
        "## Claims",
        "",
        claims_markdown(verdicts, results["quick"]),
        "",
        "## Test-set firewall",
        "",
        *fw.report_lines(),
        "",
        "## Against the reference",
        "",
        markdown_table(results["table"], cols),
        "",
        _finetune_line(results["knee"]["retrained"], s),
        "",
        "## Adaptive weighted-sum search (validation objectives)",
        "",
        markdown_table(front_rows, ["run", "lambda", "val_ce", "l1", "val_accuracy", "nonzero",
                                    "on_front", "knee"]),
        "",
        f"{search['runs']} short runs; knee: the interior front point where the slope of the "
        "front (the weight ratio (1-lambda)/lambda normal to the neighbouring segment) jumps "
        "most.",
        "",
        f"Hypervolume (reference point {[round(v, 4) for v in hv['reference_point']]}): "
        f"adaptive search {hv['dichotomic']:.4g} with {search['runs']} runs, fixed grid "
        f"{hv['grid']:.4g} with {grid['runs']} runs "
        f"(grid weights {', '.join(f'{w:g}' for w in s.grid)}).",
        "",
        "## SMGD (short-run budget)",
        "",
        markdown_table(results["smgd"], smgd_cols),
        "",
        f"dominance_gap: max over front points q of min_k (smgd_k - q_k) / range_k (range of "
        f"the adaptive front per objective); <= 0 means no front point dominates SMGD; the "
        f"tolerance is {SMGD_TOLERANCE}. trivial: validation accuracy below twice chance (the "
        "solution sits at the all-pruned end of the front, so it is not dominated by much, "
        "but it is no useful network).",
        "",
        *[f"![{Path(f).stem}]({f})" for f in results["figures"]],
        "",
        f"Total time: {results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU "
        f"(search {results['search_seconds']:.0f} s, "
        f"grid {results['grid_seconds']:.0f} s, knee retrain {results['retrain_seconds']:.0f} s).",
        "",
    ]
    return "\n".join(lines)


def _finetune_line(knee: dict[str, Any], s: ParetoSettings) -> str:
    before = knee["before_finetune"]
    return (f"Knee retrain, validation split: accuracy {before['val_accuracy']:.4f} after the "
            f"{s.full_epochs - s.finetune_epochs} weighted-sum epochs, {knee['val_accuracy']:.4f} "
            f"after the {s.finetune_epochs}-epoch fine-tune; nonzero dense weights "
            f"{before['nonzero']} before and {knee['nonzero']} after (the mask is frozen).")
