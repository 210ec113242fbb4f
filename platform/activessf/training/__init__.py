"""Training building blocks (pure PyTorch): optimiser groups, schedules, checkpoints, the non-finite guard."""
