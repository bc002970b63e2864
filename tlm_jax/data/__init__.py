"""Document sources, subsets and synthetic data for pretraining."""
