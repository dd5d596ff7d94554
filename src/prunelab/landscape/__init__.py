"""Analyses of the loss landscape: paths, Bezier curves, Hessian spectra, optima census.

Analyses never mutate their inputs: they take parameter vectors and evaluate the model with
`torch.func.functional_call`. The exception is `minimize.converge`, which trains the model it is
given to a minimum (in place) so that it can be measured there.
"""
