"""Built-in synthetic data: XOR-like parity with irrelevant variables, blobs, madelon-like, digits.

XOR-like (reconstruction of Guo et al., see METHODS.md section 1): x in R^p with i.i.d.
U[-1, 1] (or N(0, 1)) entries; label 1[prod_{j<d} x_j > 0] over the first d columns, so the
remaining p - d columns are irrelevant. Optional label noise flips a fraction of labels.
"""

from __future__ import annotations

import numpy as np

from prunelab.data.base import Dataset, standardize, stratified_split, to_dataset
from prunelab.errors import ConfigError, check_range


def load_xor(
    *,
    n_relevant: int = 2,
    n_irrelevant: int = 10,
    n_train: int = 1000,
    n_test: int = 5000,
    label_noise: float = 0.0,
    distribution: str = "uniform",
    seed: int = 0,
) -> Dataset:
    """XOR-like parity of the first `n_relevant` coordinates; the rest are irrelevant noise."""
    check_range("n_relevant", n_relevant, 1, 16)
    check_range("n_irrelevant", n_irrelevant, 0)
    check_range("n_train", n_train, 1)
    check_range("n_test", n_test, 1)
    check_range("label_noise", label_noise, 0.0, 0.5)
    rng = np.random.default_rng(seed)
    p = n_relevant + n_irrelevant
    n = n_train + n_test
    if distribution == "uniform":
        x = rng.uniform(-1.0, 1.0, size=(n, p))
    elif distribution == "normal":
        x = rng.standard_normal(size=(n, p))
    else:
        raise ConfigError(f"distribution must be one of uniform, normal; got '{distribution}'")
    y = (np.prod(x[:, :n_relevant], axis=1) > 0).astype(np.int64)
    flip = rng.random(n_train) < label_noise  # noise only on the training labels
    y[:n_train] = np.where(flip, 1 - y[:n_train], y[:n_train])
    names = [f"x{j}" for j in range(p)]
    return to_dataset(
        "xor",
        x[:n_train], y[:n_train], x[n_train:], y[n_train:],
        num_classes=2,
        feature_names=names,
        relevant_features=list(range(n_relevant)),
        class_names=["0", "1"],
        meta={"n_relevant": n_relevant, "n_irrelevant": n_irrelevant, "label_noise": label_noise,
              "distribution": distribution, "seed": seed},
    )


def load_blobs(
    *,
    n_clusters: int = 3,
    n_features: int = 2,
    n_train: int = 100,
    n_test: int = 1000,
    cluster_std: float = 1.0,
    center_box: float = 10.0,
    seed: int = 0,
) -> Dataset:
    """Gaussian clusters, one class each, standardised with training statistics."""
    from sklearn.datasets import make_blobs

    check_range("n_clusters", n_clusters, 2)
    check_range("n_train", n_train, n_clusters)
    check_range("cluster_std", cluster_std, 0.0, low_inclusive=False)
    x, y = make_blobs(
        n_samples=n_train + n_test, n_features=n_features, centers=n_clusters,
        cluster_std=cluster_std, center_box=(-center_box, center_box), random_state=seed,
    )
    tr, te = stratified_split(y, n_test / (n_train + n_test), seed)
    xtr, xte, _ = standardize(x[tr], x[te])
    return to_dataset(
        "blobs", xtr, y[tr], xte, y[te], num_classes=n_clusters,
        feature_names=[f"x{j}" for j in range(n_features)],
        relevant_features=list(range(n_features)),
        meta={"n_clusters": n_clusters, "cluster_std": cluster_std, "seed": seed},
    )


def load_madelon_like(
    *,
    n_samples: int = 2000,
    n_features: int = 500,
    n_informative: int = 5,
    n_redundant: int = 15,
    n_classes: int = 2,
    test_fraction: float = 0.3,
    flip_y: float = 0.01,
    seed: int = 0,
) -> Dataset:
    """scikit-learn's make_classification (the Madelon generator) with known informative columns.

    Columns are not shuffled, so 0..n_informative-1 are informative and the next n_redundant
    are linear combinations of them; both are reported as relevant.
    """
    from sklearn.datasets import make_classification

    check_range("n_features", n_features, n_informative + n_redundant)
    x, y = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=n_informative,
        n_redundant=n_redundant, n_repeated=0, n_classes=n_classes,
        n_clusters_per_class=2 if n_classes * 2 <= 2**n_informative else 1,
        flip_y=flip_y, class_sep=1.0, hypercube=True, shuffle=False, random_state=seed,
    )
    tr, te = stratified_split(y, test_fraction, seed)
    xtr, xte, _ = standardize(x[tr], x[te])
    return to_dataset(
        "madelon-like", xtr, y[tr], xte, y[te], num_classes=n_classes,
        feature_names=[f"x{j}" for j in range(n_features)],
        relevant_features=list(range(n_informative + n_redundant)),
        meta={"n_informative": n_informative, "n_redundant": n_redundant, "seed": seed},
    )


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, flatten: bool = False) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), as (n, 1, 8, 8) unless `flatten`."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, test_fraction, seed)
    xtr, xte, _ = standardize(x[tr], x[te])
    if not flatten:
        xtr, xte = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
    return to_dataset(
        "digits", xtr, y[tr], xte, y[te], num_classes=10,
        feature_names=[f"pixel_{i // 8}_{i % 8}" for i in range(64)],
        class_names=[str(i) for i in range(10)],
        meta={"seed": seed},
    )
