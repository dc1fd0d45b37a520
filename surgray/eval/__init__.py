"""Metrics (J, F, J&F, Dice, Challenge IoU) and evaluation reports."""
