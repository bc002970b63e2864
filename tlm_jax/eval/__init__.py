"""Evaluation: classification metrics, confidence intervals and simple baselines."""
