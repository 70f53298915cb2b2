"""Where the container and the model meet: numpy images <-> ``.jac`` bytes.

API (stable; the Pillow/imageio plugins and the CLI call only these):

* :func:`encode` ``(image, quality=DEFAULT_QUALITY, *, icc_profile=None, exif=None, xmp=None,
  device=None) -> bytes``; ``image`` is a uint8 numpy array ``(H, W)`` (L), ``(H, W, 2)`` (LA),
  ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), or a PIL image in one of those modes.
* :func:`decode` ``(data, *, device=None) -> numpy.ndarray``; ``data`` is ``bytes`` or a parsed
  :class:`pillow_jac.container.JacFile`; the array has the layout of the encoded image.

Implementation in progress.
"""
