"""Training: state, optimizer, the jitted step, checkpoints, metrics, run building and the loop."""
