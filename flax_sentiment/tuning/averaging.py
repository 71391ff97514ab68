"""Checkpoint averaging ("model soups", Wortsman et al. 2022): one model from the mean of the
parameters of several checkpoints, written as a workdir that evaluates, predicts and exports
like any other.

The checkpoints are the last or best k of a run, or those of several runs. Runs average only
when they started from the same parameters (the same pretrained model, head seed and
re-initialised layers: the `init_digest` each run records); otherwise their heads started apart
and the mean is no model at all.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flax_sentiment.config import metric_mode
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.workdir import Workdir

log = logging.getLogger(__name__)


def choose_steps(workdir: str | Path, *, last: int = 0, best: int = 0,
                 steps: Sequence[int] = (), weights: str | None = None) -> list[int]:
    """Checkpoint steps of a run: the given ones, the newest `last`, or the `best` best by the
    run's eval metric (as logged in metrics.jsonl at each evaluation) of the `weights` that
    will be averaged ('raw' or 'ema'; None: the run's eval.weights, as `eval/`)."""
    wd = Workdir(workdir)
    if not wd.checkpoints_dir.is_dir():
        raise UserError(f"{wd.path}: no checkpoints folder (not a training workdir)")
    ckpts = wd.checkpoints(read_only=True)
    try:
        have = ckpts.all_steps()
    finally:
        ckpts.close()
    if sum(bool(x) for x in (last, best, steps)) != 1:
        raise UserError("choose one of --last K, --best K or --steps N,M")
    if steps:
        missing = sorted(set(steps) - set(have))
        if missing:
            raise UserError(f"{wd.path}: no checkpoint at step(s) {missing} (have {have})")
        return sorted(set(steps))
    if last:
        if last > len(have):
            raise UserError(f"{wd.path}: --last {last} but the run kept {len(have)} "
                            f"checkpoints ({have}); raise checkpoint.keep to keep more")
        return have[-last:]
    config = wd.read_config()
    metric = config.eval.metric if config is not None else "accuracy"
    sign = -1.0 if metric_mode(config) == "min" else 1.0
    # `eval/` logs the weights the run is judged by; a run with a moving average also logs
    # each kind as `eval_raw/` and `eval_ema/`.
    key, rows = f"eval/{metric}", wd.read_metrics()
    if weights is not None and any(f"eval_{weights}/{metric}" in r for r in rows):
        key = f"eval_{weights}/{metric}"
    scores = {r["step"]: r[key] for r in rows if key in r and r["step"] in have}
    if best > len(scores):
        raise UserError(f"{wd.path}: --best {best} but only {len(scores)} kept checkpoints "
                        f"have an {key} ({sorted(scores)}); raise checkpoint.keep or "
                        "evaluate more often")
    return sorted(sorted(scores, key=lambda s: -sign * scores[s])[:best])


def _meta(workdir: Path, step: int) -> dict[str, Any]:
    ckpts = Workdir(workdir).checkpoints(read_only=True)
    try:
        return ckpts.restore_extra(step)["meta"]
    finally:
        ckpts.close()


def average_params(sources: Sequence[tuple[str | Path, int]], *, weights: str | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(mean parameters, the first source's metadata) of `(workdir, step)` pairs, refusing
    sources that are not one model started from one set of parameters."""
    if not sources:
        raise UserError("nothing to average")
    metas = [(Path(w), s, _meta(Path(w), s)) for w, s in sources]
    first_dir, first_step, first = metas[0]
    for name in ("model_type", "encoder_config", "label_names"):
        for w, s, meta in metas[1:]:
            if meta.get(name) != first.get(name):
                raise UserError(f"cannot average {w} step {s} with {first_dir} step "
                                f"{first_step}: their {name} differ")
    if len({w for w, _, _ in metas}) > 1:
        digests = {w: meta.get("init_digest") for w, _, meta in metas}
        unknown = sorted(str(w) for w, d in digests.items() if d is None)
        if unknown:
            raise UserError(f"cannot average across runs: {', '.join(unknown)} recorded no "
                            "starting parameters (trained before runs recorded them)")
        if len(set(digests.values())) > 1:
            raise UserError("cannot average these runs: they started from different "
                            "parameters (another pretrained model, model.head_seed or "
                            "model.reinit_layers), so their heads started apart: "
                            + ", ".join(f"{w}={d[:12]}" for w, d in digests.items()))
    total: dict[str, np.ndarray] | None = None
    for w, s, _ in metas:
        run = Workdir(w).load_run(s, dtype="float32", weights=weights, task="classify")
        params = jax.device_get(ModelDef.params_of(run.model))
        if total is None:
            total = {k: np.asarray(v, np.float64) for k, v in params.items()}
        else:
            for k, v in params.items():
                total[k] += np.asarray(v, np.float64)
    mean = {k: (v / len(metas)).astype(np.float32) for k, v in total.items()}
    return mean, first


def write_average(sources: Sequence[tuple[str | Path, int]], output: str | Path, *,
                  weights: str | None = None) -> Path:
    """Average `sources` into a new workdir `output` (refused if it exists and is not empty;
    written in a temporary folder and renamed, so a failure leaves nothing)."""
    output = Path(output).expanduser().absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"--output {output}: exists and is not empty (nothing was written)")
    mean, meta = average_params(sources, weights=weights)
    first = Workdir(sources[0][0])
    config = first.read_config()
    if config is None:
        raise UserError(f"{first.path}: no config.json")
    # The average is plain parameters: no moving average of its own, not resumable, and of
    # LoRA runs the mean of their merged weights (no adapters of its own).
    config.train.ema_decay = 0.0
    config.eval.weights = "raw"
    if "lora" in config.model:
        config.model.lora.rank = None
    meta = {k: v for k, v in meta.items() if k != "lora"}
    meta = dict(meta, config=json.loads(config.to_json()),
                averaged_from=[{"workdir": str(Path(w).absolute()), "step": int(s),
                                "weights": weights or "auto"} for w, s in sources])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        wd = Workdir(tmp)
        wd.config_file.write_text(config.to_json(indent=2))
        if first.tokenizer_dir.is_dir():
            shutil.copytree(first.tokenizer_dir, wd.tokenizer_dir)
        step = max(int(s) for _, s in sources)
        ckpts = wd.checkpoints(keep=1, async_save=False)
        try:
            ckpts.save(step, {"params": mean}, {"meta": meta, "progress": {}, "data": {}})
            ckpts.wait()
        finally:
            ckpts.close()
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("averaged %d checkpoints into %s", len(sources), output)
    return output
