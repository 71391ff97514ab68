"""metrics.jsonl + TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsWriter:
    """One JSON object per line (each with `step`) and the same scalars as TensorBoard events."""

    def __init__(self, workdir: Path, *, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._workdir = Path(workdir)

    def _board(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self._workdir), flush_secs=30)
        return self._tb

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        board = self._board()
        for key, value in scalars.items():
            if isinstance(value, int | float) and math.isfinite(value):
                board.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the restored checkpoint (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging for scripts: our messages, not the libraries' chatter."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
