"""What every reader of the fuzz oracle shares: the modules under test, and running a reader on an input.

:func:`lib` imports the modules under test on first use, so that atheris can instrument them first.
:func:`call` runs one reader: only the exceptions in :data:`ALLOWED` and Pillow's decompression-bomb error
and warning (:func:`bomb_errors`) may escape it; :func:`label` names its outcome in a few words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from .limits import Finding, _Alarm

ALLOWED: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, MemoryError)

_LIB: SimpleNamespace | None = None


def lib() -> SimpleNamespace:
    """The modules under test, imported on first use (so ``atheris`` can instrument them first)."""
    global _LIB
    if _LIB is None:
        from PIL import Image, ImageFile

        import pillow_jac  # noqa: F401  (registers the Pillow plugin)
        from pillow_jac import cli, codec, container
        from pillow_jac import constants as C

        _LIB = SimpleNamespace(Image=Image, ImageFile=ImageFile, codec=codec, container=container, C=C, cli=cli)
    return _LIB


def bomb_errors() -> tuple[type[BaseException], ...]:
    """Pillow's decompression-bomb error and warning (the warning raised as an error by the readers)."""
    Image = lib().Image
    return Image.DecompressionBombError, Image.DecompressionBombWarning


def _allowed() -> tuple[type[BaseException], ...]:
    return (*ALLOWED, *bomb_errors())


def call(what: str, fn: Callable[[], Any], strict_memory: bool) -> tuple[str, Any]:
    """``("ok", value)`` or ``("error", exception)``; raises :class:`Finding` for a forbidden exception."""
    try:
        return "ok", fn()
    except MemoryError as exc:
        if strict_memory:
            raise Finding(f"{what}: MemoryError on a small input: {exc}") from exc
        return "error", exc
    except _allowed() as exc:
        return "error", exc
    except BaseException as exc:  # PanicException and friends derive from BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit, _Alarm)):
            raise
        raise Finding(f"{what}: forbidden exception {type(exc).__module__}.{type(exc).__name__}: {exc}") from exc


def label(outcome: tuple[str, Any]) -> str:
    """A short, size-independent label of an outcome, e.g. ``JacDataError:CRC mismatch in chunk``."""
    kind, value = outcome
    if kind == "ok":
        return "ok"
    words = re.sub(r"""b?'[^']*'|b?"[^"]*"|\([^)]*\)|0x[0-9a-f]+|\d+""", "#", str(value)).split()[:6]
    return f"{type(value).__name__}:{' '.join(words)}"
