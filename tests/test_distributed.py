"""Tests of ``pillow_jac.distributed``: ``jac batch`` on Ray workers (a local instance the tests start).

The tests marked ``ray`` skip when Ray is not installed (``pip install -e ".[test,ray]"`` installs it; CI does).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from pillow_jac import batch_plan, distributed, ray_cluster, ray_driver, save
from pillow_jac.cli import build_parser, main
from pillow_jac.constants import DEFAULT_QUALITY
from pillow_jac.conversion import convert_file
from pillow_jac.source_record import RECORD_NAME

from .helpers import listing, natural_image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.png"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four small images (with an ICC profile, EXIF, alpha, gray, in a subfolder) and a corrupt one."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    with Image.open(SAMPLE) as im:
        rgb = im.convert("RGB").crop((150, 90, 198, 130))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "pillow_jac tests"  # Make
    rgb.save(folder / "a.png", icc_profile=icc, exif=exif.tobytes())
    rgb.rotate(90, expand=True).save(folder / "b.jpg", quality=90)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(folder / "sub" / "c.png")
    rgb.convert("L").save(folder / "sub" / "d.bmp")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return folder


def outputs(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RECORD_NAME  # a batch's record of sources
    }


# --------------------------------------------------------------------------- without Ray


def test_plan_names_as_jac_batch(photos: Path, tmp_path: Path) -> None:
    jobs = distributed.plan(photos, tmp_path, "jac", recursive=True)
    names = {str(s.relative_to(photos)): str(d.relative_to(tmp_path)) for s, d in jobs.items()}
    assert names == {
        "a.png": "a.jac",
        "b.jpg": "b.jac",
        "broken.png": "broken.jac",
        "sub/c.png": "sub/c.jac",
        "sub/d.bmp": "sub/d.jac",
    }
    assert len(distributed.plan(photos, tmp_path, "jac")) == 3  # not recursive: the top folder only


def test_plan_list_of_paths(photos: Path, tmp_path: Path) -> None:
    paths = [photos / "a.png", photos / "sub" / "c.png"]
    assert [d.name for d in distributed.plan(paths, tmp_path).values()] == ["a.jac", "c.jac"]
    mirrored = distributed.plan(paths, tmp_path, base_dir=photos).values()
    assert [str(d.relative_to(tmp_path)) for d in mirrored] == ["a.jac", "sub/c.jac"]
    with pytest.raises(ValueError, match="a.png: a.bmp would also be written to a.jac; neither is converted"):
        distributed.plan([photos / "a.png", photos / "a.bmp"], tmp_path)
    # a file listed twice (a manifest, a dataset's path column), by one path or two: converted once, not failed
    relative = os.path.relpath(photos / "a.png")
    twice = [photos / "a.png", relative, f".{os.sep}{relative}", photos / "sub" / "c.png"]
    assert [d.name for d in distributed.plan(twice, tmp_path).values()] == ["a.jac", "c.jac"]
    with pytest.raises(ValueError, match="is not inside"):
        distributed.plan(paths, tmp_path, base_dir=photos / "sub")
    with pytest.raises(ValueError, match="no such directory"):
        distributed.plan(photos / "missing", tmp_path)


def test_plan_names_differing_in_case(photos: Path, tmp_path: Path, monkeypatch) -> None:
    """Two inputs whose outputs differ only in case: kept apart where the output folder tells such names apart,
    refused where it does not (macOS, Windows), where one output would replace the other."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    paths = [tmp_path / "x" / "Photo.png", tmp_path / "y" / "photo.png", tmp_path / "y" / "other.png"]
    out = tmp_path / "out" / "new"
    assert batch_plan._case_sensitive(out)  # the tests' temporary folder is on a case-sensitive file system
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "y"]  # the probe left nothing behind
    names = [d.name for d in distributed.plan(paths, out).values()]
    assert names == ["Photo.jac", "photo.jac", "other.jac"]
    probed = []
    monkeypatch.setattr(batch_plan, "_case_sensitive", lambda folder: probed.append(folder) or False)
    with pytest.raises(ValueError, match=r"x/Photo.png: .*y/photo.png would also be written to Photo.jac \(names"):
        distributed.plan(paths, out)
    assert probed == [out]
    monkeypatch.setattr(batch_plan, "_case_sensitive", lambda folder: None)  # the folder cannot be written
    with pytest.raises(ValueError, match="whether the output folder tells them apart is unknown"):
        distributed.plan(paths, out)
    probed.clear()
    monkeypatch.setattr(batch_plan, "_case_sensitive", lambda folder: probed.append(folder) or False)
    probed.clear()
    assert len(distributed.plan(paths[1:], out)) == 2  # names that differ more than in case: no probe
    assert probed == []
    nested = [photos / "a.png", photos / "sub" / "c.png"]
    monkeypatch.setattr(batch_plan, "_case_sensitive", lambda folder: True)
    exact = [tmp_path / "x" / "Photo.png", tmp_path / "y" / "photo.png", tmp_path / "y" / "Photo.bmp"]
    with pytest.raises(ValueError, match="x/Photo.png: .*y/Photo.bmp would also be written to Photo.jac"):
        distributed.plan(exact, out)  # the same name exactly is refused wherever
    assert len(distributed.plan(nested, out, base_dir=photos)) == 2


def test_is_done(photos: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "a.png", tmp_path / "a.jac"
    src.write_bytes((photos / "a.png").read_bytes())
    assert not distributed.is_done(src, dst, "jac", 3)  # no output
    dst.write_bytes(b"partial")
    assert not distributed.is_done(src, dst, "jac", 3)  # not a JAC file
    with Image.open(src) as im:
        save(im, dst, quality=3)
    assert distributed.is_done(src, dst, "jac", 3)
    assert distributed.is_done(src, dst, "jac", 3.001)  # the same stored quality (to 1/256)
    assert not distributed.is_done(src, dst, "jac", 4)
    newer = dst.stat().st_mtime_ns + 10**9
    os.utime(src, ns=(newer, newer))  # the input changed after the output was written
    assert not distributed.is_done(src, dst, "jac", 3)


def test_is_done_reads_no_pixels_of_the_source(tmp_path: Path, monkeypatch) -> None:
    """A resumed batch checked each PNG's EXIF orientation, and Pillow decodes a whole PNG to look for an eXIf
    chunk after its pixels (about 0.3 s for 12 megapixels): only a size that fits a turn needs it."""
    from PIL import ImageFile

    src, dst = tmp_path / "a.png", tmp_path / "a.jac"
    Image.fromarray(natural_image(40, 48, 3)).save(src)
    with Image.open(src) as im:
        save(im, dst, quality=3)
    loads = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im.format) or real(im))
    assert distributed.is_done(src, dst, "jac", 3)
    assert loads == []
    with Image.open(src) as im:
        save(im.transpose(Image.Transpose.TRANSPOSE), dst, quality=3)  # the size of a turn: the orientation is read
    assert not distributed.is_done(src, dst, "jac", 3)  # (none: not turned, so not this output)
    assert loads and set(loads) == {"PNG"}


def test_is_done_checks_preview_size_and_png(tmp_path: Path) -> None:
    """What ``--ray`` resume checks beyond the quality: the preview, a size target, a whole PNG."""
    src = tmp_path / "a.png"
    Image.fromarray(natural_image(96, 128, 3)).save(src)
    plain, with_preview = tmp_path / "plain.jac", tmp_path / "preview.jac"
    with Image.open(src) as im:
        save(im, plain, quality=3)
        save(im, with_preview, quality=3, preview=64)
    assert distributed.is_done(src, plain, "jac", 3)
    assert not distributed.is_done(src, plain, "jac", 3, preview=64)  # a preview was asked for
    assert distributed.is_done(src, with_preview, "jac", 3, preview=64)
    assert not distributed.is_done(src, with_preview, "jac", 3)  # a preview that was not asked for
    assert distributed.is_done(src, plain, "jac", 3, preview=True)  # 512 px: larger than the image, none is made
    assert not distributed.is_done(src, with_preview, "jac", 3, preview=48)  # a preview of another size
    tagged = tmp_path / "tagged.png"
    Image.fromarray(natural_image(96, 128, 3)).save(tagged, icc_profile=b"profile", exif=b"Exif\x00\x00MM\x00*")
    stripped, kept = tmp_path / "stripped.jac", tmp_path / "kept.jac"
    with Image.open(tagged) as im:
        save(im, stripped, quality=3, icc_profile=None, exif=None, xmp=None)
        save(im, kept, quality=3)
    assert distributed.is_done(tagged, stripped, "jac", 3, strip=True)
    assert not distributed.is_done(tagged, stripped, "jac", 3)  # made with --strip, asked for without it
    assert distributed.is_done(tagged, kept, "jac", 3) and not distributed.is_done(tagged, kept, "jac", 3, strip=True)
    assert distributed.is_done(src, plain, "jac", 3)  # a source with no metadata: nothing to keep
    size = plain.stat().st_size
    assert distributed.is_done(src, plain, "jac", None, target_size=size)
    assert not distributed.is_done(src, plain, "jac", None, target_size=size - 1)  # does not fit a smaller target

    jac, png = tmp_path / "b.jac", tmp_path / "b.png"
    jac.write_bytes(plain.read_bytes())
    with Image.open(src) as im:
        im.save(png)
    assert not distributed.is_done(jac, png, "png")  # an image no decode wrote: maybe the original
    convert_file(str(jac), str(png), "png", 3, 0, None, force=True)
    assert distributed.is_done(jac, png, "png")
    for broken in (b"", png.read_bytes()[:-20], b"not a png"):  # a crash's empty or cut file is not done
        png.write_bytes(broken)
        assert not distributed.is_done(jac, png, "png")


def test_is_done_is_not_another_picture_of_the_same_name(tmp_path: Path) -> None:
    """Two folders written into one ``out_dir`` (shards without ``base_dir``) both hold ``IMG_0001``: the first
    one's output was taken as the second's and kept."""
    first, second = tmp_path / "cam1" / "IMG_0001.png", tmp_path / "cam2" / "IMG_0001.png"
    for path, shape in ((first, (32, 32)), (second, (40, 64))):
        path.parent.mkdir()
        Image.fromarray(natural_image(*shape, 3)).save(path)
    out = tmp_path / "out" / "IMG_0001.jac"
    out.parent.mkdir()
    with Image.open(first) as im:
        save(im, out, quality=3)
    os.utime(second, ns=(1, 1))  # older than the output: only its size tells it apart
    assert distributed.is_done(first, out, "jac", 3)
    assert not distributed.is_done(second, out, "jac", 3)
    png = tmp_path / "out" / "IMG_0001.png"
    with Image.open(second) as im:
        im.save(png)
    os.utime(out, ns=(1, 1))
    assert not distributed.is_done(out, png, "png")  # a PNG of another size than the .jac file


def test_placement_of_the_workers() -> None:
    """A CPU device asked for on a cluster with GPUs ran one worker per GPU; more workers than fit waited
    forever for the ones the cluster could not place, before any file was converted."""
    place = ray_cluster.placement
    gpus = {"CPU": 16.0, "GPU": 2.0}
    assert place(gpus, 100, None, 1, None, None) == (2, 1.0, "cuda")
    assert place(gpus, 100, None, 1, None, "cpu") == (16, 0.0, "cpu")
    assert place(gpus, 100, None, 1, 0.25, None) == (8, 0.25, "cuda")
    assert place({"CPU": 2.0}, 100, None, 1, None, None) == (2, 0.0, None)
    assert place({"CPU": 2.0}, 1, None, 1, None, None) == (1, 0.0, None)
    with pytest.warns(UserWarning, match="4 workers of 1 CPU and 0 GPU each asked for, but the cluster holds 2 now"):
        assert place({"CPU": 2.0}, 100, 4, 1, None, None) == (4, 0.0, None)
    with pytest.raises(ValueError, match="the cluster holds no worker of 1 CPU and 1 GPU now"):
        place({"CPU": 2.0}, 100, None, 1, 1.0, None)  # a GPU asked for where there is none: it would wait forever
    with pytest.warns(UserWarning, match="holds 0 now: nothing converts until it has room"):
        assert place({"CPU": 2.0}, 100, 2, 1, 1.0, None) == (2, 1.0, "cuda")
    # a local instance started for the call never grows: a worker that does not fit would wait for ever
    with pytest.raises(ValueError, match="holds no worker of 64 CPU and 0 GPU now .*does not grow"):
        place({"CPU": 2.0}, 100, 1, 64, None, None, grows=False)
    # some fit: on a cluster that grows the rest start when it has room; a local instance never has it
    with pytest.warns(UserWarning, match="the others start when it has room"):
        assert place({"CPU": 2.0}, 100, 4, 1, None, None)[0] == 4
    with pytest.warns(UserWarning, match="this local instance holds 2 and does not grow: 2 convert"):
        assert place({"CPU": 2.0}, 100, 4, 1, None, None, grows=False)[0] == 2


class _ProcessChangingRay:
    """``ray.init`` as it changes the calling process (a SIGTERM handler, variables, faulthandler, ``random``)."""

    def __init__(self, fails: bool = False) -> None:
        self.fails, self.stopped = fails, False

    def init(self, **options) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        os.environ["PYTHONBREAKPOINT"] = "ray.util.rpdb._driver_set_trace"
        os.environ["JAC_TEST_CHANGED"] = "by ray"
        os.environ["JAC_TEST_TOUCHED_SINCE"] = "by ray"
        del os.environ["JAC_TEST_REMOVED"]
        faulthandler.enable()
        random.random()
        if self.fails:
            raise ConnectionError("no cluster at that address")

    def shutdown(self) -> None:
        self.stopped = True


@pytest.fixture
def process_state(monkeypatch):
    """The variables _ProcessChangingRay changes, the program's SIGTERM handler, and faulthandler and
    ``random`` standing in for the real ones (so that the test leaves pytest's faulthandler alone)."""

    def ours(signum, frame):  # pragma: no cover - never called
        pass

    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)
    monkeypatch.setenv("JAC_TEST_CHANGED", "the program's")
    monkeypatch.setenv("JAC_TEST_TOUCHED_SINCE", "the program's")
    monkeypatch.setenv("JAC_TEST_REMOVED", "the program's")
    enabled = [False]
    monkeypatch.setattr(faulthandler, "enable", lambda *a, **k: enabled.__setitem__(0, True))
    monkeypatch.setattr(faulthandler, "disable", lambda: enabled.__setitem__(0, False))
    monkeypatch.setattr(faulthandler, "is_enabled", lambda: enabled[0])
    monkeypatch.setattr(random, "_inst", random.Random(7))
    for name in ("random", "getstate", "setstate"):
        monkeypatch.setattr(random, name, getattr(random._inst, name))
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        yield ours
    finally:
        signal.signal(signal.SIGTERM, previous)


def _as_the_program_left_it(ours, want: float) -> bool:
    assert signal.getsignal(signal.SIGTERM) is ours and "PYTHONBREAKPOINT" not in os.environ
    assert os.environ["JAC_TEST_CHANGED"] == os.environ["JAC_TEST_REMOVED"] == "the program's"
    return not faulthandler.is_enabled() and random.random() == want


def test_a_ray_started_here_leaves_the_process_as_it_found_it(process_state) -> None:
    """``ray.init`` installs its own SIGTERM handler (exit 15, a stack dump): the caller's is put back at once.
    It also sets variables (``PYTHONBREAKPOINT`` turned ``breakpoint()`` off), enables faulthandler and
    draws from ``random``: each is put back once the instance is stopped, except a variable changed since."""
    want = random.Random(7).random()
    ray = _ProcessChangingRay()
    stop = ray_cluster.start_ray(ray, {})
    assert signal.getsignal(signal.SIGTERM) is process_state
    assert os.environ["PYTHONBREAKPOINT"].startswith("ray.")  # the driver keeps Ray's while it runs
    os.environ["JAC_TEST_TOUCHED_SINCE"] = "by the program"
    stop()
    assert ray.stopped and _as_the_program_left_it(process_state, want)
    assert os.environ["JAC_TEST_TOUCHED_SINCE"] == "by the program"


def test_a_ray_that_fails_to_start_leaves_the_process_as_it_found_it(process_state) -> None:
    want = random.Random(7).random()
    with pytest.raises(ConnectionError):
        ray_cluster.start_ray(_ProcessChangingRay(fails=True), {})
    assert _as_the_program_left_it(process_state, want)
    assert os.environ["JAC_TEST_TOUCHED_SINCE"] == "the program's"


@pytest.mark.parametrize(("address", "asked"), [(None, "local"), ("auto", "auto")])
def test_without_an_address_a_new_local_instance_is_started(tmp_path, monkeypatch, process_state, address, asked):
    """``address=None`` is a new local instance, not the cluster that RAY_ADDRESS or an earlier ``ray start`` names."""
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    ray = _ProcessChangingRay(fails=True)
    seen = {}
    ray.is_initialized = lambda: False
    ray.init = lambda **options: (seen.update(options), _ProcessChangingRay.init(ray, **options))
    monkeypatch.setitem(sys.modules, "ray", ray)
    with pytest.raises(ConnectionError) as failed:
        distributed.convert(tmp_path / "in", tmp_path / "out", address=address)
    assert seen["address"] == asked and seen["logging_level"] == logging.ERROR  # Ray's notices are not the batch's
    if address == "auto":  # Ray's own message names a --address flag that jac does not have
        assert "no Ray cluster runs on this machine" in str(failed.value) and "--ray HOST:PORT" in str(failed.value)


def test_a_ray_batch_that_cannot_start_leaves_the_record_of_a_finished_batch_as_it_was(
    tmp_path, monkeypatch, capsys, process_state
):
    """A Ray batch marked every file as started before Ray was reached: one that could not start (or a Ctrl-C before
    it reached a file) had the next batch convert every finished output again. Files are noted as they are sent."""
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        Image.fromarray(natural_image(16, 24, seed=len(name))).save(tmp_path / "in" / f"{name}.png")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "in"), str(out), "--to", "jac", "-j", "1"]) == 0
    record = (out / RECORD_NAME).read_bytes()
    ray = _ProcessChangingRay(fails=True)
    ray.is_initialized = lambda: False
    monkeypatch.setitem(sys.modules, "ray", ray)
    with pytest.raises(ConnectionError):
        distributed.convert(tmp_path / "in", out, address="auto")
    assert (out / RECORD_NAME).read_bytes() == record
    capsys.readouterr()
    assert main(["batch", str(tmp_path / "in"), str(out), "--to", "jac", "-j", "1"]) == 0
    assert "jac: 2 files already done, skipped" in capsys.readouterr().err


def test_an_address_that_takes_no_connection_fails_at_once(tmp_path, monkeypatch) -> None:
    """ray.init retries such an address for many minutes; it is refused before Ray is asked."""
    import socket

    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    ray = _ProcessChangingRay(fails=True)
    ray.is_initialized = lambda: False
    ray.init = lambda **options: pytest.fail("Ray was asked")
    monkeypatch.setitem(sys.modules, "ray", ray)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):  # bound, not listening: refused
        with pytest.raises(ConnectionError, match=f"cannot reach Ray at {address}"):
            distributed.convert(tmp_path / "in", tmp_path / "out", address=address)
    listening.listen()
    ray_cluster.check_reachable(f"127.0.0.1:{port}")  # one that answers passes
    ray_cluster.check_reachable("auto")  # and forms other than HOST:PORT are left to Ray
    listening.close()


def test_draws_the_program_made_while_ray_ran_are_not_drawn_again(process_state) -> None:
    stop = ray_cluster.start_ray(_ProcessChangingRay(), {})
    random.random()  # the program's own, from another thread while the batch runs
    stop()
    numbers = random.Random(7)
    assert random.random() == [numbers.random() for _ in range(3)][-1]  # Ray's, the program's, then this


@pytest.mark.parametrize(
    "bad",
    [
        {"workers": 0},
        {"in_flight": 0},
        {"num_cpus": 0},
        {"num_gpus": -1},
        {"quality": 9},
        {"target_psnr": -3},
        {"target_size": "lots"},
        {"target_size": 1000, "target_psnr": 30},
        {"quality": 2, "target_size": 1500},  # as pillow_jac.encode and Image.save refuse it
        {"preview": 4},
    ],
)
def test_convert_refuses_bad_options(photos: Path, tmp_path: Path, bad: dict, monkeypatch) -> None:
    """Each is refused by the package's own check, before Ray is imported (let alone started)."""
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of Ray would fail with ImportError
    with pytest.raises(ValueError):
        distributed.convert(photos, tmp_path, **bad)


def test_cli_ray_option() -> None:
    parse = build_parser().parse_args
    assert parse(["batch", "in", "out", "--to", "jac"]).ray is None
    assert parse(["batch", "in", "out", "--to", "jac", "--ray"]).ray == "local"
    assert parse(["batch", "in", "out", "--to", "jac", "--ray", "-j", "4"]).ray == "local"
    assert parse(["batch", "in", "out", "--to", "jac", "--ray", "ray://head:10001"]).ray == "ray://head:10001"


# --------------------------------------------------------------------------- on a local Ray instance


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a test run

    def environ() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's, test by test

    before, fault_handler, generator = environ(), faulthandler.is_enabled(), random.getstate()
    # Ray's session folder (logs, sockets) in a short folder of its own, removed after: not one more in Ray's
    # default temporary folder for every run of the suite (a socket's path has at most 107 characters, too
    # few under tmp_path)
    session = tempfile.mkdtemp(prefix="jac-ray-")
    options = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False, "_temp_dir": session}
    stop = ray_cluster.start_ray(ray, options)
    yield ray
    stop()
    shutil.rmtree(session, ignore_errors=True)
    # convert's own start and stop of a local instance: the process is as it was before
    assert (environ(), faulthandler.is_enabled(), random.getstate()) == (before, fault_handler, generator)


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory) -> Path:
    """``jac batch -j 1`` of the photos (the broken one fails)."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["batch", str(photos), str(out), "--to", "jac", "-r", "-j", "1", "--quiet"]) == 1
    return out


@pytest.mark.ray
def test_ray_matches_jac_batch_and_resumes(ray_local, photos: Path, reference: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    out = tmp_path / "ray"
    seen: list[distributed.FileResult] = []
    report = distributed.convert(photos, out, quality=DEFAULT_QUALITY, recursive=True, progress=seen.append)
    assert (report.done, report.skipped) == (4, 0)
    assert [(Path(r.src).name, r.status) for r in report.failed] == [("broken.png", "failed")]
    assert report.failed[0].error  # one line saying why
    assert len(seen) == 5 and report.seconds > 0 and report.images_per_second > 0
    assert 1 <= len(report.workers) <= 2  # one per CPU; one still starting when the files ran out is not listed
    assert all(0 < w["rss_loaded_bytes"] <= w["rss_peak_bytes"] and w["load_seconds"] > 0 for w in report.workers)
    assert report.out_bytes == sum(len(b) for b in outputs(out).values())
    assert outputs(out) == outputs(reference)  # byte-identical, with the same names; no temporary files left
    assert len(outputs(out)) == 4

    # jac batch --ray resumes: the done files are skipped, a changed input is converted again, the broken one
    # fails again.
    os.utime(photos / "b.jpg")
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.jac")}
    assert main(["batch", str(photos), str(out), "--to", "jac", "-r", "--ray", "-j", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "jac: 3 files already done, skipped" in err
    assert sum(line.endswith(" (already done)") for line in err) == 3
    assert any("broken.png" in line for line in err)
    assert err[-1] == "jac: error: 1 of 5 files failed"
    after = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.jac")}
    assert [name for name in sorted(after) if after[name] != before[name]] == ["b.jac"]
    assert outputs(out) == outputs(reference)


@pytest.mark.ray
def test_ray_converts_nothing_it_cannot_record_and_skips_what_is_done(ray_local, tmp_path: Path, monkeypatch) -> None:
    """An output missing from the folder's record would be refused by every later batch: a file the driver cannot
    note as sent is taken by its worker only if it is done already (a batch run again in a folder it may no longer
    write), else it fails, unconverted."""
    import errno

    from pillow_jac import source_record

    (tmp_path / "in").mkdir()
    Image.fromarray(natural_image(16, 16)).save(tmp_path / "in" / "a.png")
    assert distributed.convert(tmp_path / "in", tmp_path / "out", workers=1).done == 1

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(source_record, "_locked", read_only)  # the driver's: the workers do not write the record
    Image.fromarray(natural_image(16, 16, seed=1)).save(tmp_path / "in" / "b.png")
    report = distributed.convert(tmp_path / "in", tmp_path / "out", workers=1)
    assert (report.done, report.skipped) == (0, 1)
    assert [(Path(r.src).name, r.error.split(":")[0]) for r in report.failed] == [("b.png", "not converted")]
    assert "cannot add to the batch's record" in report.failed[0].error
    assert listing(tmp_path / "out") == ["a.jac"]


@pytest.mark.skipif(os.name != "posix", reason="the record is locked with flock")
def test_a_line_another_batch_appends_while_the_record_is_compacted_is_kept(tmp_path: Path, monkeypatch) -> None:
    """A compaction read the record, then renamed a rewritten copy over it: a line another batch into the folder
    appended in between was lost, and that output refused by every later batch as made by none."""
    import threading

    from pillow_jac import source_record
    from pillow_jac.source_record import SourceRecord, note_made

    out = tmp_path / "out"
    out.mkdir()
    src, other = tmp_path / "a.png", tmp_path / "b.png"
    src.write_bytes(b"one")
    other.write_bytes(b"other")
    for _ in range(1200):  # one output converted again and again: compacted when read
        note_made(out, src, out / "a.jac")
    real, appending = source_record.write_atomic, []

    def write_atomic(path, write):  # the other batch appends while the compaction is under way
        appending.append(threading.Thread(target=note_made, args=(out, other, out / "b.jac")))
        appending[0].start()
        appending[0].join(0.3)
        real(path, write)

    monkeypatch.setattr(source_record, "write_atomic", write_atomic)
    SourceRecord(out)
    appending[0].join(10)
    assert not appending[0].is_alive()
    lines = (out / source_record.RECORD_NAME).read_text().splitlines()
    assert sorted(json.loads(line)["output"] for line in lines) == ["a.jac", "b.jac"]


@pytest.mark.skipif(os.name != "posix", reason="the record is locked with flock")
def test_a_record_on_a_file_system_without_locks_is_written_unlocked(tmp_path: Path, monkeypatch) -> None:
    """flock fails with ENOLCK on an NFS mount without its lock service: the record is written as before there was a
    lock, not refused (which would stop every batch into such a folder)."""
    import errno
    import fcntl

    from pillow_jac.source_record import SourceRecord, note_made

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "out").mkdir()
    for _ in range(1200):  # compacted when read, unlocked too
        note_made(tmp_path / "out", tmp_path / "a.png", tmp_path / "out" / "a.jac")
    assert list(SourceRecord(tmp_path / "out").made) == ["a.jac"]
    assert len((tmp_path / "out" / RECORD_NAME).read_text().splitlines()) == 1


def test_a_record_of_sources_that_is_cut_or_unreadable_is_no_error(tmp_path: Path) -> None:
    from pillow_jac.source_record import RECORD_NAME, SourceRecord, note_made

    src, other = tmp_path / "a.png", tmp_path / "b.png"
    src.write_bytes(b"one")
    other.write_bytes(b"other")
    (tmp_path / "out").mkdir()
    dst = tmp_path / "out" / "a.jac"
    dst.write_bytes(b"made")
    note_made(tmp_path / "out", src, dst)
    with open(tmp_path / "out" / RECORD_NAME, "a") as f:
        f.write('{"output": "a.jac", "sour')  # a line cut by a crash
    record = SourceRecord(tmp_path / "out")
    assert record.conflict(src, dst) is None and "made from another file" in record.conflict(other, dst)
    (tmp_path / "out" / RECORD_NAME).write_bytes(b"\xff\xfe not utf-8")
    unknown = SourceRecord(tmp_path / "out")  # nothing known: the .jac there may be the only copy of a picture
    assert "no batch into this folder made it" in unknown.conflict(src, dst)


def test_a_record_that_grew_with_each_conversion_again_is_compacted_when_read(tmp_path: Path) -> None:
    """Each conversion adds a line and nothing removed them: a folder converted again and again read its whole
    history at every start. Read with more than two lines per output, it is rewritten with the last of each."""
    from pillow_jac.source_record import RECORD_NAME, SourceRecord, note_made

    out = tmp_path / "out"
    out.mkdir()
    sources = [tmp_path / f"{i}.png" for i in range(3)]
    for src in sources:
        src.write_bytes(b"x")
    for run in range(400):  # 1,200 lines for 3 outputs
        for src in sources:
            note_made(out, src, out / f"{src.stem}.jac", {"quality": run})
    assert len((out / RECORD_NAME).read_text().splitlines()) == 1200
    record = SourceRecord(out)
    lines = (out / RECORD_NAME).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["settings"] == {"quality": 399} for line in lines)
    assert SourceRecord(out).made == record.made
    assert not record.changed(sources[0], out / "0.jac", {"quality": 399})


@pytest.mark.ray
def test_ray_passes_targets_on_like_jac_batch(ray_local, photos: Path, tmp_path: Path) -> None:
    """``--psnr`` (and ``--preview``) reach the Ray workers: the files equal ``jac batch -j 1``'s."""
    ref, out = tmp_path / "ref", tmp_path / "ray"
    options = ["--psnr", "30", "--preview", "--quiet"]
    code = main(["batch", str(photos), str(ref), "--to", "jac", "-r", "-j", "1", *options])
    assert main(["batch", str(photos), str(out), "--to", "jac", "-r", *options, "--ray", "-j", "1"]) == code
    assert outputs(out) == outputs(ref) and len(outputs(ref)) == 4


@pytest.mark.ray
def test_ray_fails_inputs_that_would_share_an_output_and_converts_the_others(ray_local, tmp_path: Path) -> None:
    """As ``jac batch`` without Ray: a.png and a.jpg fail, c.png converts; all of them clashing starts no worker."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "a.jpg", "c.png"):
        Image.new("RGB", (16, 16), (20, 90, 160)).save(photos / name)
    report = distributed.convert(photos, tmp_path / "out", quality=1, workers=1)
    assert report.done == 1 and sorted(Path(r.src).name for r in report.failed) == ["a.jpg", "a.png"]
    assert all("would also be written to a.jac" in r.error for r in report.failed)
    assert listing(tmp_path / "out") == ["c.jac"]
    (photos / "c.png").unlink()
    report = distributed.convert(photos, tmp_path / "out2", quality=1)
    assert report.done == 0 and len(report.failed) == 2 and not (tmp_path / "out2").exists()


@pytest.mark.ray
def test_ray_replaces_a_lost_worker(ray_local, photos: Path, reference: Path, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_first_worker(result: distributed.FileResult) -> None:
        if not killed:
            killed.append(result.pid)
            os.kill(result.pid, signal.SIGKILL)  # its queued file comes back as lost and goes to another worker

    out = tmp_path / "ray"
    report = distributed.convert(photos, out, recursive=True, workers=2, progress=kill_first_worker)
    assert (report.done, len(report.failed)) == (4, 1)
    assert killed[0] not in [w["pid"] for w in report.workers]
    finished = {name: data for name, data in outputs(out).items() if not Path(name).name.startswith(".jac-")}
    assert finished == outputs(reference)  # a worker killed while writing may leave a temporary file, nothing more


@pytest.mark.ray
def test_ray_more_workers_than_the_cluster_holds_still_convert(ray_local, photos: Path, reference: Path, tmp_path):
    """``-j 4`` on 2 CPUs waited forever for the two workers Ray could not place, converting nothing."""
    out = tmp_path / "ray"
    with pytest.warns(UserWarning, match="the cluster holds 2 now"):
        report = distributed.convert(photos, out, recursive=True, workers=4)
    assert (report.done, len(report.failed)) == (4, 1)
    assert outputs(out) == outputs(reference)


@pytest.mark.ray
def test_ray_a_file_that_kills_its_worker_fails_alone(ray_local) -> None:
    """A file that kills every worker it meets (out of memory, a crash in native code) used up the replacements
    and ended the batch with RuntimeError, its report lost; the calls queued behind it were charged too."""

    class Dying(distributed.Worker):  # no model: the driver's loop is under test
        def __init__(self):
            self._info = {"node": "n", "pid": os.getpid(), "load_seconds": 0.0, "rss_loaded_bytes": 0}

        def convert(self, src, dst, *options):
            if "poison" in src:
                os._exit(1)
            return distributed.FileResult(src, dst, "done", None, 1, 1, 0.0, "n", os.getpid())

    actor = ray_local.remote(num_cpus=1, max_restarts=0)(Dying)
    names = ["poison1", "a", "b", "poison2", "c", "d", "e", "f"]
    jobs = {Path(f"/in/{n}.png"): Path(f"/out/{n}.jac") for n in names}
    seen: list[str] = []
    report = ray_driver.run(
        ray_local, jobs, actor.remote, 1, 2, lambda src, dst: ("jac",), lambda r: seen.append(r.src)
    )
    assert sorted(Path(f.src).stem for f in report.failed) == ["poison1", "poison2"], report.failed
    assert all("the worker died converting it" in f.error for f in report.failed)
    assert report.done == 6 and sorted(seen) == sorted(str(p) for p in jobs)


def test_is_done_of_a_large_source_does_not_warn(tmp_path: Path, monkeypatch) -> None:
    """Resume opens every source's header: one above Pillow's bomb limit warned at every resume."""
    src, dst = tmp_path / "a.png", tmp_path / "a.jac"
    Image.fromarray(natural_image(40, 48, 3)).save(src)
    with Image.open(src) as im:
        save(im, dst, quality=3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,920 pixels: a warning, not yet an error
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert distributed.is_done(src, dst, "jac", 3)
        assert not distributed.is_done(tmp_path / "missing.png", dst, "jac", 3)


def test_ray_progress_names_files_as_jac_batch_does(tmp_path: Path, capsys, monkeypatch) -> None:
    """``jac batch --ray`` printed the absolute paths the workers get; ``jac batch`` names a file as the folder
    was typed."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    report = distributed._progress_function(True, 2, "photos")
    src = str(folder / "sub" / "a.png")
    report(distributed.FileResult(src, str(tmp_path / "out" / "a.jac"), "failed", "broken"))
    report(distributed.FileResult(str(folder / "b.png"), str(tmp_path / "out" / "b.jac"), "done", None))
    err = capsys.readouterr().err
    assert f"photos{os.sep}sub{os.sep}a.png: broken" in err and str(tmp_path) not in err


def test_cli_sizes_the_ray_workers(monkeypatch, capsys, tmp_path: Path) -> None:
    """ray.md says to size each worker's CPUs (memory per node) and GPU share; the CLI had no way to."""
    given: dict = {}

    def fake_convert(*args, **kwargs):
        given.update(kwargs)
        return distributed.Report()

    monkeypatch.setattr(distributed, "convert", fake_convert)
    base = ["batch", str(tmp_path), str(tmp_path / "out"), "--to", "jac", "--ray"]
    assert main([*base, "--worker-cpus", "2", "--worker-gpus", "0.25"]) == 0
    assert (given["num_cpus"], given["num_gpus"]) == (2.0, 0.25)
    assert main(base) == 0
    assert (given["num_cpus"], given["num_gpus"]) == (1, None)
    for bad in (["--worker-cpus", "0"], ["--worker-gpus", "-1"], ["--worker-cpus", "nan"]):
        with pytest.raises(SystemExit):
            main([*base, *bad])
    with pytest.raises(SystemExit):
        main([*base[:-1], "--worker-cpus", "2"])  # without --ray
    assert "--worker-cpus is an option of --ray" in capsys.readouterr().err


def test_a_worker_takes_the_drivers_pixel_limit(photos: Path, tmp_path: Path, monkeypatch) -> None:
    """A Ray worker process had Pillow's own limit, whatever ``jac batch --ray --max-image-pixels`` (or the driver's
    ``PIL.Image.MAX_IMAGE_PIXELS``) said: the driver's limit is handed to each worker (here run in this process)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after
    worker = distributed.Worker("jac", "cpu", 1, 500)  # a.png is 48x40 = 1920 pixels: above twice 500
    result = worker.convert(str(photos / "a.png"), str(tmp_path / "a.jac"), "jac", 4.0, 0, "cpu", False)
    assert result.status == "failed" and "decompression bomb" in result.error and Image.MAX_IMAGE_PIXELS == 500
    worker = distributed.Worker("jac", "cpu", 1, None)
    result = worker.convert(str(photos / "a.png"), str(tmp_path / "a.jac"), "jac", 4.0, 0, "cpu", False)
    assert result.status == "done" and (tmp_path / "a.jac").exists()


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_ray_resumes_as_jac_batch_judges_each_output(tmp_path: Path) -> None:
    """As ``jac batch`` without Ray, run after run into one folder (each run starts its actors, so the cases share
    runs):

    - ``a``, a source dated in the future, is converted once: the worker does not compare the times of an output
      the record vouches for, and the line of a file it skipped keeps vouching (a third run skips it too);
    - ``b``, replaced by an older copy (``cp -p``), is not taken as done;
    - outputs made with other settings are converted again, then skipped;
    - an output another source made is not replaced: the driver notes what each output was made from, and the
      plan refuses another.
    """
    photos, old, out = tmp_path / "photos", tmp_path / "old.png", tmp_path / "out"
    photos.mkdir()
    for name, colour in (("a", (200, 30, 30)), ("b", (30, 200, 30))):
        Image.new("RGB", (32, 24), colour).save(photos / f"{name}.png")
    Image.new("RGB", (32, 24), (30, 30, 200)).save(old)
    os.utime(old, ns=(time.time_ns() - 10**11,) * 2)
    os.utime(photos / "a.png", ns=(time.time_ns() + 10**13,) * 2)

    def run(src: Path = photos, **settings) -> distributed.Report:
        return distributed.convert(src, out, workers=1, **{"quality": 1, **settings})

    def made() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in out.glob("*.jac")}

    assert run().done == 2
    first = made()
    os.replace(old, photos / "b.png")
    again = run()
    assert (again.done, again.skipped, again.failed) == (1, 1, [])  # a skipped, b converted from the older copy
    assert made()["a.jac"] == first["a.jac"] and made()["b.jac"] != first["b.jac"]
    third = run()
    assert (third.done, third.skipped, third.failed) == (0, 2, [])

    other = run(quality=None, target_psnr=30)
    assert (other.done, other.skipped) == (2, 0)
    assert run(quality=None, target_psnr=30).skipped == 2

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (32, 24), (90, 90, 90)).save(elsewhere / "a.png")
    os.utime(elsewhere / "a.png", ns=(time.time_ns() + 2 * 10**13,) * 2)
    kept = made()["a.jac"]
    report = run(elsewhere, quality=None, target_psnr=30)
    assert report.done == 0 and "made from another file" in report.failed[0].error
    assert made()["a.jac"] == kept


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_ray_notes_a_skipped_file_as_the_source_was_when_sent(tmp_path: Path, monkeypatch) -> None:
    """The driver ended a skipped file's line with the source as it was when the result came back: an older copy
    put in its place (``cp -p``) after the file was sent, which the worker skipped by the times, was then recorded
    as the source of the output, and never converted again. The line notes the source as it was when sent."""
    from .test_batch_record import folder_of_two

    photos, out = folder_of_two(tmp_path)
    assert distributed.convert(photos, out, workers=1).done == 2
    real_run = ray_driver.run

    def run(ray, jobs, new_actor, workers, slots_each, options, report_file):
        def sent(src: str, dst: str) -> tuple:
            given = options(src, dst)
            if Path(src).name == "a.png":  # an older copy put in its place once sent
                Image.fromarray(natural_image(24, 24, 7)).save(src)
                old = (out / "a.jac").stat().st_mtime_ns - 3600 * 10**9
                os.utime(src, ns=(old, old))
            return given

        return real_run(ray, jobs, new_actor, workers, slots_each, sent, report_file)

    monkeypatch.setattr(ray_driver, "run", run)
    again = distributed.convert(photos, out, workers=1)
    assert (again.done, again.skipped) == (0, 2)  # judged by the times: older than its output
    monkeypatch.undo()
    third = distributed.convert(photos, out, workers=1)
    assert (third.done, third.skipped, third.failed) == (1, 1, [])


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_ray_notes_the_output_as_its_worker_wrote_it(tmp_path: Path, monkeypatch) -> None:
    """The driver noted the output as it found it once the result came back: one replaced after the worker wrote
    it was recorded as the output made, and a source dated in the future was then skipped with it."""
    from .test_batch_record import folder_of_two, tomorrow

    photos, out = folder_of_two(tmp_path)
    tomorrow(photos / "a.png")
    other = tmp_path / "other.jac"
    Image.fromarray(natural_image(24, 24, 9)).save(other, quality=DEFAULT_QUALITY)
    note_made = distributed.note_made

    def replaced_meanwhile(out_dir, src, dst, *args, **kwargs):  # another .jac put in the output's place
        if Path(src).name == "a.png":
            shutil.copyfile(other, dst)
        note_made(out_dir, src, dst, *args, **kwargs)

    monkeypatch.setattr(distributed, "note_made", replaced_meanwhile)
    assert distributed.convert(photos, out, workers=1).done == 2
    monkeypatch.undo()
    again = distributed.convert(photos, out, workers=1)
    assert (again.done, again.skipped) == (1, 1)
    assert (out / "a.jac").read_bytes() != other.read_bytes()


@pytest.mark.ray
def test_ray_judges_a_source_as_it_notes_it(ray_local, tmp_path: Path, monkeypatch) -> None:
    """The driver read the source twice, once to judge it against the record and once to note it as sent: an older
    copy put in its place between the two was noted as the file the kept output (made from the first) came from,
    and every later run skipped it."""
    photos, old = tmp_path / "photos", tmp_path / "old.png"
    photos.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(photos / "a.png")
    Image.new("RGB", (32, 24), (30, 30, 200)).save(old)  # another picture of that size, older than any output
    os.utime(old, ns=(time.time_ns() - 10**11,) * 2)
    out = tmp_path / "out"
    assert distributed.convert(photos, out, quality=1, workers=1).done == 1
    made = (out / "a.jac").read_bytes()
    note_started = distributed.note_started

    def replaced_meanwhile(out_dir, jobs):  # the older copy arrives as the driver sends the file
        os.replace(old, photos / "a.png")
        return note_started(out_dir, jobs)

    monkeypatch.setattr(distributed, "note_started", replaced_meanwhile)
    distributed.convert(photos, out, quality=1, workers=1)
    assert (out / "a.jac").read_bytes() != made  # converted from the copy now there, not kept as done
