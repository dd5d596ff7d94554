"""Analyses of the loss landscape: paths, Bezier curves, Hessian spectra, optima census.

Analyses never mutate their inputs: they take parameter vectors and evaluate the model with
`torch.func.functional_call`.
"""
