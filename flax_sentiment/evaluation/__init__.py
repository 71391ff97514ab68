"""Evaluation and inference: metrics from additive counts (metrics), a split or a workdir
evaluated (evaluate), plots (plots), texts to labels (predict)."""
