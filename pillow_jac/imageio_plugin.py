"""imageio support: tell imageio that ``.jac`` files are handled by its Pillow plugin.

imageio reads and writes through Pillow, so the Pillow registration does the real work. imageio
finds a Pillow format for file paths by itself, but it needs ``.jac`` in
``imageio.config.known_extensions`` for ``imwrite("<bytes>", ..., extension=".jac")`` and for the v2
``format=".jac"`` argument. :func:`register` adds that entry when imageio is installed (it is an
optional dependency) and does nothing otherwise.

Example:
    >>> import pillow_jac
    >>> from imageio.config import known_extensions
    >>> [ext.priority for ext in known_extensions[".jac"]]
    [['pillow']]
"""

from __future__ import annotations

import importlib.util

__all__ = ["register", "EXTENSION"]

EXTENSION = ".jac"


def register() -> bool:
    """Add ``.jac`` to imageio's known extensions if imageio is installed; idempotent.

    Returns:
        True when imageio is installed (and ``.jac`` is registered), False otherwise.
    """
    if importlib.util.find_spec("imageio") is None:
        return False
    from imageio.config import FileExtension, known_extensions

    entries = known_extensions.setdefault(EXTENSION, [])
    if not any("pillow" in entry.priority for entry in entries):
        entries.insert(
            0,
            FileExtension(
                name="JAC",
                extension=EXTENSION,
                priority=["pillow"],
                description="JAC learned image codec (read and written through Pillow by pillow_jac)",
            ),
        )
    return True
