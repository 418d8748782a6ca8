"""The ``retinanet`` command: train, eval, infer, export, analyze-loss, browse-data."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional

# subcommand -> module with add_arguments(parser) and run(args) -> int; imported only when used.
COMMANDS = {
    "train": ("retinanet.commands.train", "train a detector from a YAML config"),
    "eval": ("retinanet.commands.evaluate", "COCO AP of a checkpoint, or of a results file"),
    "infer": ("retinanet.commands.infer", "detect objects in images; draw boxes and write JSON"),
    "export": ("retinanet.commands.export", "export to ONNX or TorchScript"),
    "analyze-loss": ("retinanet.commands.analyze_loss", "the paper's loss-distribution analysis"),
    "convert": ("retinanet.commands.convert", "Pascal VOC or YOLO labels -> COCO JSON"),
    "browse-data": ("retinanet.commands.browse_data", "draw a dataset's boxes (optionally augmented); count them"),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="retinanet", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment RETINANET_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    name = next((a for a in argv if not a.startswith("-")), None)
    for cmd, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(cmd, help=help_text, description=help_text)
        if cmd == name:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if args.version:
        from retinanet import __version__
        print(f"retinanet {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from retinanet.config import ConfigError
    from retinanet.checkpoint import CheckpointError
    debug = args.debug or os.environ.get("RETINANET_DEBUG", "") not in ("", "0")
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (ConfigError, CheckpointError, ValueError, OSError) as e:
        # Expected faults (bad input, a full disk, no permission) get one line naming the path and
        # the cause; the traceback only helps when debugging the code itself.
        if debug:
            raise
        print(f"retinanet {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retinanet {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    """The message of ``e``: an OSError as one line "PATH: cause" (its str() is "[Errno 28] ..."); others
    as written (a file's problems come as one line from ``data.labels.Problems``, a hint may follow)."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return str(e).strip() or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
