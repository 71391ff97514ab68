"""Training: the pure train / eval steps (steps), the loop made of hooks (loop), orbax
checkpoints (checkpoint), a run's starting parameters (initialization), distillation
teachers' logits (distill)."""
