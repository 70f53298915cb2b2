"""pillow_jac: the JAC learned image codec as a Pillow and imageio file format.

Importing the package registers the ``.jac`` format with Pillow, and with imageio when it is
installed (at imageio's own import, if that comes later). It imports neither torch nor imageio: torch
comes with the first encode or decode.

Example:
    >>> import pillow_jac
    >>> from PIL import Image
    >>> "JAC" in Image.OPEN
    True
    >>> pillow_jac.register()  # idempotent; only needed after Pillow's registry was reset
    >>> pillow_jac.__version__
    '0.1.0'

The array API, :func:`encode` and :func:`decode`, is :mod:`pillow_jac.codec`'s, re-exported lazily;
:func:`save` (:mod:`pillow_jac.image_saving`) replaces a file with a ``.jac`` only once the new one is complete.
:func:`models` lists the installed decoder generations (:mod:`pillow_jac.generations`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# the at-fork hooks, from the first import on (standard library only): a fork while another thread makes the
# codec's first imports waits for them, and the standard modules torch's import would bring in are there
# already when an exit handler decodes (pillow_jac/forksafe.py)
from . import forksafe

__version__ = "0.1.0"
__all__ = ["__version__", "register", "encode", "decode", "encode_batch", "decode_batch", "save", "models"]

if TYPE_CHECKING:
    from .codec import decode, encode
    from .codec_batch import decode_batch, encode_batch
    from .image_saving import save


def register() -> None:
    """Register JAC with Pillow, and with imageio if installed (now, or at its import). Safe to call repeatedly."""
    from . import JacImagePlugin, imageio_plugin

    JacImagePlugin.register()
    imageio_plugin.register()


def models() -> list:
    """The installed decoder generations (:class:`pillow_jac.generations.Generation`), without importing torch.

    Example:
        >>> import pillow_jac
        >>> [(g.model_id, g.can_encode) for g in pillow_jac.models()][:1]
        [('mbt-128-192-r006', True)]
    """
    from . import generations

    return generations.installed()


def __getattr__(name: str) -> Any:
    # imported under forksafe.setting_up(): numpy and the codec take 0.1-0.2 s to import, and a fork meanwhile
    # would copy a module's import lock held for ever in the child
    if name in ("encode", "decode"):
        with forksafe.setting_up():
            from . import codec

        return getattr(codec, name)
    if name in ("encode_batch", "decode_batch"):
        with forksafe.setting_up():
            from . import codec_batch

        return getattr(codec_batch, name)
    if name == "save":
        with forksafe.setting_up():
            from .image_saving import save

        return save
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "encode", "decode", "encode_batch", "decode_batch", "save"])


register()
