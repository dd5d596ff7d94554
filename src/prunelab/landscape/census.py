"""The local-optima census (Guo et al.): many restarts of a small MLP on XOR-like data with a
growing number of irrelevant variables, dense and with annealed pruning; count the distinct
optima they end in, their final losses and how often they succeed.

Restarts are trained together with `prunelab.landscape.ensemble` (restart r: seed `seed + r`
for init and batch order; all restarts share one training set). Results are saved per
(method, irrelevant count, chunk of restarts) as one JSON file written atomically, so an
interrupted census keeps every finished chunk and `run_census` on the same directory resumes.

**Counting rule** (`count_optima`): two restarts sit in the same optimum when their final
full-batch training losses differ by at most `loss_tol` (absolute) AND their predicted classes
on a fixed probe set (`n_probe` fresh points from the data distribution) disagree on at most a
fraction `probe_tol`. Clusters are formed greedily: restarts sorted by final loss, each joins
the first existing cluster whose leader (first member) matches it under that rule, else starts
a new cluster. The count is the number of clusters (at most R). The loss alone cannot tell
apart the many near-zero-loss solutions a dense net reaches by fitting noise; the probe
patterns can, and the loss keeps apart optima that predict alike but fit differently.

**Data draws** (`data_draws`, default 1): every irrelevant count gets its own random data set,
so with one draw per count the curve mixes the effect of the irrelevant variables with the luck
of each draw (how separable that particular sample is). With D draws, draw d uses data seed
`data_seed + d` (R restarts each); a setting reports each draw's count and their geometric
mean, and success rates and loss distributions pool the draws.

**Fit**: least squares of log(count) against the irrelevant count (with several draws, of the
mean over draws of log(count)), over the settings where no draw reached R (saturated settings
carry no slope information); slope, intercept, R^2. With several draws `fit_log_count` on all
(setting, draw) points is reported too (`fits_per_draw`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab import atomic
from prunelab.config import OPTIMIZERS, TrainConfig
from prunelab.data import Dataset, load_dataset
from prunelab.errors import ConfigError, UnknownNameError, check_range
from prunelab.landscape.ensemble import EnsembleResult, EnsembleTrainer
from prunelab.methods import build_method
from prunelab.models import build_model

CENSUS_METHODS = ("dense", "annealed")


@dataclass
class CensusConfig:
    """Settings of a census. `annealed` holds the AnnealedPruning options."""

    irrelevant: list[int] = field(default_factory=lambda: [0, 2, 4, 8, 16, 32, 64])
    restarts: int = 200
    methods: list[str] = field(default_factory=lambda: list(CENSUS_METHODS))
    n_relevant: int = 2
    n_train: int = 500
    n_test: int = 2000
    n_probe: int = 512
    data_seed: int = 0
    data_draws: int = 1
    widths: list[int] = field(default_factory=lambda: [32])
    epochs: int = 60
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 0.01
    annealed: dict[str, Any] = field(default_factory=lambda: {"keep": 40, "mu": 5.0})
    loss_tol: float = 0.01
    probe_tol: float = 0.02
    success_threshold: float = 0.95
    chunk: int = 50
    seed: int = 0

    def validate(self) -> CensusConfig:
        if self.restarts < 2:
            raise ConfigError(f"restarts (R) must be >= 2 to count optima, got {self.restarts}")
        if not self.irrelevant:
            raise ConfigError("irrelevant must list at least one irrelevant-variable count")
        for p in self.irrelevant:
            check_range("irrelevant", p, 0)
        for m in self.methods:
            if m not in CENSUS_METHODS:
                raise UnknownNameError("census method", m, CENSUS_METHODS)
        check_range("n_probe", self.n_probe, 1)
        check_range("data_draws", self.data_draws, 1)
        check_range("loss_tol", self.loss_tol, 0.0)
        check_range("probe_tol", self.probe_tol, 0.0, 1.0)
        check_range("success_threshold", self.success_threshold, 0.0, 1.0)
        check_range("chunk", self.chunk, 1)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got "
                              f"'{self.optimizer}'")
        build_method("annealed", **self.annealed)  # validates the options early
        self.train_config()
        return self

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                           optimizer=self.optimizer, lr=self.lr, eval_train=False).validate()

    def key(self) -> str:
        """Hash of everything that changes a restart's result (not R, the settings list,
        tolerances or chunking)."""
        d = asdict(self)
        for k in ("restarts", "irrelevant", "methods", "loss_tol", "probe_tol",
                  "success_threshold", "chunk", "data_draws"):
            d.pop(k)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def census_data(cfg: CensusConfig, n_irrelevant: int, draw: int = 0
                ) -> tuple[Dataset, torch.Tensor]:
    """The shared training/test set of one setting (data draw `draw`) and its probe inputs."""
    seed = cfg.data_seed + draw
    data = load_dataset("xor", n_relevant=cfg.n_relevant, n_irrelevant=n_irrelevant,
                        n_train=cfg.n_train, n_test=cfg.n_test, seed=seed)
    rng = np.random.default_rng(seed + 7919)
    probe = rng.uniform(-1.0, 1.0, size=(cfg.n_probe, cfg.n_relevant + n_irrelevant))
    return data, torch.as_tensor(probe, dtype=torch.float32)


def relevant_fractions(
    first_weight: torch.Tensor, relevant: Sequence[int], mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member: fraction of surviving first-layer weights on relevant inputs, and the
    fraction of first-layer |w| mass on them. first_weight: (R, hidden, inputs)."""
    alive = (first_weight != 0) if mask is None else mask
    rel = torch.zeros(first_weight.shape[-1], dtype=torch.bool)
    rel[list(relevant)] = True
    count = alive[..., rel].sum((1, 2)).float() / alive.sum((1, 2)).clamp(min=1).float()
    mass = first_weight.abs()
    share = mass[..., rel].sum((1, 2)) / mass.sum((1, 2)).clamp(min=1e-12)
    return count, share


def train_chunk(
    cfg: CensusConfig, method: str, data: Dataset, probe: torch.Tensor, restarts: Sequence[int]
) -> list[dict[str, Any]]:
    """Train the given restarts together; one record per restart."""
    seeds = [cfg.seed + r for r in restarts]
    model_fn = lambda: build_model("mlp", data.input_shape, data.num_classes, widths=cfg.widths)
    trainer = EnsembleTrainer(model_fn, data, cfg.train_config(), seeds,
                              method=build_method(method, **(cfg.annealed if method ==
                                                             "annealed" else {})))
    res: EnsembleResult = trainer.fit()
    preds = trainer.predict(res.params, probe)
    first = next(n for n in res.params if n.endswith("weight"))
    mask = None if res.masks is None else res.masks[first]
    count, share = relevant_fractions(res.params[first], data.relevant_features or [], mask)
    alive = (res.params[first] != 0).sum((1, 2)) if mask is None else mask.sum((1, 2))
    out = []
    for i, r in enumerate(restarts):
        out.append({
            "restart": int(r), "seed": seeds[i],
            **{k: float(v[i]) for k, v in res.final.items()},
            "first_layer_alive": int(alive[i]),
            "relevant_fraction": float(count[i]),
            "relevant_mass": float(share[i]),
            "probe": "".join(str(int(c)) for c in preds[i]),
        })
    return out


def count_optima(
    losses: Sequence[float], patterns: Sequence[str], loss_tol: float, probe_tol: float
) -> tuple[int, list[int]]:
    """Number of distinct optima and each restart's cluster (rule in the module doc)."""
    if len(losses) != len(patterns):
        raise ConfigError("losses and patterns must have one entry per restart")
    order = sorted(range(len(losses)), key=lambda i: (losses[i], i))
    arrays = [np.frombuffer(p.encode(), dtype=np.uint8) for p in patterns]
    leaders: list[int] = []
    labels = [0] * len(losses)
    for i in order:
        for c, j in enumerate(leaders):
            if abs(losses[i] - losses[j]) <= loss_tol and (
                arrays[i].size == 0 or float(np.mean(arrays[i] != arrays[j])) <= probe_tol
            ):
                labels[i] = c
                break
        else:
            labels[i] = len(leaders)
            leaders.append(i)
    return len(leaders), labels


def fit_log_count(
    xs: Sequence[float], counts: Sequence[float], restarts: int
) -> dict[str, float | int | None]:
    """Least-squares line of log(count) against x over the points with count < restarts."""
    pts = [(float(x), math.log(c)) for x, c in zip(xs, counts) if 0 < c < restarts]
    out: dict[str, float | int | None] = {"points": len(pts), "slope": None, "intercept": None,
                                          "r2": None}
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return out
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    out.update(slope=float(slope), intercept=float(intercept), r2=r2)
    return out


def summarize_setting(records: list[dict[str, Any]], cfg: CensusConfig) -> dict[str, Any]:
    """Count, success rate and loss distribution of one (method, irrelevant) setting."""
    losses = [r["train_loss"] for r in records]
    count, labels = count_optima(losses, [r["probe"] for r in records], cfg.loss_tol,
                                 cfg.probe_tol)
    acc = np.array([r["test_accuracy"] for r in records])
    ok = acc >= cfg.success_threshold
    rel = [r["relevant_fraction"] for r in records if r["test_accuracy"] >= cfg.success_threshold]
    q = np.quantile(losses, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]).tolist()
    sizes = np.bincount(labels).tolist()
    return {
        "restarts": len(records), "count": count, "success_rate": float(ok.mean()),
        "test_accuracy_mean": float(acc.mean()), "test_accuracy_std": float(acc.std(ddof=1)),
        "train_loss_quantiles": dict(zip(["min", "p10", "p25", "median", "p75", "p90", "max"],
                                         q)),
        "largest_cluster": max(sizes),
        "relevant_fraction_successful": float(np.mean(rel)) if rel else None,
        "relevant_fraction_all": float(np.mean([r["relevant_fraction"] for r in records])),
    }


def _chunk_path(out: Path, method: str, p: int, c: int, draw: int = 0) -> Path:
    return out / _setting_name(method, p, draw) / f"chunk-{c:04d}.json"


def _setting_name(method: str, p: int, draw: int = 0) -> str:
    # draw 0 keeps the single-draw name, so censuses run before draws existed are reused
    return f"{method}-irr{p}" + (f"-data{draw}" if draw else "")


def combine_draws(per_draw: list[dict[str, Any]], records: list[dict[str, Any]],
                  cfg: CensusConfig) -> dict[str, Any]:
    """One setting's summary over its data draws: pooled statistics, each draw's count and
    their geometric mean as `count` (the count itself when there is one draw)."""
    pooled = summarize_setting(records, cfg)
    counts = [d["count"] for d in per_draw]
    if len(per_draw) == 1:
        return {**per_draw[0], "counts": counts}
    pooled["count"] = float(math.exp(np.mean(np.log(counts))))
    pooled["counts"] = counts
    pooled["largest_cluster"] = max(d["largest_cluster"] for d in per_draw)
    pooled["saturated"] = any(c >= cfg.restarts for c in counts)
    return pooled


def run_census(
    cfg: CensusConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] | None = None,
    trainer: Callable[..., list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a census into `out`; returns the summary (also written to
    out/summary.json). Finished chunks found in `out` are reused, not retrained."""
    cfg.validate()
    log = log or (lambda s: None)
    trainer = trainer or train_chunk
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "census.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text()).get("key")
        if old != cfg.key():
            raise ConfigError(f"{out} holds a census with other settings (key {old}); use a "
                              "new output directory")
    atomic.write_json(meta_path, {"key": cfg.key(), "config": asdict(cfg)})
    settings: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {}
    reused = trained = 0
    for p in cfg.irrelevant:
        draws = [census_data(cfg, p, d) for d in range(cfg.data_draws)]
        for method in cfg.methods:
            per_draw: list[dict[str, Any]] = []
            recs: list[dict[str, Any]] = []
            for d, (data, probe) in enumerate(draws):
                draw_recs: list[dict[str, Any]] = []
                for c, start in enumerate(range(0, cfg.restarts, cfg.chunk)):
                    rng = list(range(start, min(start + cfg.chunk, cfg.restarts)))
                    path = _chunk_path(out, method, p, c, d)
                    chunk = None
                    if path.exists():
                        saved = json.loads(path.read_text())
                        if saved.get("key") == cfg.key() and saved.get("restarts") == rng:
                            chunk = saved["records"]
                            reused += 1
                    if chunk is None:
                        chunk = trainer(cfg, method, data, probe, rng)
                        atomic.write_json(path, {"key": cfg.key(), "restarts": rng,
                                                 "records": chunk})
                        trained += 1
                    draw_recs.extend(chunk)
                per_draw.append(summarize_setting(draw_recs, cfg))
                recs.extend(draw_recs)
            summary = combine_draws(per_draw, recs, cfg)
            summary.update(method=method, irrelevant=p)
            settings.append(summary)
            records[f"{method}-irr{p}"] = recs
            counts = "/".join(str(c) for c in summary["counts"])
            log(f"census {method} irrelevant={p}: {counts} optima in {cfg.restarts} restarts"
                f"{' per data draw' if cfg.data_draws > 1 else ''}, success "
                f"{summary['success_rate']:.2f}")
    fits = {}
    fits_per_draw = {}
    for m in cfg.methods:
        mine = [s for s in settings if s["method"] == m]
        usable = [s for s in mine if max(s["counts"]) < cfg.restarts]
        fits[m] = fit_log_count([s["irrelevant"] for s in usable],
                                [s["count"] for s in usable], cfg.restarts)
        if cfg.data_draws > 1:
            fits_per_draw[m] = fit_log_count([s["irrelevant"] for s in usable
                                              for _ in s["counts"]],
                                             [c for s in usable for c in s["counts"]],
                                             cfg.restarts)
    result = {"config": asdict(cfg), "settings": settings, "fits": fits,
              "fits_per_draw": fits_per_draw,
              "chunks_reused": reused, "chunks_trained": trained}
    atomic.write_json(out / "summary.json", result)
    result["records"] = records
    return result
