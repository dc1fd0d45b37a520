"""Losses, prompt simulation and the training loop."""
