"""The SAM2 network (our implementation, state-dict compatible with the official checkpoints)."""
