"""The ``--min-pixels``, ``--max-pixels`` and ``--factor`` options of export and eval."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from medground import boxes as box_ops
from medground.export.common import ResizeSettings

T = TypeVar("T")


def resize_options(command: Callable[..., T]) -> Callable[..., T]:
    """Add the Qwen2.5-VL resize options to a click command as one ``resize`` argument.

    The command receives ``resize: ResizeSettings`` in place of the three option values.
    Put this decorator below ``@click.command`` and among the command's options.
    """

    @functools.wraps(command)
    def with_resize(*args: Any, min_pixels: int, max_pixels: int, factor: int, **kwargs: Any) -> T:
        resize = ResizeSettings(factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return command(*args, resize=resize, **kwargs)

    options = [
        click.option(
            "--min-pixels",
            type=int,
            default=box_ops.QWEN25VL_MIN_PIXELS,
            show_default=True,
            help="Qwen2.5-VL processor min_pixels, which decides boxes in the resized space.",
        ),
        click.option(
            "--max-pixels",
            type=int,
            default=box_ops.QWEN25VL_MAX_PIXELS,
            show_default=True,
            help="Qwen2.5-VL processor max_pixels, which decides boxes in the resized space.",
        ),
        click.option(
            "--factor",
            type=int,
            default=box_ops.QWEN25VL_FACTOR,
            show_default=True,
            help="Qwen2.5-VL patch factor (patch_size x merge_size), which decides boxes in "
            "the resized space.",
        ),
    ]
    for option in reversed(options):
        with_resize = option(with_resize)
    return with_resize
