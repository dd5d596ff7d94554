"""Reproduction of Evci (2018) / Mean Replacement Pruning on MNIST (conv-small, LeNet-300-100).

Protocol (choices where the thesis leaves room are stated in the report):
1. Train each dense network (Adam 1e-3) on MNIST minus a seeded validation split.
2. Unit scores (MRS, removal saliency, incoming-weight norm, random over 3 seeds, the exact
   mean-replacement oracle) on a training subset; for each fraction f the lowest-scoring f of
   each hidden layer's units are removed by `prunelab.shrink`, with mean replacement (bias
   propagation) and with plain removal; the test-loss increase over the dense net is recorded.
3. Parameter scores (magnitude, Taylor-1 signed and absolute, Taylor-2, random): the same for a
   fraction of each layer's weights set to zero (absolute vs signed Taylor).
4. Iterative pruning: each round removes `round_fraction` of every hidden layer's units by MRS
   with mean replacement, physically shrinks the network and fine-tunes it with the dense
   run's Adam, whose moments `shrink_with_optimizer` carries over to the kept rows/columns.
   The rounds train at a constant learning rate, so each round's network is evaluated as a
   copy given a final fine-tune (`final_epochs`, learning rate decayed to 0 by a cosine, the
   same seeded data order every time); the dense reference is a copy of the dense network with
   the same final fine-tune, so both sides of the comparison are trained alike. A round is
   accepted when its validation accuracy drop below the reference, plus one standard error of
   that drop (paired over the validation images, `paired_se`), is at most 0.5 points: a
   validation drop just under 0.5 points is as likely as not a true drop above it. A round
   that fails is discarded and the path is retried from the last accepted network (before its
   final fine-tune) with half the fraction, twice at most. The last accepted network's test
   accuracy decides the ">= 5x fewer parameters within 0.5 points" claim; the test set never
   selects anything.

Test-set firewall (`prunelab.firewall`): MNIST is loaded with its test split sealed; the dense
networks are trained and the iterative path is chosen on the validation split only, then the
choices are frozen, and only then are the test numbers measured (the loss increases of steps
2-3 and every round's test accuracy), each access recorded in results.json. Claims are declared
in `CLAIMS` and judged by `prunelab.claims`; the accuracy claim takes a paired bootstrap over
the test images (one training run: seed-to-seed variation is not in the interval).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunelab import atomic
from prunelab.claims import (
    Claim,
    Measured,
    claims_markdown,
    declare,
    judge_all,
    log_lines,
    paired,
    single,
)
from prunelab.data import Dataset
from prunelab.firewall import Firewall
from prunelab.masks import apply_masks
from prunelab.models import build_model, count_parameters
from prunelab.report import figure_title, markdown_table, new_figure, save_figure, text_table
from prunelab.scores import dead_units, parameter_scores, select_units, unit_means, unit_scores
from prunelab.selection import select_masks
from prunelab.shrink import shrink, shrink_with_optimizer, widths
from prunelab.threads import torch_threads
from prunelab.train import evaluate

MODELS = ("conv-small", "lenet-300-100")
UNIT_SCORE_NAMES = ("mrs", "removal", "norm", "random", "oracle")
PARAM_SCORE_NAMES = ("magnitude", "taylor1", "taylor1-abs", "taylor2", "random")
BAND = 0.005  # 0.5 accuracy points
TARGET_RATIO = 5.0


def _model_claims(m: str) -> list[Claim]:
    every = "share of the fractions at which it holds"
    return [
        Claim(f"{m}:mrs-vs-norm", f"{m}: MRS-chosen units hurt the loss less than norm-chosen "
              "ones (every fraction)", "test-loss increase after removing a fraction of each "
              "layer's units, mean replacement", f"{every}: MRS <= norm", ">=", 1.0, "single",
              source="METHODS 2 targets"),
        Claim(f"{m}:mrs-vs-random", f"{m}: MRS-chosen units hurt the loss less than "
              "random-chosen ones (every fraction)", "the same, random scores: mean of 3 seeds",
              f"{every}: MRS <= random", ">=", 1.0, "single", source="METHODS 2 targets"),
        Claim(f"{m}:mean-replacement", f"{m}: mean replacement beats plain removal at every "
              "fraction", "test-loss increase, MRS-chosen units removed both ways",
              f"{every}: mean replacement < removal", ">=", 1.0, "single",
              source="METHODS 2 targets"),
        Claim(f"{m}:taylor-abs", f"{m}: absolute Taylor scores beat signed ones (every "
              "sparsity)", "test-loss increase after zeroing a fraction of each layer's weights",
              "share of the sparsities at which |Taylor-1| < signed Taylor-1", ">=", 1.0,
              "single", source="METHODS 2 targets"),
        Claim(f"{m}:size", f"{m}: >= 5x fewer parameters (the network chosen on validation)",
              "parameters of the dense network / of the chosen one", "ratio", ">=",
              TARGET_RATIO, "single", quick_expected=False,
              source="METHODS 2 targets; quick: dense nets trained 4 epochs on 12k images"),
        Claim(f"{m}:accuracy", f"{m}: the chosen network is within 0.5 points of dense test "
              "accuracy", "test accuracy in points, paired by test image; dense after the same "
              "final fine-tune", "dense - chosen", "<=", 100 * BAND, "paired_bootstrap", n=1,
              unit="test images (one training run)", quick_expected=False,
              source="METHODS 2 targets"),
    ]


CLAIMS = declare(*[c for m in MODELS for c in _model_claims(m)])


@dataclass
class Settings:
    """Sizes of one run (quick or full)."""

    n_train: int | None
    n_test: int | None
    n_val: int
    dense_epochs: int
    finetune_epochs: int
    max_rounds: int
    round_fraction: float
    score_samples: int
    fractions: tuple[float, ...]
    sparsities: tuple[float, ...]
    max_halvings: int = 2  # after a round leaves the band, retry with half the fraction
    final_epochs: int = 1  # fine-tune (cosine decay to 0) before evaluating a round / dense
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(n_train=12000, n_test=5000, n_val=2000, dense_epochs=4,
                        finetune_epochs=1, max_rounds=10, round_fraction=0.25,
                        score_samples=1000, fractions=(0.1, 0.25, 0.5, 0.75),
                        sparsities=(0.25, 0.5, 0.75, 0.9))
    return Settings(n_train=None, n_test=None, n_val=10000, dense_epochs=10, finetune_epochs=2,
                    max_rounds=14, round_fraction=0.2, score_samples=2000,
                    fractions=(0.05, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9),
                    sparsities=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95))


def _split(data: Dataset, n_val: int, seed: int) -> Dataset:
    """The training set minus `n_val` examples (a seeded permutation), which take the test
    split's place: everything chosen on it never sees the test set."""
    perm = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))
    val, tr = perm[:n_val], perm[n_val:]
    return Dataset(data.name, data.x_train[tr], data.y_train[tr], data.x_train[val],
                   data.y_train[val], data.num_classes, data.feature_names,
                   data.relevant_features, data.class_names,
                   dict(data.meta, evaluation="validation", validation=n_val))


def _fit(model: nn.Module, opt: torch.optim.Optimizer, data: Dataset, epochs: int,
         s: Settings, gen: torch.Generator, *, decay: bool = False) -> nn.Module:
    """Minibatch training with a given optimizer, so its state (Adam moments) carries over
    from the dense network through every shrink (`shrink_with_optimizer`); a fresh Adam on an
    already trained network takes large first steps that cost accuracy. With `decay` the
    learning rate follows a cosine from `s.lr` to 0 over the epochs."""
    model.train()
    n = data.n_train
    total, step = epochs * math.ceil(n / s.batch_size), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(0, n, s.batch_size):
            if decay:
                for group in opt.param_groups:
                    group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            idx = order[b : b + s.batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return model.eval()


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness (bool) of `model` on (x, y), in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + 2048]).argmax(dim=1) == y[i : i + 2048]
                      for i in range(0, x.shape[0], 2048)])


def paired_se(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """Standard error of the accuracy difference of two models scored on the same samples
    (paired: only the samples where they disagree contribute)."""
    d = correct_a.double() - correct_b.double()
    return math.sqrt(float(d.var(unbiased=False)) / max(d.numel(), 1))


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return evaluate(model, x, y)["loss"]


def unit_curves(model, batch, x_eval, y_eval, s: Settings, log) -> dict[str, Any]:
    """Loss increase after removing a fraction f of each layer's units, per score, with mean
    replacement and with plain removal."""
    base = _loss(model, x_eval, y_eval)
    means = unit_means(model, batch)
    score_sets: dict[str, list[dict[str, torch.Tensor]]] = {}
    for name in UNIT_SCORE_NAMES:
        if name == "random":
            score_sets[name] = [unit_scores(model, None, "random", seed=k) for k in range(3)]
        else:
            score_sets[name] = [unit_scores(model, batch, name, means=means)]
    rows = []
    for f in s.fractions:
        for name, sets in score_sets.items():
            mean_rep, removal = [], []
            for sc in sets:
                um = select_units(sc, fraction=f, scope="layer")
                mean_rep.append(_loss(shrink(model, um, means=means), x_eval, y_eval) - base)
                removal.append(_loss(shrink(model, um), x_eval, y_eval) - base)
            rows.append({"fraction": f, "score": name,
                         "mean_replacement": sum(mean_rep) / len(mean_rep),
                         "removal": sum(removal) / len(removal)})
    log(text_table(rows, ["fraction", "score", "mean_replacement", "removal"]))
    return {"base_loss": base, "rows": rows}


def param_curves(model, batch, x_eval, y_eval, s: Settings, log) -> dict[str, Any]:
    """Loss increase after zeroing a fraction of each layer's weights, per parameter score."""
    base = _loss(model, x_eval, y_eval)
    scores = {name: parameter_scores(model, batch, name) for name in PARAM_SCORE_NAMES}
    rows = []
    for sp in s.sparsities:
        for name, sc in scores.items():
            masks = select_masks(sc, sparsity=sp, scope="layer")
            pruned = _copy(model)
            apply_masks(pruned, masks)
            rows.append({"sparsity": sp, "score": name,
                         "loss_increase": _loss(pruned, x_eval, y_eval) - base})
    log(text_table(rows, ["sparsity", "score", "loss_increase"]))
    return {"base_loss": base, "rows": rows}


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def iterative(model, opt, sel: Dataset, s: Settings, gen: torch.Generator, log
              ) -> tuple[dict[str, Any], list[nn.Module]]:
    """Rounds of MRS unit pruning with mean replacement, shrink, fine-tune; each round's network
    and the dense one are judged after the same final fine-tune; accept a round while its
    validation drop plus one standard error stays within 0.5 points of the dense reference.
    `sel` trains on its training part and validates on its test part (the validation split).
    Returns the path and, per round, the network after its final fine-tune (for the test
    numbers, measured once the choice is frozen: `test_rounds`)."""
    dense_params = count_parameters(model)
    ref = final_finetune(model, opt, sel, s)
    log(f"dense after the final fine-tune: val {ref['val_accuracy']:.4f} "
        f"(before: val {ref['val_before_final']:.4f})")
    rounds = [{"round": 0, "params": dense_params, "widths": widths(model), "val_se": 0.0,
               **_public(ref), "within_band": True}]
    nets = [ref["net"]]
    best, current, best_opt = rounds[0], model, opt
    fraction, halvings = s.round_fraction, 0
    for r in range(1, s.max_rounds + 1):
        idx = torch.randperm(sel.n_train, generator=gen)[: s.score_samples]
        batch = (sel.x_train[idx], sel.y_train[idx])
        scores = unit_scores(current, batch, "mrs")
        um = select_units(scores, fraction=fraction, scope="layer")
        if all(bool(m.all()) for m in um.values()):
            log(f"round {r}: no layer can lose a unit at fraction {fraction:.3f}")
            break
        # shrink_with_optimizer leaves `best_opt` intact, so a failed round can be retried
        small, new_opt = shrink_with_optimizer(current, um, best_opt,
                                               means=unit_means(current, batch))
        _fit(small, new_opt, sel, s.finetune_epochs, s, gen)
        ev = final_finetune(small, new_opt, sel, s)
        se = paired_se(ev["val_correct"], ref["val_correct"])
        ok = ref["val_accuracy"] - ev["val_accuracy"] + se <= BAND
        row = {"round": r, "fraction": fraction, "params": count_parameters(small),
               "widths": widths(small), "val_se": se, **_public(ev), "within_band": ok}
        rounds.append(row)
        nets.append(ev["net"])
        log(f"round {r} (fraction {fraction:.3f}): params {row['params']} "
            f"({dense_params / row['params']:.1f}x fewer) val acc {row['val_accuracy']:.4f} "
            f"(se {se:.4f}) widths {row['widths']}")
        if ok:
            best, current, best_opt = row, small, new_opt
        elif halvings < s.max_halvings:
            fraction, halvings = fraction / 2, halvings + 1  # retry from the last good net
        else:
            break
    accepted = sum(1 for r in rounds[1:] if r["within_band"] and r["round"] <= best["round"])
    return {
        "chosen_training_epochs": s.dense_epochs + s.finetune_epochs * accepted + s.final_epochs,
        "dense_params": dense_params, "dense_val_accuracy": ref["val_accuracy"],
        "rounds": rounds, "chosen": best, "param_ratio": dense_params / best["params"],
    }, nets


def test_rounds(it: dict[str, Any], dense: nn.Module, nets: list[nn.Module],
                test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """After the choice is frozen: every round's test accuracy (its network after the final
    fine-tune) and the drops of the chosen one, written into `it`; returns the per-image
    correctness of the dense reference and of the chosen network (for the paired claim)."""
    correct = [_correct(net, test.x_test, test.y_test) for net in nets]
    for row, c in zip(it["rounds"], correct):
        row["test_accuracy"] = float(c.double().mean())
    chosen = next(i for i, r in enumerate(it["rounds"]) if r is it["chosen"])
    ref, best = it["rounds"][0]["test_accuracy"], it["chosen"]["test_accuracy"]
    before = evaluate(dense, test.x_test, test.y_test)["accuracy"]
    it.update(dense_test_accuracy=ref, dense_test_before_final=before,
              test_drop_points=100 * (ref - best), test_drop_vs_dense_points=100 * (before - best))
    return correct[0], correct[chosen]


def _public(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k not in ("val_correct", "net")}


def final_finetune(net: nn.Module, opt: torch.optim.Optimizer, sel: Dataset,
                   s: Settings) -> dict[str, Any]:
    """Evaluate `net` as if training stopped here: a copy (with its optimizer state) trained
    `final_epochs` more on `sel`'s training part with the learning rate decayed to 0, the same
    seeded data order for every network; its validation correctness and accuracy (on `sel`'s
    test part, the validation split), the validation accuracy before the fine-tune, and the
    fine-tuned copy (`net`). The given `net` and `opt` are left untouched."""
    before = evaluate(net, sel.x_test, sel.y_test)["accuracy"]
    net, opt = copy.deepcopy((net, opt))
    _fit(net, opt, sel, s.final_epochs, s, torch.Generator().manual_seed(s.seed + 1),
         decay=True)
    correct = _correct(net, sel.x_test, sel.y_test)
    return {"val_correct": correct, "val_accuracy": float(correct.double().mean()),
            "val_before_final": before, "net": net}


@torch_threads(1)  # the documented full runs used one thread; more only spin on a busy box
def run(out: Path, *, quick: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the reproduction and write report.md, results.json and figures/ into `out`
    (single-threaded, the thread count restored after)."""
    s = settings(quick)
    start = time.perf_counter()
    fw = Firewall("dead-units")
    data = fw.load("mnist", seed=s.seed, n_train=s.n_train, n_test=s.n_test)
    sel = _split(data, s.n_val, s.seed)
    results: dict[str, Any] = {"settings": dataclasses.asdict(s), "models": {}}
    kept: dict[str, tuple] = {}
    for name in MODELS:  # selection: validation data only
        t0 = time.perf_counter()
        torch.manual_seed(s.seed)
        model = build_model(name, data.input_shape, data.num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=s.lr)
        gen = torch.Generator().manual_seed(s.seed)
        _fit(model, opt, sel, s.dense_epochs, s, gen)
        log(f"{name}: dense validation accuracy "
            f"{evaluate(model, sel.x_test, sel.y_test)['accuracy']:.4f}")
        idx = torch.randperm(sel.n_train, generator=torch.Generator().manual_seed(1))
        batch = (sel.x_train[idx[: s.score_samples]], sel.y_train[idx[: s.score_samples]])
        it, nets = iterative(model, opt, sel, s, gen, log)
        entry = {"dead_units": dead_units(model, batch, tol=1e-4), "iterative": it}
        for layer in entry["dead_units"].values():
            layer.pop("dead_indices")
        results["models"][name] = entry
        kept[name] = (model, batch, nets, time.perf_counter() - t0)
    fw.freeze(chosen={n: {k: e["iterative"]["chosen"][k] for k in ("round", "params", "widths")}
                      for n, e in results["models"].items()},
              rule="last round whose validation drop below the dense reference (both after "
                   "the same final fine-tune) plus one paired standard error is <= 0.5 points",
              n_val=s.n_val, lr=s.lr, dense_epochs=s.dense_epochs)
    correct: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, entry in results["models"].items():  # the final numbers: test data, once
        t0 = time.perf_counter()
        model, batch, nets, secs = kept[name]
        it = entry["iterative"]
        test = fw.test(data, f"{name}: the dense network and every round's network after its "
                       "final fine-tune", "test accuracy", count=len(nets) + 1)
        correct[name] = test_rounds(it, model, nets, test)
        log(f"{name}: chosen round {it['chosen']['round']}, {it['param_ratio']:.2f}x fewer "
            f"parameters, test accuracy {it['chosen']['test_accuracy']:.4f} vs dense "
            f"{it['dense_test_accuracy']:.4f}")
        test = fw.test(data, f"{name}: dense network with units removed per score and "
                       "fraction, weights zeroed per score and sparsity", "test loss",
                       count=len(s.fractions) * 7 * 2 + len(s.sparsities) * 5 + 2)
        entry["units"] = unit_curves(model, batch, test.x_test, test.y_test, s, log)
        entry["params"] = param_curves(model, batch, test.x_test, test.y_test, s, log)
        entry["seconds"] = secs + time.perf_counter() - t0
    verdicts = judge_all(CLAIMS, measure(results["models"], correct))
    results["claims"] = [v.to_dict() for v in verdicts]
    results["seconds"] = time.perf_counter() - start
    results.update(fw.to_results())
    with atomic.staged_directory(out) as stage:
        figures = _figures(stage, results["models"],
                           f"dead-units{' (quick)' if quick else ''}: {s.dense_epochs} dense "
                           f"epochs, {s.max_rounds} rounds of {s.round_fraction:g}")
        results["figures"] = figures
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results, figures, quick, verdicts, fw))
    for line in log_lines(verdicts, quick):
        log(line)
    log(f"dead-units: {results['seconds']:.0f} s")
    return results


# ----------------------------------------------------------------------------- claims


def _by(rows, key, score, value):
    return {r[key]: r[value] for r in rows if r["score"] == score}


def _share(wins: list, total: list) -> float:
    return len(wins) / len(total) if total else float("nan")


def measure(models: dict[str, Any], correct: dict[str, tuple[torch.Tensor, torch.Tensor]]
            ) -> dict[str, Measured]:
    """What each declared claim (`CLAIMS`) measured: per model, the share of fractions /
    sparsities where a comparison holds, the size ratio, and the dense reference's and the
    chosen network's correctness per test image (in points) for the paired accuracy claim."""
    out: dict[str, Measured] = {}
    for name, e in models.items():
        urows = e["units"]["rows"]
        mrs = _by(urows, "fraction", "mrs", "mean_replacement")
        fr = sorted(mrs)
        for other in ("norm", "random"):
            o = _by(urows, "fraction", other, "mean_replacement")
            wins = [f for f in fr if mrs[f] <= o[f]]
            out[f"{name}:mrs-vs-{other}"] = single(
                _share(wins, fr), f"{len(wins)}/{len(fr)} fractions; loss increase MRS vs "
                f"{other}: " + ", ".join(f"f={f}: {mrs[f]:.4f} vs {o[f]:.4f}" for f in fr))
        rem = _by(urows, "fraction", "mrs", "removal")
        wins = [f for f in fr if mrs[f] < rem[f]]
        every = [r for r in urows if r["mean_replacement"] < r["removal"]]
        out[f"{name}:mean-replacement"] = single(
            _share(wins, fr), f"{len(wins)}/{len(fr)} fractions; all scores: {len(every)}/"
            f"{len(urows)} (score, fraction) pairs")
        prow = e["params"]["rows"]
        sg = _by(prow, "sparsity", "taylor1", "loss_increase")
        ab = _by(prow, "sparsity", "taylor1-abs", "loss_increase")
        sps = sorted(sg)
        wins = [sp for sp in sps if ab[sp] < sg[sp]]
        out[f"{name}:taylor-abs"] = single(
            _share(wins, sps), f"{len(wins)}/{len(sps)} sparsities; " + ", ".join(
                f"{sp}: {ab[sp]:.4f} vs {sg[sp]:.4f}" for sp in sps))
        it = e["iterative"]
        out[f"{name}:size"] = single(
            it["param_ratio"], f"{it['chosen']['params']} of {it['dense_params']} parameters "
            f"(round {it['chosen']['round']})")
        if name in correct:
            ref, chosen = correct[name]
            out[f"{name}:accuracy"] = paired(
                (100 * ref.double()).tolist(), (100 * chosen.double()).tolist(),
                f"test accuracy {it['chosen']['test_accuracy']:.4f} vs dense "
                f"{it['dense_test_accuracy']:.4f} ({it['test_drop_vs_dense_points']:.2f} points "
                "vs the dense net before its final fine-tune)")
    return out


# ----------------------------------------------------------------------------- output


def _plot_by_score(ax, rows: list[dict[str, Any]], scores, x: str, y: str, title: str,
                   xlabel: str) -> None:
    """One line per score: test loss increase (`y`) against `x`, symlog scale."""
    for score in scores:
        pts = sorted((r[x], r[y]) for r in rows if r["score"] == score)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=score)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set(title=title, xlabel=xlabel, ylabel="test loss increase")
    ax.legend(fontsize=8)


def _figures(stage: Path, models: dict[str, Any], title: str = "dead-units") -> list[str]:
    (stage / "figures").mkdir()
    files = []
    for name, e in models.items():
        fig, axes = new_figure(2, size=(5.2, 3.8))
        for ax, kind, title in ((axes[0][0], "mean_replacement", "mean replacement"),
                                (axes[0][1], "removal", "plain removal")):
            _plot_by_score(ax, e["units"]["rows"], UNIT_SCORE_NAMES, "fraction", kind,
                           f"{name}: {title}", "fraction of units removed per layer")
        path = f"figures/units_{name}.png"
        figure_title(fig, title)
        save_figure(fig, stage / path)
        files.append(path)
        fig, axes = new_figure(1)
        _plot_by_score(axes[0][0], e["params"]["rows"], PARAM_SCORE_NAMES, "sparsity",
                       "loss_increase", f"{name}: weight scores",
                       "fraction of weights zeroed per layer")
        path = f"figures/weights_{name}.png"
        figure_title(fig, title)
        save_figure(fig, stage / path)
        files.append(path)
        fig, axes = new_figure(1)
        ax = axes[0][0]
        it = e["iterative"]
        ok = [r for r in it["rounds"] if r["within_band"]]
        bad = [r for r in it["rounds"] if not r["within_band"]]
        for key, marker, label in (("test_accuracy", "o", "test"),
                                   ("val_accuracy", "s", "validation")):
            line = ax.plot([it["dense_params"] / r["params"] for r in ok],
                           [r[key] for r in ok], marker=marker, label=f"{label} (kept)")
            ax.scatter([it["dense_params"] / r["params"] for r in bad], [r[key] for r in bad],
                       marker="x", color=line[0].get_color(), label=f"{label} (rejected)")
        ax.axhline(it["dense_val_accuracy"] - BAND, color="k", ls="--",
                   label="dense validation - 0.5 pt")
        ax.axvline(TARGET_RATIO, color="gray", ls=":", label="5x")
        ax.set(title=f"{name}: iterative MRS pruning", xlabel="parameter reduction (x)",
               ylabel="accuracy")
        ax.legend(fontsize=8)
        path = f"figures/iterative_{name}.png"
        figure_title(fig, title)
        save_figure(fig, stage / path)
        files.append(path)
    return files


def _report(results: dict[str, Any], figures: list[str], quick: bool, verdicts,
            fw: Firewall) -> str:
    s = results["settings"]
    lines = [
        "# Dead units, saliency scores and mean replacement (Evci 2018)",
        "",
        f"Mode: {'quick' if quick else 'full'}; MNIST train {s['n_train'] or 60000} "
        f"(minus {s['n_val']} validation), test {s['n_test'] or 10000}; Adam lr {s['lr']}, "
        f"batch {s['batch_size']}; dense {s['dense_epochs']} epochs; scores on "
        f"{s['score_samples']} training samples; loss increases on the test set. Time: "
        f"{results['seconds']:.0f} s.",
        "",
        "## Claims",
        "",
        claims_markdown(verdicts, quick),
        "",
        "## Test-set firewall",
        "",
        *fw.report_lines(),
        "",
    ]
    for name, e in results["models"].items():
        it = e["iterative"]
        lines += [
            f"## {name}",
            "",
            "Dead units of the dense network (MRS <= 1e-4, i.e. replacing the unit by its mean "
            "changes the per-sample loss by less than 1e-4 on average; constant: output std "
            "<= 1e-4):",
            "",
            markdown_table([{"layer": k, **v} for k, v in e["dead_units"].items()],
                           ["layer", "units", "dead", "dead_fraction", "constant"]),
            "",
            "Test-loss increase after removing a fraction of each layer's units (random: mean "
            "of 3 seeds):",
            "",
            markdown_table(e["units"]["rows"], ["fraction", "score", "mean_replacement",
                                                "removal"]),
            "",
            "Test-loss increase after zeroing a fraction of each layer's weights:",
            "",
            markdown_table(e["params"]["rows"], ["sparsity", "score", "loss_increase"]),
            "",
            f"Iterative MRS pruning with mean replacement ({s['round_fraction']:.0%} of each "
            f"layer's units per round, physical shrink, {s['finetune_epochs']} fine-tuning "
            "epoch(s) per round with the Adam state carried over). Every network, the dense "
            f"one included, is judged as a copy given a final fine-tune ({s['final_epochs']} "
            f"epoch(s), learning rate decayed from {s['lr']} to 0 by a cosine, the same data "
            "order for all); `val_before_final` is its validation accuracy before it. A round "
            "is accepted when its validation drop below the dense reference plus one standard "
            f"error of that drop (paired over the {s['n_val']} validation images, `val_se`) is "
            "at most 0.5 points; a rejected round is retried from the last accepted network "
            f"with half the fraction, at most {s['max_halvings']} times. The test column is "
            "shown, never used for a choice:",
            "",
            markdown_table([{**r, "widths": str(list(r["widths"].values()))}
                            for r in it["rounds"]],
                           ["round", "fraction", "params", "widths", "val_before_final",
                            "val_accuracy", "val_se", "test_accuracy", "within_band"]),
            "",
            f"Chosen: round {it['chosen']['round']}, {it['chosen']['params']} parameters "
            f"({it['param_ratio']:.2f}x fewer than {it['dense_params']}), test accuracy "
            f"{it['chosen']['test_accuracy']:.4f} vs dense {it['dense_test_accuracy']:.4f} "
            f"(drop {it['test_drop_points']:.2f} points; the dense network before its final "
            f"fine-tune: test {it['dense_test_before_final']:.4f}, drop "
            f"{it['test_drop_vs_dense_points']:.2f}). The chosen network was trained "
            f"{it['chosen_training_epochs']} epochs in all (dense {s['dense_epochs']} + "
            f"fine-tuning), the reference {s['dense_epochs']} + {s['final_epochs']}: where the "
            "dense net is not converged (quick mode) the extra epochs favour the pruned one.",
            "",
        ]
        lines += [f"![{Path(f).stem}]({f})" for f in figures if name in f]
        lines.append("")
    return "\n".join(lines)
