"""Reproduction of Sagun et al., "Empirical Analysis of the Hessian of Over-Parametrized Neural
Networks" (arXiv 1706.04454), as set out in section 4 of METHODS.md.

Parts: (A) Gaussian blobs with k in {2, 3, 5, 10}: a bulk at ~0 plus k-1 or k outliers in the
exact spectrum; (B) doubling the width moves the top-k eigenvalues by < 30% and grows the
near-zero fraction; (C) less separable data shrinks the outliers, bulk unchanged; (D) the
Gauss-Newton part G and H agree on the top eigenvalues at convergence; (E) large-batch then
small-batch training climbs uphill then down, while the straight line between the two
solutions has no barrier; (F) MNIST 1k-subset, one hidden layer of width 10-70: outliers and
top eigenvalues by Lanczos (skipped with a note when MNIST is not found).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from prunelab import atomic
from prunelab.claims import Claim, Measured, claims_markdown, declare, judge_all, missing, single
from prunelab.data import load_dataset
from prunelab.errors import DataError
from prunelab.firewall import Firewall
from prunelab.landscape import spectrum as S
from prunelab.landscape.hessian import HessianOperator
from prunelab.report import markdown_table, new_figure, save_figure
from prunelab.threads import torch_threads

KS = (2, 3, 5, 10)
WIDTHS = (10, 5)
LR = 0.1
GRAD_TOL = 1e-4
INIT_STD = 0.1

_ALL_K = "share of k in {2, 3, 5, 10} for which it holds"
_SINGLE = "exact spectrum, one seed per k"
_CONVERGED = "quick: gradient descent stops far from convergence"
CLAIMS = declare(
    Claim("outliers", "k clusters give k-1 or k outliers (largest log-gap rule)", _SINGLE,
          _ALL_K, ">=", 1.0, "single", quick_expected=False, source=f"METHODS 4; {_CONVERGED}"),
    Claim("width-top", "doubling the width moves the top-k eigenvalues by < 30%", _SINGLE,
          "largest relative change over k", "<", 0.30, "single", quick_expected=False,
          source=f"METHODS 4; {_CONVERGED}"),
    Claim("width-near-zero", "doubling the width grows the near-zero fraction", _SINGLE, _ALL_K,
          ">=", 1.0, "single", source="METHODS 4"),
    Claim("separability-shrink", "less separable data shrinks the outliers", _SINGLE,
          "share of k in {3, 5} whose top eigenvalue falls", ">=", 1.0, "single",
          source="METHODS 4"),
    Claim("separability-bulk", "less separable data leaves the bulk unchanged", _SINGLE,
          "largest change of the near-zero fraction over k in {3, 5}", "<=", 0.10, "single",
          source="METHODS 4"),
    Claim("gauss-newton", "G and H top-k eigenvalues agree at convergence", _SINGLE,
          "largest relative difference over k", "<=", 0.10, "single", quick_expected=False,
          source=f"METHODS 4; {_CONVERGED}"),
    Claim("lb-sb-uphill", "large batch then small batch climbs uphill then down",
          "full-batch training loss during the small-batch phase",
          "min(climb above L(LB), descent below the peak)", ">", 0.0, "single",
          source="METHODS 4"),
    Claim("lb-sb-no-barrier", "the straight line LB -> SB has no barrier",
          "training loss along the line", "rise above its ends / max(L(LB), L(SB))", "<=",
          0.01, "single", source="METHODS 4"),
    Claim("mnist-outliers", "MNIST 1k, one hidden layer of width 10-70: 9 or 10 outliers",
          "top eigenvalues by Lanczos, one seed per width", "share of widths for which it holds",
          ">=", 1.0, "single", quick_expected=False, source=f"METHODS 4; {_CONVERGED}"),
)


def _mlp(d_in: int, k: int, widths: tuple[int, ...], seed: int) -> nn.Sequential:
    """ReLU MLP with weights N(0, 0.1^2) and zero biases (METHODS section 4)."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for w in widths:
        layers += [nn.Linear(d_in, w), nn.ReLU()]
        d_in = w
    layers.append(nn.Linear(d_in, k))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)
            else:
                p.zero_()
    return model


def _grad_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters()))


def train_gd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float = LR,
             tol: float = GRAD_TOL, max_steps: int = 20000,
             check_every: int = 10) -> dict[str, Any]:
    """Full-batch gradient descent until ||g|| <= tol (checked every `check_every` steps) or
    max_steps; returns the steps, gradient norm and loss reached."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gnorm, loss, step = math.inf, math.inf, 0
    for step in range(max_steps + 1):
        opt.zero_grad(set_to_none=True)
        loss_t = F.cross_entropy(model(x), y)
        loss_t.backward()
        if step % check_every == 0 or step == max_steps:  # the norm costs a sync per tensor
            gnorm, loss = _grad_norm(model), float(loss_t)
            if gnorm <= tol or step == max_steps:
                break
        opt.step()
    model.zero_grad(set_to_none=True)
    return {"steps": step, "grad_norm": gnorm, "loss": loss, "converged": gnorm <= tol}


def _blobs(k: int, seed: int, cluster_std: float = 1.0):
    return load_dataset("blobs", n_clusters=k, n_train=100, cluster_std=cluster_std, seed=seed)


def _exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str = "hessian"):
    op = HessianOperator(model, x, y, dtype="float64", kind=kind)
    return S.exact_eigenvalues(op).values


def _top(ev: np.ndarray, k: int) -> np.ndarray:
    return np.sort(ev)[::-1][:k]


def _fmt_list(values, digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}g}" for v in values)


# ----------------------------------------------------------------------------- parts


def part_clusters(max_steps: int, seed: int, log) -> tuple[list[dict], dict]:
    """A and D: exact spectra of H and G for each k."""
    rows, spectra = [], {}
    for k in KS:
        data = _blobs(k, seed)
        model = _mlp(2, k, WIDTHS, seed)
        tr = train_gd(model, data.x_train, data.y_train, max_steps=max_steps)
        ev = _exact(model, data.x_train, data.y_train)
        g = _exact(model, data.x_train, data.y_train, "gauss-newton")
        out = S.count_outliers(ev)
        top_h, top_g = _top(ev, k), _top(g, k)
        rel = np.abs(top_g - top_h) / np.abs(top_h)
        rows.append({
            "k": k, "params": ev.size, "steps": tr["steps"], "grad_norm": tr["grad_norm"],
            "loss": tr["loss"], "outliers": out.n_outliers, "gap_ratio": out.gap_ratio,
            "top_eigs": _fmt_list(_top(ev, k + 1)), "near_zero": S.near_zero_fraction(ev),
            "G_vs_H_max_rel": float(rel.max()),
            "ok_outliers": out.n_outliers in (k - 1, k), "ok_gn": bool(rel.max() <= 0.10),
        })
        spectra[k] = {"H": ev, "G": g, "outliers": out.n_outliers}
        log(f"  k={k}: {tr['steps']} GD steps, |g|={tr['grad_norm']:.2e}, "
            f"{out.n_outliers} outliers, G vs H top-k rel {rel.max():.3g}")
    return rows, spectra


def part_width(max_steps: int, seed: int, log) -> tuple[list[dict], dict]:
    """B: widths [10, 5] vs [20, 10] for each k."""
    rows, spectra = [], {}
    for k in KS:
        data = _blobs(k, seed)
        evs = {}
        for widths in (WIDTHS, tuple(2 * w for w in WIDTHS)):
            model = _mlp(2, k, widths, seed)
            tr = train_gd(model, data.x_train, data.y_train, max_steps=max_steps)
            evs[widths] = (_exact(model, data.x_train, data.y_train), tr)
        (ev1, tr1), (ev2, tr2) = evs.values()
        t1, t2 = _top(ev1, k), _top(ev2, k)
        change = float((np.abs(t2 - t1) / np.abs(t1)).max())
        nz1, nz2 = S.near_zero_fraction(ev1), S.near_zero_fraction(ev2)
        rows.append({"k": k, "top_k_w": _fmt_list(t1), "top_k_2w": _fmt_list(t2),
                     "max_rel_change": change, "near_zero_w": nz1, "near_zero_2w": nz2,
                     "grad_norm_w": tr1["grad_norm"], "grad_norm_2w": tr2["grad_norm"],
                     "ok_top": change < 0.30, "ok_near_zero": nz2 > nz1})
        spectra[k] = (ev1, ev2)
        log(f"  k={k}: top-k change {change:.3g}, near-zero {nz1:.3f} -> {nz2:.3f}")
    return rows, spectra


def part_separability(max_steps: int, seed: int, log, stds=(1.0, 3.0)) -> tuple[list, dict]:
    """C: the same k with cluster_std 1 (separable) vs 3 (overlapping)."""
    rows, spectra = [], {}
    for k in (3, 5):
        res = {}
        for std in stds:
            data = _blobs(k, seed, cluster_std=std)
            model = _mlp(2, k, WIDTHS, seed)
            tr = train_gd(model, data.x_train, data.y_train, max_steps=max_steps)
            ev = _exact(model, data.x_train, data.y_train)
            out = S.count_outliers(ev)
            res[std] = (ev, tr, out)
        (ev1, tr1, o1), (ev2, tr2, o2) = res.values()
        top1, top2 = _top(ev1, k), _top(ev2, k)
        nz1, nz2 = S.near_zero_fraction(ev1), S.near_zero_fraction(ev2)
        rows.append({"k": k, "top_k_separable": _fmt_list(top1),
                     "top_k_overlapping": _fmt_list(top2),
                     "loss_separable": tr1["loss"], "loss_overlapping": tr2["loss"],
                     "outliers_sep": o1.n_outliers, "outliers_ovl": o2.n_outliers,
                     "near_zero_sep": nz1, "near_zero_ovl": nz2,
                     "ok_shrink": bool(top2[0] < top1[0]),
                     "ok_bulk": abs(nz2 - nz1) <= 0.10})
        spectra[k] = (ev1, ev2)
        log(f"  k={k}: top {top1[0]:.3g} -> {top2[0]:.3g}, near-zero {nz1:.3f} -> {nz2:.3f}")
    return rows, spectra


def part_lb_sb(steps_lb: int, steps_sb: int, seed: int, log) -> dict[str, Any]:
    """E: full-batch GD, then SGD with batch 10 from there; the line between the solutions."""
    k = 5
    data = load_dataset("blobs", n_clusters=k, n_train=500, cluster_std=2.0, seed=seed)
    x, y = data.x_train, data.y_train
    model = _mlp(2, k, WIDTHS, seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    every = max(1, (steps_lb + steps_sb) // 400)
    curve: list[tuple[int, float]] = []

    def full_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    for step in range(steps_lb):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step % every == 0:
            curve.append((step, full_loss()))
    theta_lb = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    loss_lb = full_loss()
    gen = torch.Generator().manual_seed(seed + 1)
    sb_losses = []
    for step in range(steps_sb):
        idx = torch.randint(0, x.shape[0], (10,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if step % every == 0:
            curve.append((steps_lb + step, full_loss()))
            sb_losses.append(curve[-1][1])
    theta_sb = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    loss_sb = full_loss()
    alphas = np.linspace(0.0, 1.0, 41)
    probe = _mlp(2, k, WIDTHS, seed)
    line = []
    for a in alphas:
        torch.nn.utils.vector_to_parameters((1 - a) * theta_lb + a * theta_sb,
                                            probe.parameters())
        with torch.no_grad():
            line.append(float(F.cross_entropy(probe(x), y)))
    peak = max(sb_losses) if sb_losses else loss_lb
    barrier = max(line) - max(line[0], line[-1])
    tops = {}
    for name, theta in (("LB", theta_lb), ("SB", theta_sb)):
        torch.nn.utils.vector_to_parameters(theta, probe.parameters())
        op = HessianOperator(probe, x, y, dtype="float64")
        tops[name] = S.top_eigenvalues(op, 3, tol=1e-8).values.tolist()
    res = {"loss_lb": loss_lb, "peak_sb": peak, "loss_sb": loss_sb, "climb": peak - loss_lb,
           "descent": peak - loss_sb, "line_barrier": barrier, "line": line,
           "alphas": alphas.tolist(), "curve": curve, "steps_lb": steps_lb,
           "steps_sb": steps_sb, "distance": float((theta_sb - theta_lb).norm()),
           "top3_lb": tops["LB"], "top3_sb": tops["SB"]}
    res["ok_uphill_then_down"] = bool(res["climb"] > 0 and res["descent"] > 0)
    res["ok_no_barrier"] = bool(barrier <= 0.01 * max(loss_lb, loss_sb))
    log(f"  LB loss {loss_lb:.4g}, SB peak {peak:.4g}, SB end {loss_sb:.4g}, "
        f"line barrier {barrier:.3g}")
    return res


def part_mnist(widths: tuple[int, ...], steps: int, top_k: int, seed: int, log) -> dict:
    """F: MNIST 1k subset, one hidden layer of each width: top eigenvalues and outliers."""
    try:
        data = load_dataset("mnist", seed=seed, n_train=1000, n_test=1000)
    except DataError as exc:
        return {"skipped": f"MNIST not found ({exc})"}
    x, y = data.x_train.flatten(1), data.y_train
    rows, tops = [], {}
    for w in widths:
        model = _mlp(x.shape[1], 10, (w,), seed)
        tr = train_gd(model, x, y, max_steps=steps)
        op = HessianOperator(model, x, y)
        res = S.top_eigenvalues(op, top_k, tol=1e-4, seed=seed)
        out = S.count_outliers(res.values)
        tops[w] = res.values
        rows.append({"width": w, "params": op.dim, "steps": tr["steps"], "loss": tr["loss"],
                     "grad_norm": tr["grad_norm"], "outliers": out.n_outliers,
                     "gap_ratio": out.gap_ratio, "top5": _fmt_list(res.values[:5]),
                     "products": res.n_products, "ok_outliers": out.n_outliers in (9, 10)})
        log(f"  width {w}: {out.n_outliers} outliers in top {top_k}, "
            f"top {res.values[0]:.3g}, loss {tr['loss']:.3g}")
    first, last = tops[widths[0]][:10], tops[widths[-1]][:10]
    return {"rows": rows, "tops": {str(k): v.tolist() for k, v in tops.items()},
            "top10_rel_change_first_last": float((np.abs(last - first) / np.abs(first)).max())}


# ----------------------------------------------------------------------------- run


@torch_threads(1)  # tiny models only lose time to intra-op threads
def run(out: Path, *, quick: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run all parts and write report.md, results.json and figures/ into `out` atomically
    (single-threaded, the thread count restored after)."""
    seed = 0
    max_steps = 1500 if quick else 40000
    start = time.perf_counter()
    fw = Firewall("hessian-spectrum")  # no test split is read: every claim is on training data
    fw.freeze(note="no run-time choices; spectra of the training loss only")
    log("A/D: exact spectra of H and G for k clusters")
    cl_rows, cl_spec = part_clusters(max_steps, seed, log)
    log("B: width doubling")
    w_rows, w_spec = part_width(max_steps, seed, log)
    log("C: less separable data")
    s_rows, s_spec = part_separability(max_steps, seed, log)
    log("E: large batch then small batch")
    lbsb = part_lb_sb(1000 if quick else 10000, 1000 if quick else 10000, seed, log)
    log("F: MNIST 1k subset")
    mnist = part_mnist((10, 70) if quick else (10, 30, 50, 70), 200 if quick else 3000,
                       15 if quick else 30, seed, log)
    out = Path(out)
    with atomic.staged_directory(out) as stage:
        figs = _figures(stage, cl_spec, w_spec, s_spec, lbsb, mnist)
        verdicts = judge_all(CLAIMS, measure(cl_rows, w_rows, s_rows, lbsb, mnist))
        results = {"quick": quick, "settings": {"widths": list(WIDTHS), "lr": LR,
                                                "grad_tol": GRAD_TOL, "max_gd_steps": max_steps,
                                                "init_std": INIT_STD, "n_train": 100},
                   "clusters": cl_rows, "width": w_rows, "separability": s_rows,
                   "lb_sb": lbsb, "mnist": mnist, "claims": [v.to_dict() for v in verdicts],
                   "figures": figs, "seconds": time.perf_counter() - start,
                   **fw.to_results()}
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results, verdicts))
    log(f"done in {results['seconds']:.0f} s")
    return results


def _share(flags) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags)


def measure(cl_rows, w_rows, s_rows, lbsb, mnist) -> dict[str, Measured]:
    """What each declared claim (`CLAIMS`) measured."""
    out = {
        "outliers": single(_share(r["ok_outliers"] for r in cl_rows), "; ".join(
            f"k={r['k']}: {r['outliers']}" for r in cl_rows)),
        "width-top": single(max(r["max_rel_change"] for r in w_rows), "; ".join(
            f"k={r['k']}: {r['max_rel_change']:.0%}" for r in w_rows)),
        "width-near-zero": single(_share(r["ok_near_zero"] for r in w_rows), "; ".join(
            f"k={r['k']}: {r['near_zero_w']:.2f} -> {r['near_zero_2w']:.2f}" for r in w_rows)),
        "separability-shrink": single(_share(r["ok_shrink"] for r in s_rows), "; ".join(
            f"k={r['k']}: top {r['top_k_separable'].split(',')[0]} -> "
            f"{r['top_k_overlapping'].split(',')[0]}" for r in s_rows)),
        "separability-bulk": single(max(abs(r["near_zero_ovl"] - r["near_zero_sep"])
                                        for r in s_rows), "; ".join(
            f"k={r['k']}: {r['near_zero_sep']:.2f} -> {r['near_zero_ovl']:.2f}"
            for r in s_rows)),
        "gauss-newton": single(max(r["G_vs_H_max_rel"] for r in cl_rows), "; ".join(
            f"k={r['k']}: {r['G_vs_H_max_rel']:.2%}" for r in cl_rows)),
        "lb-sb-uphill": single(min(lbsb["climb"], lbsb["descent"]),
                               f"L(LB) {lbsb['loss_lb']:.4g}, SB peak {lbsb['peak_sb']:.4g}, "
                               f"L(SB) {lbsb['loss_sb']:.4g}"),
        "lb-sb-no-barrier": single(lbsb["line_barrier"] / max(lbsb["loss_lb"], lbsb["loss_sb"]),
                                   f"barrier {lbsb['line_barrier']:.3g}"),
    }
    out["mnist-outliers"] = (missing(mnist["skipped"]) if "skipped" in mnist else single(
        _share(r["ok_outliers"] for r in mnist["rows"]),
        "; ".join(f"w={r['width']}: {r['outliers']}" for r in mnist["rows"])))
    return out


def _figures(stage: Path, cl_spec, w_spec, s_spec, lbsb, mnist) -> list[str]:
    made = []
    fig, axes = new_figure(ncols=len(KS), size=(3.6, 3.2))
    for ax, k in zip(axes[0], KS):
        S.plot_eigenvalues(ax, cl_spec[k]["H"], label="H")
        S.plot_eigenvalues(ax, cl_spec[k]["G"], label="G")
        ax.axvline(cl_spec[k]["outliers"] + 0.5, color="grey", ls=":")
        ax.set_title(f"k={k}: {cl_spec[k]['outliers']} outliers")
    axes[0][0].legend(fontsize=6)
    made.append(str(save_figure(fig, stage / "figures" / "spectra_by_k.png").name))
    fig, axes = new_figure(ncols=len(KS), size=(3.6, 3.2))
    for ax, k in zip(axes[0], KS):
        S.plot_eigenvalues(ax, w_spec[k][0], label="[10, 5]")
        S.plot_eigenvalues(ax, w_spec[k][1], label="[20, 10]")
        ax.set_title(f"k={k}: width doubling")
    axes[0][0].legend(fontsize=6)
    made.append(str(save_figure(fig, stage / "figures" / "width.png").name))
    fig, axes = new_figure(ncols=len(s_spec), size=(3.6, 3.2))
    for ax, (k, (e1, e2)) in zip(axes[0], s_spec.items()):
        S.plot_eigenvalues(ax, e1, label="std 1")
        S.plot_eigenvalues(ax, e2, label="std 3")
        ax.set_title(f"k={k}: separability")
    axes[0][0].legend(fontsize=6)
    made.append(str(save_figure(fig, stage / "figures" / "separability.png").name))
    fig, axes = new_figure(ncols=2)
    steps, losses = zip(*lbsb["curve"])
    axes[0][0].plot(steps, losses)
    axes[0][0].axvline(lbsb["steps_lb"], color="grey", ls=":")
    axes[0][0].set_yscale("log")
    axes[0][0].set_xlabel("step (LB, then SB after the dotted line)")
    axes[0][0].set_ylabel("full-batch training loss")
    axes[0][1].plot(lbsb["alphas"], lbsb["line"])
    axes[0][1].set_xlabel("alpha: (1-alpha) LB + alpha SB")
    axes[0][1].set_ylabel("training loss")
    made.append(str(save_figure(fig, stage / "figures" / "lb_sb.png").name))
    if "rows" in mnist:
        fig, axes = new_figure()
        for w, vals in mnist["tops"].items():
            S.plot_eigenvalues(axes[0][0], vals, label=f"width {w}")
        axes[0][0].set_title("MNIST 1k: top eigenvalues")
        axes[0][0].legend(fontsize=6)
        made.append(str(save_figure(fig, stage / "figures" / "mnist_top.png").name))
    return [f"figures/{m}" for m in made]


def _report(r: dict[str, Any], verdicts) -> str:
    s = r["settings"]
    lines = [
        "# Hessian spectrum: bulk and outliers (Sagun et al.)",
        "",
        f"{'Quick run' if r['quick'] else 'Full run'}; {r['seconds']:.0f} s. Blobs: 2-D, N = "
        f"{s['n_train']}, standardised; ReLU MLP {s['widths']}, weights N(0, "
        f"{s['init_std']}^2), zero biases; full-batch GD lr {s['lr']} until ||g|| <= "
        f"{s['grad_tol']:g} or {s['max_gd_steps']} steps (the gradient norm reached is in the "
        "tables). Spectra are exact (float64 dense Hessian). Outliers = eigenvalues above the "
        "largest log-gap in the spectrum (values under 1e-3 x the top count as bulk). "
        "Near-zero fraction = share of |lambda| <= 1e-3 max |lambda|.",
        "",
        "## Claims",
        "",
        claims_markdown(verdicts, r["quick"]),
        "",
        "No test split is read: every claim is on the training loss (results.json "
        "`test_evaluations` is empty).",
        "",
        "## A/D. Clusters: outliers, and G vs H",
        "",
        markdown_table(r["clusters"], ["k", "params", "steps", "grad_norm", "loss", "outliers",
                                       "gap_ratio", "top_eigs", "near_zero",
                                       "G_vs_H_max_rel"]),
        "",
        "![spectra](figures/spectra_by_k.png)",
        "",
        "## B. Width doubling ([10, 5] -> [20, 10])",
        "",
        markdown_table(r["width"], ["k", "top_k_w", "top_k_2w", "max_rel_change",
                                    "near_zero_w", "near_zero_2w", "grad_norm_w",
                                    "grad_norm_2w"]),
        "",
        "![width](figures/width.png)",
        "",
        "## C. Separability (cluster_std 1 vs 3)",
        "",
        markdown_table(r["separability"], ["k", "top_k_separable", "top_k_overlapping",
                                           "loss_separable", "loss_overlapping",
                                           "outliers_sep", "outliers_ovl", "near_zero_sep",
                                           "near_zero_ovl"]),
        "",
        "![separability](figures/separability.png)",
        "",
        "## E. Large batch, then small batch",
        "",
        f"Blobs k=5, N=500, cluster_std 2, MLP [10, 5]: {r['lb_sb']['steps_lb']} full-batch GD "
        f"steps, then {r['lb_sb']['steps_sb']} SGD steps with batch 10 (lr {s['lr']}). "
        f"Full-batch loss at the LB solution {r['lb_sb']['loss_lb']:.4g}, highest during SB "
        f"{r['lb_sb']['peak_sb']:.4g}, at the SB solution {r['lb_sb']['loss_sb']:.4g}; the "
        f"two solutions are {r['lb_sb']['distance']:.3g} apart and the largest rise along the "
        f"straight line above its ends is {r['lb_sb']['line_barrier']:.3g}. Top-3 "
        f"eigenvalues: LB {_fmt_list(r['lb_sb']['top3_lb'])}, SB "
        f"{_fmt_list(r['lb_sb']['top3_sb'])}.",
        "",
        "![lb-sb](figures/lb_sb.png)",
        "",
        "## F. MNIST 1k subset, one hidden layer",
        "",
    ]
    m = r["mnist"]
    if "skipped" in m:
        lines += [f"Skipped: {m['skipped']}. Set $PRUNELAB_DATA to a directory holding "
                  "mnist/ (or run `prunelab data download mnist`).", ""]
    else:
        lines += [markdown_table(m["rows"], ["width", "params", "steps", "loss", "grad_norm",
                                             "outliers", "gap_ratio", "top5", "products"]),
                  "",
                  f"Top-10 eigenvalues, largest relative change from the narrowest to the "
                  f"widest net: {m['top10_rel_change_first_last']:.0%}. Eigenvalues by Lanczos "
                  "(float32 products, tol 1e-4).",
                  "", "![mnist](figures/mnist_top.png)", ""]
    return "\n".join(lines)
