"""What decode, decode_symbols and decode_batch take as a file's bytes: any bytes-like object of single bytes."""

from __future__ import annotations

import array
import mmap

import numpy as np
import pytest

from pillow_jac import codec

from .helpers import natural_image


@pytest.fixture(scope="module")
def jac_file(tmp_path_factory):
    """A small .jac file's path and its bytes."""
    path = tmp_path_factory.mktemp("inputs") / "small.jac"
    path.write_bytes(codec.encode(natural_image(12, 20), 2))
    return path, path.read_bytes()


def test_any_bytes_like_object_of_the_file_decodes(jac_file):
    """An ``mmap.mmap`` of a .jac file and a 1-D uint8 array of its bytes were refused (a TypeError) while a
    memoryview of either decoded."""
    path, data = jac_file
    expected = codec.decode(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        forms = {
            "mmap": mapped,
            "numpy.fromfile": np.fromfile(path, np.uint8),
            "array": array.array("B", data),
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
        }
        for name, form in forms.items():
            np.testing.assert_array_equal(codec.decode(form), expected, err_msg=name)
        np.testing.assert_array_equal(codec.decode_symbols(mapped)[1], codec.decode_symbols(data)[1])
        batch = codec.decode_batch([mapped, np.fromfile(path, np.uint8), data])
        for decoded in batch:
            np.testing.assert_array_equal(decoded, expected)
    # leaving the with block closed the mmap: no view of it was left behind (BufferError otherwise)


def test_a_buffer_that_is_not_a_run_of_single_bytes_is_refused_saying_what_to_pass(jac_file):
    """A buffer of wider items was read as its raw bytes (a memoryview of int32) or refused as of another type (an
    array of them), and a strided one was refused as of another type; each is refused for what it is now."""
    path, data = jac_file
    words = np.frombuffer(data[: len(data) // 4 * 4], np.int32)
    for wide in (words, memoryview(words), np.fromfile(path), array.array("i", [1, 2])):  # fromfile: float64
        with pytest.raises(ValueError, match=r"-byte items .*numpy\.fromfile\(path, numpy\.uint8\)"):
            codec.decode(wide)
    strided = np.frombuffer(data + data, np.uint8)[::2]
    for view in (strided, memoryview(strided)):
        with pytest.raises(ValueError, match="one contiguous run.*ascontiguousarray"):
            codec.decode(view)


@pytest.mark.parametrize("shape", [(12, 20), (12, 20, 3), (12, 20, 4)])
def test_pixels_given_to_decode_are_a_type_error_that_says_so(shape):
    """An array of pixels is a TypeError, as it was, whose message says that decode takes a file's bytes."""
    pixels = np.zeros(shape, np.uint8)
    for form in (pixels, memoryview(pixels)):  # a memoryview of pixels was parsed: "not a JAC file"
        with pytest.raises(TypeError, match=r"expected \.jac bytes.*shape \(12, 20.*pixels\? decode takes"):
            codec.decode(form)


def test_other_shapes_and_objects_are_type_errors(jac_file):
    _, data = jac_file
    with pytest.raises(TypeError, match=r"shape \(1, 12, 20, 3\): a file's bytes are one dimension"):
        codec.decode(np.zeros((1, 12, 20, 3), np.uint8))
    with pytest.raises(TypeError, match=r"shape \(\): a file's bytes are one dimension"):
        codec.decode(np.uint8(7))
    with pytest.raises(TypeError, match=r"got int$"):
        codec.decode(12)


def test_one_files_bytes_given_to_decode_batch_is_refused_as_one_item(jac_file):
    """A 1-D uint8 array or an ``array.array`` of a file's bytes was iterated: each byte an "item" refused."""
    path, data = jac_file
    for single in (np.fromfile(path, np.uint8), array.array("B", data)):
        with pytest.raises(TypeError, match="files must be a list"):
            codec.decode_batch(single)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with pytest.raises(TypeError, match="files must be a list"):
            codec.decode_batch(mapped)
