"""The table of released generations and the release numbers that order generations (SPEC.md section 9.2).

The package's ``released.json`` (:func:`released`, beside this module) names every released generation's
``weights_hash`` and ``decoder_hash``, and only grows. A weights file that claims a released generation's
``weights_hash`` with another decoder is not that generation (:func:`released_problem`): a generation released
before decoder hashes existed (release 6) writes a header hash that does not cover its decoder, so without the
table a re-sealed file with another decoder would decode its files to other pixels. A file with a released
``model_id`` and a ``weights_hash`` of its own is another generation, which the table does not pin
(:func:`is_pinned`): it decodes the files that name its own hash, and is never the default encoder.

A generation's release is the number its ``model_id`` ends with (:func:`release_in`), which the decoder hash
covers; a manifest's ``release`` field has to agree (:func:`release_problem`).

Example:
    >>> release_in("mbt-128-192-r006"), is_pinned("mbt-128-192-r006", "19772a6335c73e41")
    (6, True)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .constants import MODEL_ID_BYTES, is_release_number

__all__ = [
    "RELEASED_PATH",
    "ReleasedTableError",
    "released",
    "read_released_table",
    "released_problem",
    "is_pinned",
    "release_in",
    "release_problem",
]

#: the table of released generations, part of the package's code (model_id -> weights_hash, decoder_hash): it
#: does not depend on where, or whether, the package's weights are installed
RELEASED_PATH = Path(__file__).resolve().parent / "released.json"
#: the release number at the end of a model_id (``mbt-128-192-r006``: 6), as
#: :func:`pillow_jac.training.model_ids.model_id_for` writes it
_RELEASE_IN_ID = re.compile(r"-r([0-9]{3})\Z")


class ReleasedTableError(ValueError, OSError):
    """The package's table of released generations cannot be read: the installation is damaged."""


_RELEASED: dict[tuple, dict[str, dict[str, str]]] = {}


def released() -> dict[str, dict[str, str]]:
    """Every released generation: ``{model_id: {"weights_hash": hex, "decoder_hash": hex}}``.

    From the package's ``pillow_jac/released.json`` (:data:`RELEASED_PATH`), which a release appends to and
    nothing else changes (SPEC.md section 9.2). An unreadable table is an error (the installation is
    damaged): without it a lookalike file could pass.

    Example:
        >>> released()["mbt-128-192-r006"]["decoder_hash"]
        '1aa14a9029b4f76c'
    """
    path = RELEASED_PATH
    try:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        raise ReleasedTableError(f"{path}: the table of released generations cannot be read ({exc})") from None
    table = _RELEASED.get(key)
    if table is None:
        table = read_released_table(path)
        # one assignment: a thread that read the table as another cleared the cache still has its own
        _RELEASED.clear()
        _RELEASED[key] = table
    return table


def read_released_table(path: Path) -> dict[str, dict[str, str]]:
    """The table of released generations in ``path`` (the format of :data:`RELEASED_PATH`), checked, uncached.

    Raises:
        ReleasedTableError: ``path`` cannot be read or is not a table of ``model_id -> weights_hash, decoder_hash``.
    """
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict) or not all(
            isinstance(e, dict) and {"weights_hash", "decoder_hash"} <= set(e) for e in table.values()
        ):
            raise ValueError("not a table of model_id -> weights_hash, decoder_hash")
    except (OSError, ValueError) as exc:
        raise ReleasedTableError(f"{path}: the table of released generations cannot be read ({exc})") from None
    return table


def released_problem(model_id: str, weights_hash: str, decoder_hash: str, legacy_hash: str | None = None) -> str | None:
    """Why weights naming ``model_id`` would pass for a released generation they are not, or None.

    Refused: the ``weights_hash`` of a released generation of ``model_id`` with another ``decoder_hash`` (its
    files would decode with another decoder), and a ``legacy_hash`` (the manifest's ``legacy_weights_hash``,
    which does not cover the decoder) that is not the ``weights_hash`` of the released ``model_id``. Weights
    with a released ``model_id`` and a ``weights_hash`` of their own are another generation, which decodes only
    the files that name that hash: a generation built before its ``model_id`` was released elsewhere
    (SPEC.md sections 9.2, 9.3).
    """
    entry = released().get(model_id)
    if legacy_hash not in (None, "None", "") and (entry is None or entry["weights_hash"] != legacy_hash):
        return (
            f"it carries a legacy_weights_hash, which only a generation released before decoder hashes may "
            f"carry, and {model_id!r} with {legacy_hash} is no such generation"
        )
    if entry is None or entry["weights_hash"] != weights_hash or entry["decoder_hash"] == decoder_hash:
        return None
    if decoder_hash in (None, "None", ""):
        return f"its manifest has no decoder_hash (a file of {model_id!r} made before decoder hashes): freeze it again"
    return (
        f"it claims the released generation {model_id!r} but holds another one (weights_hash {weights_hash}, "
        f"decoder_hash {decoder_hash}; released: {entry['weights_hash']}, {entry['decoder_hash']}): "
        "a changed decoder is a new generation, with a new model_id"
    )


def is_pinned(model_id: str, weights_hash: str) -> bool:
    """Whether the table of released generations pins ``model_id`` with ``weights_hash`` (hex): a released generation.

    False for an unreleased ``model_id`` and for a released ``model_id`` with a hash of its own (another
    generation, which never encodes by default: SPEC.md section 9.2).
    """
    entry = released().get(model_id)
    return entry is not None and entry["weights_hash"] == weights_hash


def release_in(model_id: str) -> int | None:
    """The release number a ``model_id`` ends with (``-rNNN``), or None: what orders generations (SPEC.md 9.2).

    The ``model_id`` is covered by the decoder hash; the manifest's ``release`` is not, and only has to agree
    (:func:`release_problem`).

    Example:
        >>> release_in("mbt-128-192-r006"), release_in("demo")
        (6, None)
    """
    found = _RELEASE_IN_ID.search(model_id)
    return int(found.group(1)) if found else None


def release_problem(metadata: dict) -> str | None:
    """What is wrong with a manifest's ``release``, or None: absent, or the number its ``model_id`` ends with.

    Example:
        >>> release_problem({"model_id": "mbt-128-192-r006", "release": "6"}) is None
        True
        >>> release_problem({"model_id": "mbt-128-192-r006", "release": "999"})
        "its manifest's release '999' is not the release its model_id 'mbt-128-192-r006' ends with 6"
    """
    release, model_id = metadata.get("release"), str(metadata.get("model_id"))
    if release is None:
        return None
    shown = repr(release[:20] + "..." if isinstance(release, str) and len(release) > 20 else release)
    if not is_release_number(release):
        return f"release must be a number, got {shown}"
    own = release_in(model_id)
    if len(release) > MODEL_ID_BYTES or int(release) != own:  # the length first: int() of 5000 digits raises
        ends = "with no release (-rNNN)" if own is None else f"with {own}"
        return f"its manifest's release {shown} is not the release its model_id {model_id!r} ends {ends}"
    return None
