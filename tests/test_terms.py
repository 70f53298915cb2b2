"""The weights' terms: stated in weights/LICENSE.md, in the package metadata and, per release, in the model card."""

from __future__ import annotations

import re
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no '## {title}' section"
    return match.group(1)


def test_the_package_metadata_names_the_weights_terms() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    files = re.search(r"^license-files\s*=\s*\[(.*?)\]", pyproject, re.MULTILINE | re.DOTALL)
    assert files is not None and '"weights/LICENSE.md"' in files.group(1)
    # the Apache-2.0 text ships with the code (its section 4(a): recipients get a copy of the licence)
    assert '"LICENSE"' in files.group(1)
    apache = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in apache and "Version 2.0, January 2004" in apache and "END OF TERMS" in apache
    expression = re.search(r'^license\s*=\s*"(.*)"', pyproject, re.MULTILINE)
    assert expression is not None
    # the code's licence and the weights' terms together, both applying: an AND, never an OR
    assert "Apache-2.0" in expression.group(1) and " OR " not in expression.group(1)
    assert re.search(r"\bAND LicenseRef-[\w.-]+", expression.group(1)), expression.group(1)
    terms = (WEIGHTS / "LICENSE.md").read_text(encoding="utf-8")
    assert "Apache" in terms and "non-commercial research" in terms
    for group, source in (("wiki_", "Zelex/images"), ("bsds_", "BSDS500"), ("inet_", "ImageNet")):
        assert group in terms and source in terms


def test_the_model_card_records_the_data_of_every_shipped_release() -> None:
    card = _section((WEIGHTS / "MODEL_CARD.md").read_text(encoding="utf-8"), "Terms of use")
    assert "LICENSE.md" in card and "non-commercial research" in card
    files = sorted(WEIGHTS.glob("*.safetensors")) + sorted(WEIGHTS.glob("generations/*.safetensors"))
    assert files
    for path in files:
        with safe_open(str(path), "np") as f:
            model_id = f.metadata()["model_id"]
        assert re.search(rf"^\| \d+ \| `{re.escape(model_id)}` \| [\d-]+ \| \S", card, re.MULTILINE), model_id
