"""Tubelet pruning (docs/method.md; arXiv 2603.26336): a video ViT with an action and a privacy CLS token keeps the
top-k tubelets by s = a_act - lambda * a_priv inside chosen blocks. `train_pruner` fits it on decoded
clips, `prune` writes pruned features (and anonymized videos, heatmaps) like `extract` does."""
