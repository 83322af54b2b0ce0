"""Losses and autograd pieces shared by the trainers (adapter, pruner): below both, above `comm`.

`anonfeat.nn.losses`: NT-Xent (and its distributed form), latent consistency, attribute
decorrelation, gradient reversal and its DANN schedule.
"""
