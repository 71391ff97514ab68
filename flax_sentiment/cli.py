"""What every script shares: absl flags, and bad input as one `error:` line with exit status 2.

Scripts stay thin: they define their flags and a `main(argv)`, and hand it to `run`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from absl import app

from flax_sentiment.errors import UserError


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def config_file_arg(argv: list[str], flag: str = "config") -> str | None:
    """The file part of `--config=FILE[:ARG]` / `--config FILE` in argv, if given."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{flag}" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value.split(":", 1)[0]
    return None


def run(main: Callable[[list[str]], None], *, config_flag: str | None = None) -> None:
    """absl's `app.run(main)`, with a missing or unloadable config file and any `UserError`
    reported as one line (exit 2) instead of a traceback."""
    if config_flag is not None:
        path = config_file_arg(sys.argv[1:], config_flag)
        if path is not None and not Path(path).is_file():
            fail(f"--{config_flag} {path}: no such file")

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            fail(str(e))

    try:
        app.run(guarded)
    except SyntaxError as e:  # a config file is Python: say where, without a traceback
        fail(f"--{config_flag} {e.filename}, line {e.lineno}: {e.msg}")
    except OSError as e:  # config_flags defers a config file's load error to first use
        if "config file" not in str(e):
            raise
        cause = e.__cause__ or e
        detail = str(cause).strip().splitlines()
        fail(f"--{config_flag}: could not load the config file ({detail[-1] if detail else e})")
