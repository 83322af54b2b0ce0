"""Attackers and probes trained on frozen features, and their metrics: shared by the audit, the
adapter's quick privacy probe and the pruner's evaluation (below all three).

`anonfeat.probes.attackers`: the models, the sample bookkeeping and the training routines;
`anonfeat.probes.metrics`: cMAP, balanced accuracy and friends with the audit's conventions.
"""
