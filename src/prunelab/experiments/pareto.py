"""Reproduction of Reiners et al.: the (CE, l1) Pareto front of LeNet-5 (avgpool variant) on
MNIST by adaptive weighted sums, its knee retrained for the full budget, a fixed weight grid for
comparison, and stochastic multi-gradient descent (SMGD).

Protocol (choices where the paper leaves room are documented in the report):
- A validation split is carved (seeded) from the MNIST training set; every short run of the
  searches is measured on it ((f1, f2) = (validation CE, l1 of the dense kernels)) and the knee is
  chosen on it. The test set is only used to report the retrained knee and SMGD.
- Weighted-sum runs: `BiobjectiveTraining` (CE + L2 on conv kernels + ((1 - lambda) / lambda)
  l1 of the dense kernels, threshold pruning at tau = 1e-3 after every minibatch), Adam.
- The paper's protocol, which the main claims judge: the knee (see
  `prunelab.multiobjective.knee`) is retrained from a fresh initialisation for the full budget,
  `full_epochs` epochs of the weighted sum at its lambda (30 epochs, batch 32 in the full run;
  constant learning rate, as the short runs), with no further stage.
- A labelled variant, not in the paper (`VARIANT`): the same weighted-sum run's weights after
  `full_epochs - finetune_epochs` epochs, then `finetune_epochs` epochs of fine-tuning the
  sparse solution (`knee.finetune_sparse`: its zeros frozen as a persistent mask, the l1 term
  off, a cosine learning-rate decay); the nonzero count is the weighted sum's at that epoch.
  It was added after the paper's protocol missed its accuracy target on test
  (docs/claims-history.md); it has its own claims, named "variant:...", with the same targets.
  Sharing the weighted-sum run changes nothing: at a constant learning rate its weights after
  epoch E are bit for bit those of an E-epoch run (`WeightedSumRunner.finetune_from`).
- SMGD (momentum SGD, as in the paper; the Adam variant too) runs for the short-run budget and
  its validation point is compared with the weighted-sum front: the dominance gap (additive
  epsilon indicator scaled by the front's range) must be <= SMGD_TOLERANCE.
- Test-set firewall (`prunelab.firewall`): MNIST is loaded with its test split sealed; the knee
  is chosen on validation data and frozen before any test data is read; the two retrained
  networks' and SMGD's test evaluations are recorded in results.json. Claims are declared in
  `CLAIMS` and judged by `prunelab.claims` (one training run: the accuracy target takes a
  bootstrap over the test images, the others are single measurements). Targets are the
  published ones (issue 20 item 5): >= 98.9% test accuracy at <= 2107 / 300 / 170 nonzero
  weights in the three dense layers, judged as the largest ratio nonzero / limit over the
  layers <= 1; ">= 95% pruned" (METHODS section 6) is kept beside them.
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
    missing,
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
TARGET_ACCURACY = REFERENCE["test_accuracy"]  # published (issue 20 item 5; was 0.985)
TARGET_LAYER_RATIO = 1.0  # largest nonzero / REFERENCE["nonzero_per_layer"] over the layers
TARGET_PRUNED, TARGET_RUNS = 0.95, 20  # METHODS section 6: "about 95% pruned", <= 20 runs
SMGD_TOLERANCE = 0.05  # dominance gap, as a fraction of the front's range per objective
VARIANT = "variant:"  # name prefix of the fine-tune variant's claims (not in the paper)
_QUICK = "quick: 12k images, the knee retrained 6 epochs"
_LIMITS = " / ".join(str(n) for n in REFERENCE["nonzero_per_layer"])


def _network_claims(prefix: str, who: str, source: str) -> list[Claim]:
    """The published targets, judged on one retrained network (`who`)."""
    return [
        Claim(f"{prefix}knee-accuracy", f"{who}: >= {TARGET_ACCURACY:.1%} test accuracy",
              "test accuracy, per test image", "accuracy", ">=", TARGET_ACCURACY,
              "bootstrap_mean", n=1, unit="test images (one training run)",
              quick_expected=False, source=source),
        Claim(f"{prefix}knee-nonzero",
              f"{who}: at most {_LIMITS} nonzero weights in the three dense layers",
              "nonzero dense-layer weights per layer, divided by the reference's "
              f"({_LIMITS})", "largest ratio nonzero / limit over the three layers", "<=",
              TARGET_LAYER_RATIO, "single", quick_expected=False, source=source),
        Claim(f"{prefix}knee-pruned", f"{who}: >= {TARGET_PRUNED:.0%} of the dense weights "
              "pruned", "nonzero dense-layer weights", "pruned fraction", ">=", TARGET_PRUNED,
              "single", quick_expected=False,
              source=f"{source}; METHODS section 6 (implied by the per-layer limits, which "
              "mean >= 95.6% pruned)"),
    ]


CLAIMS = declare(
    *_network_claims("", "the knee, retrained by the paper's protocol (the weighted sum for "
                     "the full budget, no other stage)", f"Reiners et al.; {_QUICK}"),
    Claim("knee-budget", f"the knee is found in <= {TARGET_RUNS} short runs",
          "short weighted-sum runs of the adaptive search", "runs", "<=", TARGET_RUNS,
          "single", source="Reiners et al."),
    *[Claim(f"smgd-{v}", f"SMGD ({v}) is not dominated by the weighted-sum front",
            "validation (CE, l1) point after the short-run budget", "dominance gap (fraction "
            "of the front's range)", "<=", SMGD_TOLERANCE, "single", source="Reiners et al.")
      for v in ("sgd", "adam")],
    *_network_claims(VARIANT, "variant, not in the paper: the knee + a frozen-mask "
                     "fine-tune (25 + 5 epochs at full scale)",
                     "the paper's targets on a network the paper does not train; "
                     f"added after the paper's protocol missed on test; {_QUICK}"),
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
    # the Adam variant's learning rate is chosen on validation from this grid, largest first
    # (`choose_smgd_lr`); 1e-3, the first, was the fixed value before (docs/claims-history.md)
    smgd_adam_lrs: tuple[float, ...] = (1e-3, 3e-4, 1e-4)
    seed: int = 0
    finetune_epochs: int = 5  # the variant's frozen-mask, CE-only phase (of full_epochs)
    finetune_lr_schedule: str = "cosine"
    method_options: dict[str, Any] = field(default_factory=lambda: {"tau": 1e-3,
                                                                    "conv_l2": 5e-4})


def settings(quick: bool) -> ParetoSettings:
    """Quick: 12,000 training images, 2-epoch short runs, 10 searched weights, 6-epoch knee
    retrain (variant: 5 + a 1-epoch fine-tune). Full: all of MNIST, 2-epoch short runs, <= 20
    searched weights, 30-epoch retrain (variant: 25 + a 5-epoch fine-tune)."""
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


def layer_ratios(nonzero_per_layer: dict[str, int] | list[int]) -> list[float]:
    """Nonzero weights of each dense layer divided by the reference's (2107, 300, 170): the
    per-layer target holds when the largest of these is <= 1."""
    counts = _layers(nonzero_per_layer) if isinstance(nonzero_per_layer, dict) \
        else list(nonzero_per_layer)
    limits = REFERENCE["nonzero_per_layer"]
    if len(counts) != len(limits):
        raise ValueError(f"expected {len(limits)} dense layers, got {len(counts)}")
    return [n / lim for n, lim in zip(counts, limits)]


def variant_label(s: ParetoSettings) -> str:
    """The fine-tune variant's name in reports (it is not the paper's protocol)."""
    return f"knee + {s.finetune_epochs}-epoch frozen-mask fine-tune (not in the paper)"


@dataclass
class Retrained:
    """One retrained knee network and its test evaluation (per-image correctness)."""

    point: FrontPoint
    test: dict[str, float]
    correct: list[float]


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
    # SMGD for the short-run budget, compared with the weighted-sum front on validation; its
    # learning rates are settled here, on validation, before the freeze.
    smgd_rows, smgd_coeffs, smgd_nets = [], {}, {}
    front_pts = np.array([p.objectives for p in search.front])
    for variant, lrs in (("sgd", (s.smgd_lr,)), ("adam", s.smgd_adam_lrs)):
        row, net, coeffs = choose_smgd_lr(
            lambda lr, v=variant: _smgd_run(v, lr, s, model_fn, train_val, front_pts, knee,
                                            data.num_classes, progress), lrs, log)
        smgd_rows.append(row)
        smgd_nets[variant], smgd_coeffs[variant] = net, coeffs

    ws_epochs = s.full_epochs - s.finetune_epochs
    fw.freeze(knee_weight=knee.weight, knee_run=knee.index + 1,
              rule="interior point of the validation front where its slope jumps most",
              protocol=f"paper: {s.full_epochs} epochs of the weighted sum at the knee's lambda, "
              "fresh initialisation, no other stage",
              variant=f"{variant_label(s)}: the same run after {ws_epochs} epochs, then "
              f"{s.finetune_epochs} epochs CE-only with the zeros frozen",
              finetune_epochs=s.finetune_epochs,
              smgd_lr=smgd_rows[0]["lr"], smgd_adam_lr=smgd_rows[1]["lr"],
              smgd_adam_rule=SMGD_LR_RULE + f" (grid {list(s.smgd_adam_lrs)})")

    # Final retrain of the knee, fresh init: the paper's protocol (the weighted sum for the
    # full budget) and, from the same run's weights after `ws_epochs`, the fine-tune variant.
    paper_cfg = TrainConfig(**{**asdict(short), "epochs": s.full_epochs})
    tune = TrainConfig(**{**asdict(short), "epochs": s.finetune_epochs,
                          "lr_schedule": s.finetune_lr_schedule})
    t0 = time.perf_counter()
    final_runner = WeightedSumRunner(model_fn, train_val, paper_cfg, dict(s.method_options),
                                     progress=progress, keep_epochs=(ws_epochs,))
    paper_point = final_runner(knee.weight)
    variant_point = final_runner.finetune_from(paper_point, ws_epochs, tune)
    retrain_seconds = time.perf_counter() - t0
    paper_net = _test_network(fw, data, model_fn, paper_point, "the knee, paper protocol")
    variant_net = _test_network(fw, data, model_fn, variant_point, f"variant: {variant_label(s)}")
    for name, r in (("paper protocol", paper_net), ("variant", variant_net)):
        extra = r.point.extra
        log(f"knee, {name}: validation accuracy {extra['val_accuracy']:.4f}, test accuracy "
            f"{r.test['accuracy']:.4f}, nonzero {_layers(extra['nonzero_per_layer'])} (pruned "
            f"{extra['pruned_fraction']:.4f})")
    for row in smgd_rows:
        test_data = fw.test(data, f"SMGD ({row['variant']})", "test accuracy")
        row["test_accuracy"] = evaluate(smgd_nets[row["variant"]], test_data.x_test,
                                        test_data.y_test)["accuracy"]

    # Hypervolumes of the two strategies with a common reference point.
    all_pts = np.array([p.objectives for p in search.points + grid.points])
    ref = all_pts.max(axis=0) * 1.05 + 1e-9
    hv = {"dichotomic": hypervolume_2d([p.objectives for p in search.points], ref),
          "grid": hypervolume_2d([p.objectives for p in grid.points], ref)}

    elapsed = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    verdicts = judge_all(CLAIMS, measure({"": paper_net, VARIANT: variant_net}, search, smgd_rows))
    table = _comparison_table(paper_net, variant_net, variant_label(s), smgd_rows)
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
                 "paper": {"label": f"paper protocol: {s.full_epochs} weighted-sum epochs",
                           **_network_dict(paper_net)},
                 "variant": {"label": variant_label(s), **_network_dict(variant_net)}},
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
    log(text_table(table, TABLE_COLUMNS))
    for line in log_lines(verdicts, quick):
        log(line)
    log(f"pareto: {elapsed:.0f} s wall, {cpu_seconds:.0f} s CPU")
    return results


def _test_network(fw: Firewall, data, model_fn: Callable[[], torch.nn.Module],
                  point: FrontPoint, what: str) -> Retrained:
    """Evaluate a retrained network on the test split (after the freeze; recorded)."""
    model = model_fn()
    model.load_state_dict(point.state)
    test = fw.test(data, what, "test accuracy and loss, per test image")
    metrics = evaluate(model, test.x_test, test.y_test)
    wrong = set(misclassified(model, test.x_test, test.y_test))
    return Retrained(point, metrics, [0.0 if i in wrong else 1.0 for i in range(test.n_test)])


def _network_dict(r: Retrained) -> dict[str, Any]:
    ratios = layer_ratios(r.point.extra["nonzero_per_layer"])
    return {**r.point.to_dict(), "test_accuracy": r.test["accuracy"],
            "test_loss": r.test["loss"], "layer_ratios": ratios,
            "max_layer_ratio": max(ratios)}


def network_measures(prefix: str, r: Retrained) -> dict[str, Measured]:
    """The published targets measured on one retrained network; claim names `prefix` + ..."""
    extra = r.point.extra
    counts, ratios = _layers(extra["nonzero_per_layer"]), layer_ratios(extra["nonzero_per_layer"])
    worst = int(np.argmax(ratios))
    return {
        f"{prefix}knee-accuracy": samples(r.correct,
                                          f"test accuracy {r.test['accuracy']:.4f}"),
        f"{prefix}knee-nonzero": single(
            max(ratios), f"nonzero {' / '.join(map(str, counts))}, ratios "
            f"{', '.join(f'{q:.3f}' for q in ratios)} (largest: dense layer {worst + 1})"),
        f"{prefix}knee-pruned": single(extra["pruned_fraction"],
                                       f"{extra['nonzero']} nonzero dense weights"),
    }


SMGD_LR_RULE = ("the largest learning rate whose short SMGD run is not trivial on validation "
                "(validation accuracy >= 2 / classes), else the smallest")


def choose_smgd_lr(train: Callable[[float], tuple[dict[str, Any], Any, Any]],
                   lrs: tuple[float, ...] | list[float], log: Callable[[str], None] = print
                   ) -> tuple[dict[str, Any], Any, Any]:
    """`SMGD_LR_RULE` over `lrs` (tried largest first; validation only): `train(lr)` returns
    (row with a "trivial" flag, network, coefficients) of one short SMGD run; the chosen run's
    triple comes back, its row listing every tried learning rate and whether it was trivial."""
    tried = []
    for lr in sorted(lrs, reverse=True):
        row, net, coeffs = train(lr)
        tried.append({"lr": lr, "trivial": row["trivial"],
                      "val_accuracy": row["val_accuracy"]})
        log(f"smgd ({row['variant']}, lr {lr:g}): validation CE {row['val_ce']:.4f}, "
            f"accuracy {row['val_accuracy']:.4f}, l1 {row['l1']:.4g}, nonzero {row['nonzero']}, "
            f"dominance gap {row['dominance_gap']:.4f}")
        if not row["trivial"]:
            break
        log(f"smgd ({row['variant']}): lr {lr:g} collapsed to a trivial network on validation"
            + ("; trying the next" if len(tried) < len(lrs) else "; none left"))
    row["lrs_tried"] = tried
    return row, net, coeffs


def _smgd_run(variant: str, lr: float, s: ParetoSettings, model_fn, train_val, front_pts,
              knee: FrontPoint, num_classes: int, progress: bool | None
              ) -> tuple[dict[str, Any], torch.nn.Module, Any]:
    """One short SMGD run measured on the validation split (no test data)."""
    t0 = time.perf_counter()
    cfg = SMGDConfig(epochs=s.short_epochs, batch_size=s.batch_size, optimizer=variant,
                     lr=lr, seed=s.seed, tau=s.method_options["tau"],
                     conv_l2=s.method_options["conv_l2"])
    m = model_fn()
    res = train_smgd(m, train_val, cfg, progress=progress)
    val = evaluate(m, train_val.x_test, train_val.y_test)
    dense = {n: p for n, p in m.named_parameters() if n in knee.extra["nonzero_per_layer"]}
    nz = {n: int(p.detach().ne(0).sum()) for n, p in dense.items()}
    point = (val["loss"], res.final["l1"])
    row = {
        "variant": variant, "lr": lr, "val_ce": val["loss"], "l1": res.final["l1"],
        "val_accuracy": val["accuracy"], "test_accuracy": None,
        "nonzero": sum(nz.values()), "nonzero_per_layer": nz,
        "pruned_fraction": 1 - sum(nz.values()) / sum(p.numel() for p in dense.values()),
        "dominance_gap": dominance_gap(point, front_pts),
        "trivial": bool(val["accuracy"] < 2.0 / num_classes),
        "c1_mean": float(np.mean(res.coefficients)),
        "c1_min": float(np.min(res.coefficients)), "c1_max": float(np.max(res.coefficients)),
        "steps": len(res.coefficients), "seconds": time.perf_counter() - t0,
    }
    return row, m, res.coefficients


def measure(retrained: dict[str, Retrained], search: KneeSearch,
            smgd_rows: list[dict[str, Any]]) -> dict[str, Measured]:
    """What each declared claim (`CLAIMS`) measured; `retrained` maps a claim-name prefix
    ("" for the paper's protocol, `VARIANT`) to its network."""
    out: dict[str, Measured] = {"knee-budget": single(search.runs)}
    for prefix, r in retrained.items():
        out.update(network_measures(prefix, r))
    for row in smgd_rows:
        if row["trivial"]:  # not dominated only because nothing is left: no evidence
            lrs = ", ".join(f"{t['lr']:g}" for t in row.get("lrs_tried", [row]))
            out[f"smgd-{row['variant']}"] = missing(
                f"SMGD collapsed to a trivial network at every learning rate tried ({lrs}; "
                f"validation accuracy {row['val_accuracy']:.2%}): the dominance claim "
                f"would hold vacuously (gap {row['dominance_gap']:.4f})")
        else:
            out[f"smgd-{row['variant']}"] = single(row["dominance_gap"])
    return out


TABLE_COLUMNS = ["solution", "test_accuracy", "dense_1", "dense_2", "dense_3", "nonzero",
                 "pruned", "max_layer_ratio"]


def _row(solution: str, accuracy: float, layers: list[int], pruned: float) -> dict[str, Any]:
    return {"solution": solution, "test_accuracy": accuracy, "dense_1": layers[0],
            "dense_2": layers[1], "dense_3": layers[2], "nonzero": sum(layers),
            "pruned": pruned, "max_layer_ratio": max(layer_ratios(layers))}


def _comparison_table(paper: Retrained, variant: Retrained, label: str, smgd_rows):
    ref_nz = REFERENCE["nonzero_per_layer"]
    rows = [_row("reference (Reiners et al.)", REFERENCE["test_accuracy"], ref_nz,
                 1 - sum(ref_nz) / REFERENCE["dense_weights"])]
    for name, r in ((f"knee, paper protocol (lambda={paper.point.weight:.6g})", paper),
                    (f"variant: {label}", variant)):
        rows.append(_row(name, r.test["accuracy"], _layers(r.point.extra["nonzero_per_layer"]),
                         r.point.extra["pruned_fraction"]))
    for r in smgd_rows:
        rows.append(_row(f"SMGD ({r['variant']}, short budget)", r["test_accuracy"],
                         list(r["nonzero_per_layer"].values()), r["pruned_fraction"]))
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
    main = [v for v in verdicts if not v.claim.name.startswith(VARIANT)]
    variant = [v for v in verdicts if v.claim.name.startswith(VARIANT)]
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
        f"short runs: {s.short_epochs} epochs, batch {s.batch_size}, Adam lr {s.lr}. The knee "
        f"is retrained by the paper's protocol: {s.full_epochs} epochs of the weighted sum at "
        "its lambda from a fresh initialisation, constant learning rate, nothing else; the "
        "main claims judge this network. Weighted sum lambda (CE + L2 conv, "
        f"conv_l2={s.method_options['conv_l2']}) + (1 - lambda) l1 of the dense kernels, "
        f"trained as CE + ((1-lambda)/lambda) l1; weights with |w| <= tau = "
        f"{s.method_options['tau']} zeroed after every minibatch. Front and knee are measured "
        "on validation data; test accuracy only for the retrained knee networks and SMGD.",
        "",
        "## Claims",
        "",
        "Targets: the published network (Reiners et al.), >= 98.9% test accuracy with at most "
        f"{_LIMITS} nonzero weights in the three dense layers (the per-layer claim is the "
        "largest ratio nonzero / limit over the layers, <= 1), plus the project's >= 95% "
        "pruned (METHODS section 6).",
        "",
        claims_markdown(main, results["quick"]),
        "",
        f"## Variant: {variant_label(s)}",
        "",
        f"The same weighted-sum run's weights after {s.full_epochs - s.finetune_epochs} "
        f"epochs, then {s.finetune_epochs} epoch(s) of CE only with the dense zeros frozen "
        f"(persistent mask, l1 term off, thresholding off, fresh Adam moments, "
        f"{s.finetune_lr_schedule} learning rate). This stage is not in the paper: it was "
        "added after the paper's protocol missed its accuracy target on test "
        "(docs/claims-history.md). Its claims are the same targets, labelled \"variant:\".",
        "",
        claims_markdown(variant, results["quick"]),
        "",
        _variant_line(results["knee"], s),
        "",
        "## Test-set firewall",
        "",
        *fw.report_lines(),
        "",
        "## Against the reference",
        "",
        markdown_table(results["table"], TABLE_COLUMNS),
        "",
        "max_layer_ratio: the largest nonzero / reference count over the three dense layers "
        f"({_LIMITS}); <= 1 meets the published per-layer counts.",
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
        "but it is no useful network; its claim is then not measured). Learning rates, on "
        f"validation before the freeze: SGD {s.smgd_lr:g} (fixed); Adam by the rule "
        f"\"{SMGD_LR_RULE}\" over {', '.join(f'{lr:g}' for lr in s.smgd_adam_lrs)}: "
        + "; ".join(f"{r['variant']} tried " + ", ".join(
            f"{t['lr']:g} ({'trivial' if t['trivial'] else 'not trivial'})"
            for t in r.get("lrs_tried", [])) for r in results["smgd"]) + ".",
        "",
        *[f"![{Path(f).stem}]({f})" for f in results["figures"]],
        "",
        f"Total time: {results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU "
        f"(search {results['search_seconds']:.0f} s, "
        f"grid {results['grid_seconds']:.0f} s, knee retrain {results['retrain_seconds']:.0f} s).",
        "",
    ]
    return "\n".join(lines)


def _variant_line(knee: dict[str, Any], s: ParetoSettings) -> str:
    paper, variant = knee["paper"], knee["variant"]
    before = variant["before_finetune"]
    ws = s.full_epochs - s.finetune_epochs
    return (f"Validation split: the weighted sum reaches accuracy {before['val_accuracy']:.4f} "
            f"with {before['nonzero']} nonzero dense weights after {ws} epochs; the paper's "
            f"protocol continues it to {s.full_epochs} epochs: {paper['val_accuracy']:.4f} with "
            f"{paper['nonzero']} nonzero; the variant fine-tunes it instead for "
            f"{s.finetune_epochs}: {variant['val_accuracy']:.4f} with {variant['nonzero']} "
            "nonzero (the mask is frozen).")
