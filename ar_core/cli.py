"""The console command: `attend-rectify train|evaluate|analyze|compare|convert|perturb|bench|card [ARGS]`.

Each subcommand is the module of the same name: `attend-rectify evaluate ...` is
`python -m ar_core.evaluate ...`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "train a model (ar_core.train)",
    "evaluate": "accuracy, calibration and rectification on a data set (ar_core.evaluate)",
    "analyze": "the whole data set's story, with figures (ar_core.analyze)",
    "compare": "two models image by image, McNemar's test, the claim over seeds (ar_core.compare)",
    "convert": "convert a reference-implementation checkpoint (ar_core.convert)",
    "perturb": "accuracy under clutter and occlusion (ar_core.perturb)",
    "bench": "benchmarks (ar_core.bench)",
    "card": "the model-card table of checkpoints, from their headers (ar_core.card)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: attend-rectify COMMAND [ARGS]  (COMMAND --help for its arguments)\n\ncommands:\n" + "\n".join(
        f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"attend-rectify: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    sys.argv = [f"attend-rectify {command}", *rest]  # argparse's usage line names the subcommand
    importlib.import_module(f"ar_core.{command}").main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
