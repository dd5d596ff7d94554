"""Per-step cost of the gate prior and the theta update of Bernoulli-gate pruning, with the
prior differentiated in the loss (gate_prior_as="loss") and with its gradient added in the
theta update (gate_prior_as="gradient"), side by side in one process.

LeNet-300-100 at width W (default 1: 300-100 gates), every gate free (theta uniform in
[0.1, 0.9]), after the warm-up; one timed step is penalty() [+ its backward] + the theta update
(lr_theta tiny, so no gate is removed and the state stays the same). Rounds alternate the two
modes; the median of each is reported with the ratio

    gradient / loss    (the same updates bit for bit; tests/test_bernoulli.py)

Run: .venv/bin/python benchmarks/bernoulli_prior_cost.py [--rounds 5] [--steps 2000] [--width 1]
Writes benchmarks/results/bernoulli_prior_cost.json.
"""

from __future__ import annotations

import argparse
import sys

import torch
from benchcommon import alternating_us, report_ratio

from prunelab.experiments.bernoulli import METHOD_OPTIONS, build
from prunelab.methods.base import TrainContext
from prunelab.methods.bernoulli import BernoulliGating

NAME = "bernoulli_prior_cost"


def make_step(mode: str, width: int):
    torch.manual_seed(0)
    model = build("lenet-300-100", width, (1, 28, 28), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    options = {**METHOD_OPTIONS, "gate_prior_as": mode, "shrink": False, "lr_theta": 1e-9}
    method = BernoulliGating(n_train=60000, **options)
    method.attach(TrainContext(model, opt, 600, 12000, 20))
    with torch.no_grad():
        for theta in method.gates.theta.values():
            theta.uniform_(0.1, 0.9)
    step = 5000  # after the warm-up (3,000 steps), before the gamma ramp

    def one() -> None:
        for theta in method.gates.theta.values():  # the data term's gradient, as after backward
            theta.grad = torch.zeros_like(theta)
        method.step = step
        penalty = method.penalty(model)
        if penalty.requires_grad:
            penalty.backward()
        method.after_step(step + 1)

    return one


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--width", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = {mode: make_step(mode, args.width) for mode in ("loss", "gradient")}
    times = alternating_us(steps, args.rounds, args.steps, warmup=100)
    report_ratio(NAME, times, "step", "gradient", "loss", vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
