"""imageio support: ``.jac`` files are read and written by imageio's Pillow plugin.

imageio reads and writes through Pillow, so the Pillow registration does the real work. imageio
finds a Pillow format for file paths by itself, but it needs ``.jac`` in
``imageio.config.known_extensions`` for ``imwrite("<bytes>", ..., extension=".jac")`` and for the v2
``format=".jac"`` argument. :func:`register` adds that entry when imageio is installed (it is an
optional dependency) and does nothing otherwise. ``import pillow_jac`` does not import imageio (and
numpy with it, most of what importing imageio costs): if imageio is not imported yet, the entry is added
by a hook on ``sys.meta_path`` the moment imageio's own import has run, before anything can use it.

The entry names :class:`JacPlugin` first: imageio's Pillow plugin, except that when it writes JAC

* it refuses more than one frame (a ``.jac`` file holds one image, format_spec/SPEC.md section 1), with a
  ``ValueError`` before anything is queued or written, and the handle then writes nothing when it is
  closed, not even the frame before (a file that was there stays as it was). imageio's own plugin would pass
  the frames to Pillow's ``save_all`` when the file is closed, and try again when the plugin object is
  collected;
* with no format named and none known from the name it says how to name one (imageio's plugin raises
  ``KeyError: None``);
* it encodes in memory before it touches the output: imageio's own plugin opens (and so empties) the
  file first, so a failed encode (a bad option, a size target below the smallest file) destroys the
  file that was there. A path is then replaced only by the complete new file
  (:func:`pillow_jac.files.write_file`; written in place where replacing it would lose its other hard
  links, or cannot be done in a read-only folder), and a file object gets its bytes as the Pillow plugin
  writes them (:func:`pillow_jac.files.write_into`): a full disk leaves no partial ``.jac``.

:class:`JacPlugin` also comes just before ``pillow`` in ``known_plugins``, so that a write imageio
gives to the first plugin that takes it (a file object, bytes, or a name with no extension imageio knows,
with ``format="JAC"``) reaches it; for every other format it is imageio's Pillow plugin unchanged. A name
ending in another format's extension (``x.png`` with ``format="JAC"``) goes to that extension's plugins,
imageio's own ``pillow`` among them: name a ``.jac`` file ``.jac``.

Example:
    >>> import pillow_jac
    >>> from imageio.config import known_extensions
    >>> [ext.priority for ext in known_extensions[".jac"]]
    [['pillow_jac', 'pillow']]
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import io
import sys
import threading
import warnings
from typing import Any

from .constants import EXTENSION

__all__ = ["register", "EXTENSION", "PLUGIN_NAME"]

#: the name of :class:`JacPlugin` in ``imageio.config.known_plugins`` (``plugin="pillow_jac"``).
PLUGIN_NAME = "pillow_jac"
_HOOK_LOCK = threading.Lock()


def register() -> bool:
    """Add ``.jac`` to imageio's known extensions, now if imageio is imported, else when it is; idempotent.

    Returns:
        True when imageio is installed and ``.jac`` is registered (or will be, at imageio's import);
        False when imageio is not installed, or cannot be used (then with a warning).
    """
    if "imageio" in sys.modules:
        return sys.modules["imageio"] is not None and _register_now()  # None: its import is blocked
    if importlib.util.find_spec("imageio") is None:
        return False
    with _HOOK_LOCK:
        if not any(isinstance(finder, _RegisterAtImport) for finder in sys.meta_path):
            sys.meta_path.insert(0, _RegisterAtImport())
    if "imageio" in sys.modules:  # imported by another thread meanwhile, before the hook was in place
        return _register_now()
    return True


def _register_now() -> bool:
    """Add the entries to an imported imageio's configuration (see the module doc)."""
    try:
        from imageio.config import FileExtension, PluginConfig, known_extensions, known_plugins
    except Exception as exc:  # an imageio too old for imageio.config (< 2.16), or one that fails to import
        warnings.warn(f"pillow_jac: .jac is not registered with imageio, which cannot be used: {exc}", stacklevel=2)
        return False
    if PLUGIN_NAME not in known_plugins:
        config = PluginConfig(name=PLUGIN_NAME, class_name="JacPlugin", module_name=__name__)
        plugins = list(known_plugins.items())
        names = [name for name, _ in plugins]
        plugins.insert(names.index("pillow") if "pillow" in names else len(plugins), (PLUGIN_NAME, config))
        known_plugins.clear()  # the same dict, reordered: imageio tries its plugins in this order
        known_plugins.update(plugins)
    entries = known_extensions.setdefault(EXTENSION, [])
    if not any(PLUGIN_NAME in entry.priority for entry in entries):
        entries.insert(
            0,
            FileExtension(
                name="JAC",
                extension=EXTENSION,
                priority=[PLUGIN_NAME, "pillow"],
                description="JAC learned image codec (read and written through Pillow by pillow_jac)",
            ),
        )
    return True


class _RegisterAtImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it gives imageio's own spec a loader that registers ``.jac`` once imageio has run."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "imageio":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader, self)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    """imageio's loader, then :func:`_register_now`; imageio's module keeps its own loader."""

    def __init__(self, loader: Any, hook: _RegisterAtImport) -> None:
        self.loader, self.hook = loader, hook

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        with _HOOK_LOCK:
            if self.hook in sys.meta_path:
                sys.meta_path.remove(self.hook)
        _register_now()


def _frame_count(ndimage: Any, mode: str | None = None, is_batch: bool | None = None) -> int:
    """How many frames imageio's Pillow plugin makes of ``write(ndimage, mode=..., is_batch=...)``.

    Its rule: a list is one frame per item; otherwise ``is_batch`` if given, else a batch unless the
    array is ``(H, W)`` or ``(H, W, C)`` with C from 1 to 4 (with ``mode``: more than 3 dimensions
    for a mode of several bands, more than 2 for one band).

    Example:
        >>> import numpy as np
        >>> rgb = np.zeros((8, 8, 3))
        >>> _frame_count(rgb), _frame_count(np.stack([rgb, rgb])), _frame_count([rgb] * 3)
        (1, 2, 3)
    """
    if isinstance(ndimage, list):
        return len(ndimage)
    import numpy as np

    shape = np.shape(ndimage)
    if is_batch is None:
        if mode is not None:
            is_batch = len(shape) > _image_ndim(mode)
        else:
            is_batch = not (len(shape) == 2 or (len(shape) == 3 and 1 <= shape[2] <= 4))
    return shape[0] if is_batch and shape else 1


def _image_ndim(mode: str) -> int:
    """The dimensions of one image written with ``mode=`` (:func:`_frame_count`): 3 with several bands, else 2."""
    from PIL import Image

    return 3 if Image.getmodebands(mode) > 1 else 2


def _one_image(mode: str | None) -> str:
    """What :func:`_frame_count` takes for one image (no ``is_batch``), in words.

    Example:
        >>> _one_image("L")
        "with mode='L' one image is (height, width)"
    """
    if mode is None:
        return "one image is (height, width) or (height, width, 1 to 4 channels)"
    shape = "(height, width, channels)" if _image_ndim(mode) == 3 else "(height, width)"
    return f"with mode={mode!r} one image is {shape}"


def _plugin_class() -> type:
    from imageio.plugins.pillow import PillowPlugin
    from PIL import Image

    class JacPlugin(PillowPlugin):
        """imageio's Pillow plugin, refusing a second frame when it writes JAC (see the module doc)."""

        _jac_frames = 0
        _jac_refused = False

        def write(self, ndimage: Any, *, mode: str | None = None, format: str | None = None, **kwargs: Any) -> Any:
            request = self.request
            target = format or Image.registered_extensions().get(request.extension or request.format_hint or "")
            # imageio's own plugin fails with KeyError: None. Also where extension= was given in capitals: imageio
            # knows no plugin for '.PNG' and tries each with a request of no extension (imageio 2.38)
            if target is None:
                raise ValueError(
                    "no output format: name a file with its extension, or pass extension= (such as '.jac') or format="
                )
            frames = self._jac_frames
            if (target or "").upper() == "JAC":
                frames += _frame_count(ndimage, mode, kwargs.get("is_batch"))
                if frames > 1:
                    msg = (
                        f"a JAC file holds one image, but {frames} frames were written to it: "
                        "write each frame to its own .jac file"
                    )
                    shape = getattr(ndimage, "shape", None)
                    guessed = kwargs.get("is_batch") is None and shape is not None  # imageio's guess from the shape
                    if guessed and frames - self._jac_frames > 1:  # this array alone was taken for frames
                        msg += f" (an array of shape {tuple(shape)} is read as a batch of frames: {_one_image(mode)})"
                    if self._jac_frames:  # a frame was queued before: it is not written either, when closed
                        self._jac_refused = True
                        self.images_to_write.clear()
                    raise ValueError(msg)
            result = super().write(ndimage, mode=mode, format=format, **kwargs)
            self._jac_frames = frames  # a write that raised left no frame (nothing pending: _flush_writer)
            return result

        def _flush_writer(self) -> None:
            if self._jac_refused:  # a refused write leaves nothing: no file, and a file that was there as it was
                self.images_to_write.clear()
                return None
            if not self.images_to_write or str(self.save_args.get("format", "")).upper() != "JAC":
                return super()._flush_writer()
            (image,) = self.images_to_write  # one frame: write() refuses more
            self.images_to_write.clear()  # not tried again when the plugin is closed or collected
            encoded = io.BytesIO()
            image.save(encoded, **self.save_args)  # before the file is opened, which empties it
            _write(self._request, encoded.getvalue())
            return None

    JacPlugin.__module__ = __name__
    return JacPlugin


def _write(request: Any, data: bytes) -> None:
    """Give an encoded file to imageio's output: a path to :func:`pillow_jac.files.write_file`, else its file object."""
    from imageio.core.request import URI_FILENAME

    from . import files

    if getattr(request, "_uri_type", None) == URI_FILENAME and getattr(request, "_file", None) is None:
        files.write_file(request.filename, data)
        return
    files.write_into(request.get_file(), data, request.filename)


def __getattr__(name: str) -> Any:
    if name == "JacPlugin":  # defined on first use: it imports imageio, an optional dependency
        cls = _plugin_class()
        globals()["JacPlugin"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
