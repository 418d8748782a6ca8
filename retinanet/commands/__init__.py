"""Subcommands of the ``retinanet`` CLI: each module has ``add_arguments(parser)`` and ``run(args)``."""
import argparse
import logging


def positive_int(text: str) -> int:
    """argparse type for counts such as --batch-size: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_tile_arguments(p: argparse.ArgumentParser) -> None:
    """--tile / --tile-overlap: shorthands for the evaluation.tile* config keys (which configs can set)."""
    p.add_argument("--tile", type=int, metavar="PX",
                   help="run large images as overlapping tiles of PX pixels at native resolution (0: off; "
                        "default: evaluation.tile)")
    p.add_argument("--tile-overlap", type=float, metavar="F", help="tile overlap fraction (default: evaluation.tile_overlap)")


def with_tile_overrides(args: argparse.Namespace) -> list[str]:
    """args.overrides plus the config keys that --tile / --tile-overlap stand for."""
    extra = [f"evaluation.tile={args.tile}"] if args.tile is not None else []
    extra += [f"evaluation.tile_overlap={args.tile_overlap}"] if args.tile_overlap is not None else []
    return list(args.overrides) + extra


def setup_logging() -> None:
    """INFO logs to stderr, unless the caller (a test, an embedding program) configured logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
