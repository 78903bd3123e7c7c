"""The documentation's sources: the API page lists the public API, tutorials say what they show.

These need no build (they read docs/); the built site is checked in a browser by
``test_site.py``.
"""

import re
from pathlib import Path

import pytest

import pm_em

DOCS = Path(__file__).resolve().parents[2] / "docs"


def toctree_entries(index: Path) -> list[str]:
    """The entries of the (first) toctree directive of a MyST page."""
    text = index.read_text()
    block = re.search(r"```\{toctree\}\n(.*?)```", text, re.S)
    assert block, f"no toctree in {index}"
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.strip().startswith(":")
    ]


TUTORIALS = toctree_entries(DOCS / "tutorials" / "index.md")


def test_api_page_lists_every_public_name():
    listed = set(re.findall(r"^   (\w+)$", (DOCS / "api.rst").read_text(), re.M))
    missing = sorted(set(pm_em.__all__) - listed)
    assert not missing, f"add to docs/api.rst: {missing}"
    unknown = sorted(listed - set(pm_em.__all__))
    assert not unknown, f"not in pm_em.__all__: {unknown}"


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_says_what_it_shows(name):
    text = (DOCS / "tutorials" / f"{name}.md").read_text()
    assert text.startswith("---\nfile_format: mystnb\n"), "copy the front matter of a tutorial"
    body = text.split("---\n", 2)[2].lstrip()
    assert body.startswith("# "), "a tutorial starts with its title"
    first_paragraph = body.split("\n\n", 2)[1]
    assert first_paragraph.startswith("**What this shows.**")


def test_every_tutorial_file_is_in_the_toctree():
    files = sorted(p.stem for p in (DOCS / "tutorials").glob("*.md") if p.stem != "index")
    assert files == sorted(TUTORIALS)


def test_tutorials_read_their_data_from_docs_data():
    for name in TUTORIALS:
        text = (DOCS / "tutorials" / f"{name}.md").read_text()
        for path in re.findall(r'"(\.\./data/[^"]+)"', text):
            assert (DOCS / "tutorials" / path).resolve().is_file(), (name, path)
        assert "/work/" not in text and "shared/data" not in text, name
