"""The codec's short blocks that ignore warnings leave the process's warning filters as they found them."""

from __future__ import annotations

import sys
import threading
import warnings
from pathlib import Path

from PIL import Image

from pillow_jac import decoded_output, quiet_warnings


def test_blocks_in_parallel_threads_leave_the_filters_as_they_were(tmp_path: Path) -> None:
    """Two overlapping ``catch_warnings`` blocks put back each other's filter lists: an "ignore" stayed for good,
    and every later warning of the process went unseen (here, reading headers back in two threads while a third
    records its warnings)."""
    png = tmp_path / "out.png"
    Image.new("RGB", (4, 4)).save(png)
    saved = sys.getswitchinterval()
    before = list(warnings.filters)
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the blocks overlap at once
    try:

        def read_back() -> None:
            for _ in range(300):
                assert decoded_output.written_by_a_decode(png) is False

        def record() -> None:  # as a conversion records its warnings, around all of its work
            for _ in range(300):
                with quiet_warnings.recording(always=True) as caught:
                    warnings.warn("recorded", stacklevel=1)
                assert [str(w.message) for w in caught] == ["recorded"]

        threads = [threading.Thread(target=work) for work in (read_back, read_back, record)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(saved)
    assert warnings.filters == before
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        warnings.warn("still shown", stacklevel=1)
    assert [str(w.message) for w in seen] == ["still shown"]
