"""Dataset readers and the synthetic surgical video generator."""
