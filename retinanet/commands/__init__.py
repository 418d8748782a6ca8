"""Subcommands of the ``retinanet`` CLI: each module has ``add_arguments(parser)`` and ``run(args)``."""
import argparse


def positive_int(text: str) -> int:
    """argparse type for counts such as --batch-size: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
