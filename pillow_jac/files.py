"""Writing files so that a failure never destroys the target: a temporary file, then a rename.

:meth:`PIL.Image.Image.save` opens (and so truncates) an existing target before any plugin's
writer runs, so no Pillow plugin can keep an old file safe if encoding then fails. :func:`save`
is the safe way to replace a file with a ``.jac``; the CLI writes every output through
:func:`write_atomic`.

Example:
    >>> import os, tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "out.jac")
    >>> save(Image.new("RGB", (8, 8), "red"), path, quality=2)
    >>> Image.open(path).size
    (8, 8)
    >>> try:
    ...     save(Image.new("RGB", (8, 8)), path, quality=75)  # not a JAC quality
    ... except ValueError:
    ...     pass
    >>> Image.open(path).size  # the old file is intact
    (8, 8)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["save", "write_atomic"]


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic on POSIX and Windows (:func:`os.replace`): readers see the old file or the
    complete new one, never a partial one. On any error the temporary file is removed and ``path``
    is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save(image: Any, path: str | os.PathLike, **options: Any) -> None:
    """Save a PIL image as ``.jac`` at ``path``, replacing an existing file only once complete.

    Args:
        image: a :class:`PIL.Image.Image` (any mode the plugin accepts).
        path: the target file.
        **options: the plugin's save options (``quality``, ``icc_profile``, ``exif``, ``xmp``,
            ``device``).

    Raises:
        ValueError: bad options or an unsupported mode (the target is left as it was).
    """
    from . import JacImagePlugin

    write_atomic(path, lambda f: image.save(f, format=JacImagePlugin.JacImageFile.format, **options))
