"""Figures: training curves, confusion matrix, top losses (plots.py); sample and
augmentation grids (show.py). matplotlib's object API only: no global figure state."""
