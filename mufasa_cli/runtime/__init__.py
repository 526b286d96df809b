"""Seeding, device choice, the shared training loop with checkpoints and resume."""
