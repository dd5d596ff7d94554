import math

import pytest
import torch
from torch import nn

from prunelab.seed_noise import error_variance_split, misclassified
from prunelab.train import evaluate


def test_misclassified_lists_exactly_the_examples_evaluate_counts_wrong():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(500, 5), torch.randint(0, 3, (500,))
    model.train()
    wrong = misclassified(model, x, y, batch_size=64)  # batches that do not divide 500
    assert model.training  # mode restored
    assert len(wrong) == round(500 * (1 - evaluate(model, x, y)["accuracy"]))
    pred = model(x).argmax(dim=1)
    assert wrong == (pred != y).nonzero().flatten().tolist()


def test_variance_split_matches_hand_computed_numbers():
    # run 2 misses everything run 1 misses plus 10 more: a between-run difference
    split = error_variance_split([range(10), range(20)], 100)
    assert split["error_std_pts"] == pytest.approx(100 * math.sqrt(0.005))
    # 10 examples flip at rate 1/2: 10 * (1/4) * 2/(2-1) / 100^2 = 0.0005
    assert split["independent_std_pts"] == pytest.approx(100 * math.sqrt(0.0005))
    assert split["between_run_var_share"] == pytest.approx(0.9)


def test_variance_split_is_the_diagonal_of_the_runs_covariance():
    gen = torch.Generator().manual_seed(1)
    wrong = (torch.rand(7, 300, generator=gen) < torch.rand(300, generator=gen) * 0.2)
    mistakes = [row.nonzero().flatten().tolist() for row in wrong]
    split = error_variance_split(mistakes, 300)
    x = wrong.double()
    total = x.mean(dim=1).var()
    diagonal = x.var(dim=0).sum() / 300 ** 2
    assert split["error_std_pts"] == pytest.approx(100 * float(total.sqrt()))
    assert split["independent_std_pts"] == pytest.approx(100 * float(diagonal.sqrt()))
    assert split["between_run_var_share"] == pytest.approx(float(1 - diagonal / total))


def test_identical_error_counts_give_no_total_variance():
    split = error_variance_split([[0, 1], [2, 3]], 10)
    assert split["error_std_pts"] == 0.0 and math.isnan(split["between_run_var_share"])
    assert split["independent_std_pts"] == pytest.approx(100 * math.sqrt(4 * 0.25 * 2) / 10)


@pytest.mark.parametrize("mistakes,n,match", [
    ([[0, 1]], 10, "at least two runs"),
    ([[0], [10]], 10, r"\[0, 10\)"),
    ([[0], [-1]], 10, r"\[0, 10\)"),
    ([[0, 0], [1]], 10, "twice"),
    ([[0], [1]], 0, "positive"),
])
def test_variance_split_refuses_bad_input(mistakes, n, match):
    with pytest.raises(ValueError, match=match):
        error_variance_split(mistakes, n)


def test_normal_range_probability_matches_closed_form_and_simulation():
    from prunelab.seed_noise import normal_range_probability

    normal = torch.distributions.Normal(0.0, 1.0)
    # two runs: |X1 - X2| ~ |N(0, 2)|
    for w in (0.5, 1.0, 3.0):
        exact = 2 * float(normal.cdf(torch.tensor(w / 2 ** 0.5))) - 1
        assert normal_range_probability(2, w) == pytest.approx(exact, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(200_000, 15, generator=gen, dtype=torch.float64)
    spread = draws.max(dim=1).values - draws.min(dim=1).values
    for w in (3.0, 3.6, 4.5):
        assert normal_range_probability(15, w) == pytest.approx(
            float((spread <= w).double().mean()), abs=0.005)
    assert normal_range_probability(15, 0.0) == 0.0
    assert normal_range_probability(15, 30.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two runs"):
        normal_range_probability(1, 1.0)
