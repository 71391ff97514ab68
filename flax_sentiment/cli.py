"""What every script shares: absl flags (with ml_collections' `config_flags`), console logging,
and bad input as one `error:` line with exit status 2 instead of a traceback.

Scripts stay thin: they define their flags and a `main(argv)`, and hand it to `run`. Evaluate,
export and predict learn the config from `--workdir/config.json` first (`define_run_config`), so
their `--config.data.*` / `--config.eval.*` overrides parse against the run's own keys and types.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from flax_sentiment import host
from flax_sentiment.config import changed_keys
from flax_sentiment.errors import UserError


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name=VALUE` / `--name VALUE` in argv, before flags are parsed."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def define_run_config(argv: list[str]) -> ml_collections.ConfigDict | None:
    """Phase one of parsing for scripts that read a training workdir: the run's saved config
    becomes the `--config` flag. Returns the saved config, to compare the parsed one with
    (`run_overrides`), or None when there is no workdir config (then `--config.*` is refused)."""
    from flax_sentiment.workdir import Workdir

    workdir = flag_value(argv, "workdir")
    try:
        saved = Workdir(workdir).read_config() if workdir else None
    except UserError as e:
        fail(str(e))
    if saved is None:
        bad = next((a for a in argv if a.startswith("--config.")), None)
        if bad is not None:
            fail(f"{bad.split('=')[0]}: config overrides need --workdir of a training run "
                 f"(with a config.json)")
        return None
    config_flags.DEFINE_config_dict("config", copy.deepcopy(saved),
                                    "the run's config (from --workdir): override data.* or "
                                    "eval.* keys", lock_config=True)
    return saved


def define_workdir_flags(*, required: bool = True) -> ml_collections.ConfigDict | None:
    """`--workdir DIR [--step N | --best]` and the run's config as `--config` (see
    `define_run_config`, whose result this returns) for scripts that read a training run."""
    flags.DEFINE_string("workdir", None, "A training workdir.", required=required)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_bool("best", None, "The best checkpoint by the run's eval metric.")
    flags.mark_flags_as_mutual_exclusive(["step", "best"])
    return define_run_config(sys.argv[1:])


def checkpoint_step() -> int | str | None:
    return "best" if flags.FLAGS.best else flags.FLAGS.step


def run_overrides(saved: ml_collections.ConfigDict | None) -> dict[str, Any]:
    """Phase two: {'data.KEY': value, ...} for every `--config.*` value that differs."""
    if saved is None:
        return {}
    return changed_keys(saved, flags.FLAGS.config)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def run(main: Callable[[list[str]], None], *, config_flag: str | None = None,
        positional: bool = False) -> None:
    """absl's `app.run(main)` with console logging, and a bad flag, an unexpected argument
    (unless `positional`), a missing or unloadable config file and any `UserError` reported as
    one line (exit 2) instead of a traceback. First of all, `host.use_huge_pages` (which may
    restart the process, before JAX has loaded)."""
    host.use_huge_pages()
    if config_flag is not None:
        path = flag_value(sys.argv[1:], config_flag)
        if path is not None and not Path(path.split(":", 1)[0]).is_file():
            fail(f"--{config_flag} {path.split(':', 1)[0]}: no such file")

    def guarded(argv: list[str]) -> None:
        if len(argv) > 1 and not positional:
            fail(f"unexpected arguments: {argv[1:]}")
        setup_logging()
        try:
            main(argv)
        except UserError as e:
            fail(str(e))
        except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves and returns)
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    try:
        app.run(guarded, flags_parser=_parse_flags)
    except SyntaxError as e:  # a config file is Python: say where, without a traceback
        fail(f"--{config_flag} {e.filename}, line {e.lineno}: {e.msg}")
    except OSError as e:  # config_flags defers a config file's load error to first use
        if "config file" not in str(e):
            raise
        cause = e.__cause__ or e
        detail = str(cause).strip().splitlines()
        fail(f"--{config_flag}: could not load the config file ({detail[-1] if detail else e})")


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging for scripts: our messages, not the libraries' chatter."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("jax._src", "orbax", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # orbax logs through absl, e.g. a notice for every read-only checkpoint manager.
    logging.getLogger("absl").setLevel(logging.ERROR)
