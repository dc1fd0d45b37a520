"""Memory-bank policies: which frames a tracked object remembers."""
