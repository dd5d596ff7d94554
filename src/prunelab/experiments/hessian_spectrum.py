"""Reproduction of Sagun et al., "Empirical Analysis of the Hessian of Over-Parametrized Neural
Networks" (arXiv 1706.04454), as set out in section 4 of METHODS.md.

Parts: (A) Gaussian blobs with k in {2, 3, 5, 10}: a bulk at ~0 plus k-1 or k outliers in the
exact spectrum; (B) doubling the width moves the top-k eigenvalues by < 30% and grows the
near-zero fraction; (C) less separable data shrinks the outliers, bulk unchanged; (D) the
Gauss-Newton part G and H agree on the top eigenvalues at convergence; (E) large-batch then
small-batch training climbs uphill then down, while the straight line between the two
solutions has no barrier; (F) MNIST 1k-subset, one hidden layer of width 10-70: outliers and
top eigenvalues by Lanczos (skipped with a note when MNIST is not found).

Every network measured is first driven towards a minimum by `prunelab.landscape.minimize.
converge` in float64: full-batch gradient descent at min(0.1, 1 / lambda_max) (lambda_max
re-measured as it grows, so the step stays below the stability limit 2 / lambda_max), then
damped Newton steps on the exact Hessian (L-BFGS for MNIST); a run counts as converged only
when its final gradient norm is <= 1e-4, and every table says whether it did. Outliers are
counted beyond the bulk's fence (`spectrum.count_outliers`); the earlier largest-log-gap count
is reported beside it. A smooth-activation variant (softplus instead of ReLU, otherwise the
same) of A/D is run too: a ReLU network's loss has kinks where no gradient vanishes.
"""

from __future__ import annotations

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
from prunelab.landscape.minimize import converge
from prunelab.report import figure_title, markdown_table, new_figure, save_figure
from prunelab.threads import torch_threads

KS = (2, 3, 5, 10)
WIDTHS = (10, 5)
LR = 0.1  # METHODS' learning rate: now the cap of the stable step min(LR, 1 / lambda_max)
GRAD_TOL = 1e-4
INIT_STD = 0.1
ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus}

_ALL_K = "share of k in {2, 3, 5, 10} for which it holds"
_SINGLE = "exact spectrum, one seed per k"
_CONVERGED = "measured only where every network reached ||g|| <= 1e-4"
CLAIMS = declare(
    Claim("outliers", "at convergence, k clusters give k-1 or k outliers (exact spectrum, "
          "beyond the bulk edge)", _SINGLE, _ALL_K, ">=", 1.0, "single", quick_expected=False,
          source=f"METHODS 4; {_CONVERGED}"),
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
    Claim("gauss-newton", "G and H within 5% at convergence", _SINGLE,
          "largest ||H - G||_F / ||H||_F over k", "<=", 0.05, "single", quick_expected=False,
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


def _mlp(d_in: int, k: int, widths: tuple[int, ...], seed: int,
         act: str = "relu") -> nn.Sequential:
    """MLP (ReLU as in METHODS section 4, or softplus) with weights N(0, 0.1^2) and zero
    biases."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for w in widths:
        layers += [nn.Linear(d_in, w), ACTIVATIONS[act]()]
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


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, gd_steps: int,
        finish: str = "newton", finish_iterations: int = 200) -> dict[str, Any]:
    """Drive `model` (converted to float64 in place) towards a minimum of its full-batch
    training loss with `converge`; returns its summary (converged only if ||g|| <= GRAD_TOL)."""
    model.double()
    res = converge(model, x.double(), y, tol=GRAD_TOL, gd_steps=gd_steps, lr_max=LR,
                   finish=finish, finish_iterations=finish_iterations, record_every=500)
    out = res.to_dict()
    out["history"] = [h for h in out["history"] if h["phase"] != "gd" or
                      h["step"] % 2000 == 0 or h is res.history[-1]]
    out["kink_distance"] = _kink_distance(model, x.double())
    return out


def _kink_distance(model: nn.Module, x: torch.Tensor) -> float | None:
    """min |pre-activation| over the training points and ReLU units (None without ReLUs): a
    value near 0 means a point sits on a unit's kink, where the loss is not differentiable."""
    found, h = [], x
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.ReLU):
                found.append(float(h.abs().min()))
            h = layer(h)
    return min(found) if found else None


def _blobs(k: int, seed: int, cluster_std: float = 1.0):
    return load_dataset("blobs", n_clusters=k, n_train=100, cluster_std=cluster_std, seed=seed)


def _exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str = "hessian"):
    op = HessianOperator(model, x, y, dtype="float64", kind=kind)
    return S.exact_eigenvalues(op).values


def _h_and_g(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Eigenvalues of H and G and ||H - G||_F / ||H||_F (exact, float64)."""
    op = HessianOperator(model, x, y, dtype="float64")
    h, g = op.dense(), op.with_kind("gauss-newton").dense()
    rel = float(torch.linalg.matrix_norm(h - g) / torch.linalg.matrix_norm(h))
    return torch.linalg.eigvalsh(h).numpy(), torch.linalg.eigvalsh(g).numpy(), rel


class _Fits:
    """Trained blob networks, keyed by (k, widths, cluster_std, activation): parts A-D
    share the same networks instead of training them again."""

    def __init__(self, gd_steps: int, finish_iterations: int, seed: int, log):
        self.gd_steps, self.finish_iterations, self.seed, self.log = (
            gd_steps, finish_iterations, seed, log)
        self.cache: dict[tuple, tuple[nn.Module, Any, dict]] = {}

    def get(self, k: int, widths: tuple[int, ...] = WIDTHS, std: float = 1.0,
            act: str = "relu"):
        key = (k, tuple(widths), std, act)
        if key not in self.cache:
            data = _blobs(k, self.seed, cluster_std=std)
            model = _mlp(2, k, widths, self.seed, act)
            tr = fit(model, data.x_train, data.y_train, gd_steps=self.gd_steps,
                     finish_iterations=self.finish_iterations)
            state = "converged" if tr["converged"] else f"not converged: {tr['stop_reason']}"
            self.log(f"    fit k={k} {list(widths)} std {std:g} {act}: {tr['gd_steps']} GD + "
                     f"{tr['finish_iterations']} Newton steps, |g|={tr['grad_norm']:.2e} "
                     f"({state})")
            self.cache[key] = (model, data, tr)
        return self.cache[key]


def _top(ev: np.ndarray, k: int) -> np.ndarray:
    return np.sort(ev)[::-1][:k]


def _fmt_list(values, digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}g}" for v in values)


# ----------------------------------------------------------------------------- parts


def part_clusters(fits: _Fits, log, act: str = "relu") -> tuple[list[dict], dict]:
    """A and D: exact spectra of H and G for each k, at the end of `fit`."""
    rows, spectra = [], {}
    for k in KS:
        model, data, tr = fits.get(k, act=act)
        ev, g, rel_fro = _h_and_g(model, data.x_train.double(), data.y_train)
        out = S.count_outliers(ev)
        old = S.count_outliers_largest_gap(ev)
        top_h, top_g = _top(ev, k), _top(g, k)
        rel = np.abs(top_g - top_h) / np.abs(top_h)
        rows.append({
            "k": k, "params": ev.size, "converged": tr["converged"],
            "gd_steps": tr["gd_steps"], "newton_steps": tr["finish_iterations"],
            "grad_norm": tr["grad_norm"], "loss": tr["loss"],
            "kink_distance": tr["kink_distance"], "stop": tr["stop_reason"],
            "outliers": out.n_outliers, "bulk_edge": out.bulk_edge,
            "outliers_gap_rule": old.n_outliers,
            "top_eigs": _fmt_list(_top(ev, k + 1)), "near_zero": S.near_zero_fraction(ev),
            "G_vs_H_fro": rel_fro, "G_vs_H_max_rel": float(rel.max()),
            "ok_outliers": out.n_outliers in (k - 1, k), "ok_gn": bool(rel_fro <= 0.05),
        })
        spectra[k] = {"H": ev, "G": g, "outliers": out.n_outliers, "edge": out.bulk_edge}
        log(f"  k={k} ({act}): {out.n_outliers} outliers (largest-gap rule "
            f"{old.n_outliers}), ||H-G||/||H|| {rel_fro:.3g}, |g| {tr['grad_norm']:.2e}")
    return rows, spectra


def part_width(fits: _Fits, log) -> tuple[list[dict], dict]:
    """B: widths [10, 5] vs [20, 10] for each k."""
    rows, spectra = [], {}
    for k in KS:
        evs = {}
        for widths in (WIDTHS, tuple(2 * w for w in WIDTHS)):
            model, data, tr = fits.get(k, widths)
            evs[widths] = (_exact(model, data.x_train.double(), data.y_train), tr)
        (ev1, tr1), (ev2, tr2) = evs.values()
        t1, t2 = _top(ev1, k), _top(ev2, k)
        change = float((np.abs(t2 - t1) / np.abs(t1)).max())
        nz1, nz2 = S.near_zero_fraction(ev1), S.near_zero_fraction(ev2)
        rows.append({"k": k, "top_k_w": _fmt_list(t1), "top_k_2w": _fmt_list(t2),
                     "max_rel_change": change, "near_zero_w": nz1, "near_zero_2w": nz2,
                     "grad_norm_w": tr1["grad_norm"], "grad_norm_2w": tr2["grad_norm"],
                     "converged_w": tr1["converged"], "converged_2w": tr2["converged"],
                     "ok_top": change < 0.30, "ok_near_zero": nz2 > nz1})
        spectra[k] = (ev1, ev2)
        log(f"  k={k}: top-k change {change:.3g}, near-zero {nz1:.3f} -> {nz2:.3f}")
    return rows, spectra


def part_separability(fits: _Fits, log, stds=(1.0, 3.0)) -> tuple[list, dict]:
    """C: the same k with cluster_std 1 (separable) vs 3 (overlapping)."""
    rows, spectra = [], {}
    for k in (3, 5):
        res = {}
        for std in stds:
            model, data, tr = fits.get(k, std=std)
            ev = _exact(model, data.x_train.double(), data.y_train)
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
                     "converged_sep": tr1["converged"], "converged_ovl": tr2["converged"],
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


def part_mnist(widths: tuple[int, ...], gd_steps: int, finish_iterations: int, top_k: int,
               slq: tuple[int, int], seed: int, log) -> dict:
    """F: MNIST 1k subset, one hidden layer of each width, fitted with an L-BFGS finish: top
    eigenvalues by Lanczos, outliers beyond the bulk edge of an SLQ density."""
    try:
        data = load_dataset("mnist", seed=seed, n_train=1000, n_test=1000)
    except DataError as exc:
        return {"skipped": f"MNIST not found ({exc})"}
    x, y = data.x_train.flatten(1), data.y_train
    rows, tops = [], {}
    for w in widths:
        model = _mlp(x.shape[1], 10, (w,), seed)
        tr = fit(model, x, y, gd_steps=gd_steps, finish="lbfgs",
                 finish_iterations=finish_iterations)
        op = HessianOperator(model, x, y)  # float32 products for the spectrum
        res = S.top_eigenvalues(op, top_k, tol=1e-4, seed=seed)
        dens = S.spectral_density(op, n_steps=slq[0], n_vectors=slq[1], seed=seed)
        out = S.count_outliers(res.values, density=dens)
        old = S.count_outliers_largest_gap(res.values)
        tops[w] = res.values
        rows.append({"width": w, "params": op.dim, "converged": tr["converged"],
                     "gd_steps": tr["gd_steps"], "lbfgs_steps": tr["finish_iterations"],
                     "loss": tr["loss"], "grad_norm": tr["grad_norm"],
                     "outliers": out.n_outliers, "bulk_edge": out.bulk_edge,
                     "saturated": out.saturated, "outliers_gap_rule": old.n_outliers,
                     "top5": _fmt_list(res.values[:5]),
                     "products": res.n_products + dens.n_products,
                     "ok_outliers": out.n_outliers in (9, 10)})
        log(f"  width {w}: {out.n_outliers} outliers in top {top_k} (largest-gap rule "
            f"{old.n_outliers}), top {res.values[0]:.3g}, loss {tr['loss']:.3g}, "
            f"|g| {tr['grad_norm']:.2e}")
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
    gd_steps = 1500 if quick else 10000
    newton_steps = 100 if quick else 300
    start = time.perf_counter()
    fw = Firewall("hessian-spectrum")  # no test split is read: every claim is on training data
    fw.freeze(note="no run-time choices; spectra of the training loss only")
    fits = _Fits(gd_steps, newton_steps, seed, log)
    log("A/D: exact spectra of H and G for k clusters")
    cl_rows, cl_spec = part_clusters(fits, log)
    log("A/D, smooth variant: softplus instead of ReLU")
    sm_rows, sm_spec = part_clusters(fits, log, act="softplus")
    log("B: width doubling")
    w_rows, w_spec = part_width(fits, log)
    log("C: less separable data")
    s_rows, s_spec = part_separability(fits, log)
    log("E: large batch then small batch")
    lbsb = part_lb_sb(1000 if quick else 10000, 1000 if quick else 10000, seed, log)
    log("F: MNIST 1k subset")
    mnist = part_mnist((10, 70) if quick else (10, 30, 50, 70), 200 if quick else 3000,
                       100 if quick else 1000, 15 if quick else 30,
                       (40, 2) if quick else (80, 4), seed, log)
    out = Path(out)
    with atomic.staged_directory(out) as stage:
        figs = _figures(stage, cl_spec, w_spec, s_spec, lbsb, mnist, sm_spec,
                        f"hessian-spectrum{' (quick)' if quick else ''}: {gd_steps} GD steps "
                        f"+ {newton_steps} Newton, float64")
        verdicts = judge_all(CLAIMS, measure(cl_rows, w_rows, s_rows, lbsb, mnist))
        results = {"quick": quick, "settings": {
            "widths": list(WIDTHS), "lr_max": LR, "lr_rule": "min(lr_max, 1 / lambda_max)",
            "grad_tol": GRAD_TOL, "gd_steps": gd_steps, "finish": "newton",
            "finish_iterations": newton_steps, "dtype": "float64", "init_std": INIT_STD,
            "n_train": 100, "outlier_rule": "bulk-edge: above max(Q90 + 3 (Q90 - Q50), "
                                            "1e-3 max)"},
                   "clusters": cl_rows, "clusters_softplus": sm_rows, "width": w_rows,
                   "separability": s_rows, "lb_sb": lbsb, "mnist": mnist,
                   "fits": {f"k={k} widths={list(w)} std={std:g} {act}": tr
                            for (k, w, std, act), (_, _, tr) in fits.cache.items()},
                   "claims": [v.to_dict() for v in verdicts], "figures": figs,
                   # sections left out for missing data (the CLI reports them, exits non-zero)
                   "skipped_sections": ([{"section": "F: MNIST outliers",
                                          "reason": mnist["skipped"]}]
                                        if "skipped" in mnist else []),
                   "seconds": time.perf_counter() - start, **fw.to_results()}
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results, verdicts))
    log(f"done in {results['seconds']:.0f} s")
    return results


def _share(flags) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags)


def _conv(row: dict[str, Any]) -> str:
    return "" if row["converged"] else f" (not converged, |g| {row['grad_norm']:.1e})"


def _at_convergence(rows, value: float, note: str) -> Measured:
    """A claim about minima: measured only when every network reached one (||g|| <= tol);
    otherwise not measured, with what the non-minima gave in the reason."""
    if all(r["converged"] for r in rows):
        return single(value, note)
    return missing(f"not at convergence ({sum(not r['converged'] for r in rows)} of "
                   f"{len(rows)} runs stop with ||g|| > {GRAD_TOL:g}); at those points: {note}")


def measure(cl_rows, w_rows, s_rows, lbsb, mnist) -> dict[str, Measured]:
    """What each declared claim (`CLAIMS`) measured."""
    out = {
        "outliers": _at_convergence(cl_rows, _share(r["ok_outliers"] for r in cl_rows),
                                    "; ".join(f"k={r['k']}: {r['outliers']}{_conv(r)}"
                                              for r in cl_rows)),
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
        "gauss-newton": _at_convergence(cl_rows, max(r["G_vs_H_fro"] for r in cl_rows),
                                        "; ".join(f"k={r['k']}: {r['G_vs_H_fro']:.2%}{_conv(r)}"
                                                  for r in cl_rows)),
        "lb-sb-uphill": single(min(lbsb["climb"], lbsb["descent"]),
                               f"L(LB) {lbsb['loss_lb']:.4g}, SB peak {lbsb['peak_sb']:.4g}, "
                               f"L(SB) {lbsb['loss_sb']:.4g}"),
        "lb-sb-no-barrier": single(lbsb["line_barrier"] / max(lbsb["loss_lb"], lbsb["loss_sb"]),
                                   f"barrier {lbsb['line_barrier']:.3g}"),
    }
    out["mnist-outliers"] = (missing(mnist["skipped"]) if "skipped" in mnist else single(
        _share(r["ok_outliers"] for r in mnist["rows"]),
        "; ".join(f"w={r['width']}: {r['outliers']}{_conv(r)}" for r in mnist["rows"])))
    return out


def _figures(stage: Path, cl_spec, w_spec, s_spec, lbsb, mnist, sm_spec,
             title: str = "hessian-spectrum") -> list[str]:
    made = []
    for spec, name, act in ((cl_spec, "spectra_by_k.png", "ReLU"),
                            (sm_spec, "spectra_by_k_softplus.png", "softplus")):
        fig, axes = new_figure(ncols=len(KS), size=(3.6, 3.2))
        for ax, k in zip(axes[0], KS):
            S.plot_eigenvalues(ax, spec[k]["H"], label="H")
            S.plot_eigenvalues(ax, spec[k]["G"], label="G")
            ax.axvline(spec[k]["outliers"] + 0.5, color="grey", ls=":")
            if spec[k]["edge"] > 0:
                ax.axhline(spec[k]["edge"], color="grey", ls="--", lw=0.8,
                           label="bulk edge")
            ax.set_title(f"{act}, k={k}: {spec[k]['outliers']} outliers")
        axes[0][0].legend(fontsize=6)
        figure_title(fig, title)
        made.append(str(save_figure(fig, stage / "figures" / name).name))
    fig, axes = new_figure(ncols=len(KS), size=(3.6, 3.2))
    for ax, k in zip(axes[0], KS):
        S.plot_eigenvalues(ax, w_spec[k][0], label="[10, 5]")
        S.plot_eigenvalues(ax, w_spec[k][1], label="[20, 10]")
        ax.set_title(f"k={k}: width doubling")
    axes[0][0].legend(fontsize=6)
    figure_title(fig, title)
    made.append(str(save_figure(fig, stage / "figures" / "width.png").name))
    fig, axes = new_figure(ncols=len(s_spec), size=(3.6, 3.2))
    for ax, (k, (e1, e2)) in zip(axes[0], s_spec.items()):
        S.plot_eigenvalues(ax, e1, label="std 1")
        S.plot_eigenvalues(ax, e2, label="std 3")
        ax.set_title(f"k={k}: separability")
    axes[0][0].legend(fontsize=6)
    figure_title(fig, title)
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
    figure_title(fig, title)
    made.append(str(save_figure(fig, stage / "figures" / "lb_sb.png").name))
    if "rows" in mnist:
        fig, axes = new_figure()
        for w, vals in mnist["tops"].items():
            S.plot_eigenvalues(axes[0][0], vals, label=f"width {w}")
        axes[0][0].set_title("MNIST 1k: top eigenvalues")
        axes[0][0].legend(fontsize=6)
        figure_title(fig, title)
        made.append(str(save_figure(fig, stage / "figures" / "mnist_top.png").name))
    return [f"figures/{m}" for m in made]


_CLUSTER_COLUMNS = ["k", "params", "converged", "gd_steps", "newton_steps", "grad_norm",
                    "loss", "kink_distance", "outliers", "outliers_gap_rule", "bulk_edge",
                    "top_eigs", "near_zero", "G_vs_H_fro", "G_vs_H_max_rel", "stop"]


def _sci(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the small positive numbers (gradient norms, losses, kink distances, bulk
    edges) in scientific notation, which a fixed 4-decimal table would show as 0."""
    keys = ("grad_norm", "loss", "kink_distance", "bulk_edge")
    return [{k: (f"{v:.2e}" if k in keys and isinstance(v, float) else v)
             for k, v in row.items()} for row in rows]


def _report(r: dict[str, Any], verdicts) -> str:
    s = r["settings"]
    lines = [
        "# Hessian spectrum: bulk and outliers (Sagun et al.)",
        "",
        f"{'Quick run' if r['quick'] else 'Full run'}; {r['seconds']:.0f} s. Blobs: 2-D, N = "
        f"{s['n_train']}, standardised; ReLU MLP {s['widths']}, weights N(0, "
        f"{s['init_std']}^2), zero biases. Each network is driven towards a minimum in "
        f"float64: {s['gd_steps']} full-batch gradient-descent steps at min({s['lr_max']}, "
        "1 / lambda_max) (lambda_max re-measured as it grows, so the step stays below the "
        f"stability limit 2 / lambda_max), then up to {s['finish_iterations']} damped Newton "
        f"steps on the exact Hessian; converged means ||g|| <= {s['grad_tol']:g} at the end "
        "(the tables give the gradient norm reached and why a run stopped). Spectra are "
        "exact (float64 dense Hessian). Outliers = eigenvalues above the bulk edge "
        "max(Q90 + 3 (Q90 - Q50), 1e-3 x the top) of the spectrum (the rule was chosen on "
        "constructed spectra with planted outliers); the earlier largest-log-gap count is "
        "shown beside it. G vs H = ||H - G||_F / ||H||_F. Near-zero fraction = share of "
        "|lambda| <= 1e-3 max |lambda|. kink_distance = the smallest |pre-activation| of a "
        "ReLU unit over the training points: near 0, a point sits on a kink where the loss "
        "has no gradient, and no method drives ||g|| to 0 there.",
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
        markdown_table(_sci(r["clusters"]), _CLUSTER_COLUMNS),
        "",
        "![spectra](figures/spectra_by_k.png)",
        "",
        "### Variant: softplus instead of ReLU (not the paper's setting)",
        "",
        "The same protocol with a smooth activation, whose loss is twice differentiable "
        "everywhere, so a vanishing gradient can be reached.",
        "",
        markdown_table(_sci(r["clusters_softplus"]), _CLUSTER_COLUMNS),
        "",
        "![spectra softplus](figures/spectra_by_k_softplus.png)",
        "",
        "## B. Width doubling ([10, 5] -> [20, 10])",
        "",
        markdown_table(r["width"], ["k", "top_k_w", "top_k_2w", "max_rel_change",
                                    "near_zero_w", "near_zero_2w", "grad_norm_w",
                                    "grad_norm_2w", "converged_w", "converged_2w"]),
        "",
        "![width](figures/width.png)",
        "",
        "## C. Separability (cluster_std 1 vs 3)",
        "",
        markdown_table(r["separability"], ["k", "top_k_separable", "top_k_overlapping",
                                           "loss_separable", "loss_overlapping",
                                           "outliers_sep", "outliers_ovl", "near_zero_sep",
                                           "near_zero_ovl", "converged_sep",
                                           "converged_ovl"]),
        "",
        "![separability](figures/separability.png)",
        "",
        "## E. Large batch, then small batch",
        "",
        f"Blobs k=5, N=500, cluster_std 2, MLP [10, 5]: {r['lb_sb']['steps_lb']} full-batch GD "
        f"steps, then {r['lb_sb']['steps_sb']} SGD steps with batch 10 (lr {s['lr_max']}). "
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
        lines += [markdown_table(_sci(m["rows"]), ["width", "params", "converged", "gd_steps",
                                             "lbfgs_steps", "loss", "grad_norm", "outliers",
                                             "bulk_edge", "saturated", "outliers_gap_rule",
                                             "top5", "products"]),
                  "",
                  f"Fitted in float64 ({s['lr_max']}-capped stable gradient descent, then "
                  f"L-BFGS with a strong-Wolfe line search). Top-10 eigenvalues, largest "
                  f"relative change from the narrowest to the widest net: "
                  f"{m['top10_rel_change_first_last']:.0%}. Eigenvalues by Lanczos (float32 "
                  "products, tol 1e-4); the bulk edge from a stochastic Lanczos density of "
                  "the same Hessian (saturated: every eigenvalue computed is an outlier).",
                  "", "![mnist](figures/mnist_top.png)", ""]
    return "\n".join(lines)
