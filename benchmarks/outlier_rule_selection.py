"""Choosing the outlier rule on constructed spectra (issue 20, item 4): how often each
candidate returns the planted number of outliers.

Spectra: Marchenko-Pastur bulks (aspect ratios 0.1-4, the larger ones rank-deficient), a
Gauss-Newton-like bulk (rank-deficient Wishart plus symmetric noise) and an exponential bulk,
at 60, 150 and 500 eigenvalues, 3 draws each; then k = 1, 2, 3, 5, 9, 10 spikes (at most 10%
of the spectrum) placed 2, 3, 5 or 20 times beyond the bulk's largest value and spread
geometrically over 1x, 10x or 100x (`prunelab.landscape.constructed_spectra`). Candidates:
the earlier largest-log-gap rule and the fence Q_q + c (Q_q - Q_50) for q in {0.75, 0.9}
and c in {1, 1.5, 2, 3, 4, 6}. The chosen rule is the one that is right on the pure bulks and
on spikes at least 3x beyond the bulk most often.

Run: .venv/bin/python benchmarks/outlier_rule_selection.py [--seed 0]
Writes benchmarks/results/outlier_rule_selection.json.
"""

from __future__ import annotations

import argparse
import time

from benchcommon import machine_info, write_results

from prunelab.landscape.constructed_spectra import score_rule
from prunelab.landscape.spectrum import count_outliers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    candidates = {"largest log-gap (earlier rule)":
                  lambda lam: count_outliers(lam, rule="largest-gap").n_outliers}
    for q in (0.75, 0.9):
        for c in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0):
            candidates[f"fence q={q:g} c={c:g}"] = (
                lambda lam, q=q, c=c: count_outliers(lam, quantile=q, fence=c).n_outliers)
    rows = []
    start = time.perf_counter()
    for name, rule in candidates.items():
        score = score_rule(rule, seed=args.seed)
        pure = score["no spikes"]
        clear = [v for k, v in score.items() if k.startswith("separation") and
                 float(k.split()[1].rstrip("x")) >= 3]
        right = pure["right"] + sum(v["right"] for v in clear)
        total = pure["total"] + sum(v["total"] for v in clear)
        rows.append({"rule": name, **{k: f"{v['right']}/{v['total']}" for k, v in score.items()},
                     "clear (pure + >= 3x)": right / total})
    best = max(rows[1:], key=lambda r: r["clear (pure + >= 3x)"])
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")
    print(f"best: {best['rule']} ({best['clear (pure + >= 3x)']:.3f}); "
          f"{time.perf_counter() - start:.0f} s")
    write_results("outlier_rule_selection", {"machine": machine_info(), "seed": args.seed,
                                             "rows": rows, "best": best["rule"]})


if __name__ == "__main__":
    main()
