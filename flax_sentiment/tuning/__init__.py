"""Tuning: the Optuna sweep, seeds and ensembles (sweep), checkpoint averaging (averaging)."""
