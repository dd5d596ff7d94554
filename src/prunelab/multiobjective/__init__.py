"""Multiobjective training (Reiners et al.): Pareto-front utilities, the adaptive weighted-sum
knee search and stochastic multi-gradient descent (SMGD), for objectives (CE, l1)."""

from prunelab.multiobjective.knee import (
    FrontPoint,
    KneeSearch,
    dichotomic_search,
    grid_search,
    select_knee,
)
from prunelab.multiobjective.pareto import (
    dominance_gap,
    hypervolume_2d,
    non_dominated,
    plot_accuracy_front,
    plot_loss_front,
)
from prunelab.multiobjective.smgd import SMGDConfig, SMGDResult, min_norm_coefficient, train_smgd

__all__ = [
    "FrontPoint", "KneeSearch", "SMGDConfig", "SMGDResult", "dichotomic_search",
    "dominance_gap", "grid_search", "hypervolume_2d", "min_norm_coefficient", "non_dominated",
    "plot_accuracy_front", "plot_loss_front", "select_knee", "train_smgd",
]
