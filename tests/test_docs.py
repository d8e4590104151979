"""The documentation's shape: a short README, result pages under docs/results/, generated
blocks that name their commands, unique headings, links that resolve, and the scripts
behind them (update_readme, prefix_headings, mpt methods)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from scripts_loader import load_script

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "docs" / "results"
RESULT_PAGES = sorted(RESULTS.glob("*.md"))
PAGES = [README, *RESULT_PAGES, REPO / "docs" / "usage.md"]

BEGIN = re.compile(r"<!-- BEGIN generated:(?P<command>.*?)-->")
END = "<!-- END generated -->"
LINK = re.compile(r"(?<!`)\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def headings(path: Path) -> list[str]:
    return [line for line in prose(path.read_text(encoding="utf-8")) if re.match(r"#{1,6} ", line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    title = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < 300, f"README.md has {lines} lines; move details to docs/"


def test_result_pages_exist():
    names = {page.name for page in RESULT_PAGES}
    assert {"README.md", "quantization.md", "phase-transitions.md"} <= names


@pytest.mark.parametrize("page", [README, *RESULT_PAGES], ids=rel)
def test_generated_blocks_name_their_command(page):
    text = page.read_text(encoding="utf-8")
    commands = [match.group("command").strip() for match in BEGIN.finditer(text)]
    assert all(commands), f"{rel(page)}: a generated block without a command"
    assert len(commands) == text.count(END), f"{rel(page)}: BEGIN and END markers do not pair"
    for start in BEGIN.finditer(text):
        body = text[start.end() : text.index(END, start.end())]
        assert "<!-- BEGIN generated" not in body, f"{rel(page)}: nested generated block"


@pytest.mark.parametrize("page", [README, *RESULT_PAGES], ids=rel)
def test_headings_are_unique(page):
    seen = headings(page)
    duplicates = sorted({heading for heading in seen if seen.count(heading) > 1})
    assert not duplicates, f"{rel(page)}: repeated headings {duplicates}"
    anchors = [slug(heading) for heading in seen]
    assert len(set(anchors)) == len(anchors), f"{rel(page)}: two headings share an anchor"


def test_every_result_page_is_in_the_index():
    index = (RESULTS / "README.md").read_text(encoding="utf-8")
    linked = {match.group("target").split("#")[0] for match in LINK.finditer(index)}
    missing = [page.name for page in RESULT_PAGES if page.name != "README.md"]
    missing = [name for name in missing if name not in linked]
    assert not missing, f"docs/results/README.md does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    broken = []
    for line in prose(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(line):
            target = match.group("target")
            if re.match(r"[a-z]+:", target):
                continue
            path_part, _, anchor = target.partition("#")
            path = (page.parent / path_part).resolve() if path_part else page
            if not path.exists() or (
                anchor and path.suffix == ".md" and anchor not in map(slug, headings(path))
            ):
                broken.append(target)
    assert not broken, f"{rel(page)}: links that resolve to nothing: {broken}"


def test_prefix_headings_names_every_heading_outside_code():
    prefix_headings = load_script("prefix_headings")
    text = "### m · ptb · ppl · quant\n\n| a |\n```\n# not a heading\n```\n## two\n"
    assert prefix_headings.prefix(text, "grid") == (
        "### grid · m · ptb · ppl · quant\n\n| a |\n```\n# not a heading\n```\n## grid · two\n"
    )


def test_update_readme_defaults_and_fails_on_a_broken_pipe():
    update_readme = load_script("update_readme")
    paths = update_readme.default_paths()
    assert paths[0] == "README.md"
    assert {rel(page) for page in RESULT_PAGES} <= set(paths)
    assert update_readme.run("echo 1 | cat") == "1\n"
    with pytest.raises(SystemExit, match="false"):
        update_readme.run("false | cat")


def test_methods_table_lists_every_registered_method():
    from mpt_core import registry
    from mpt_core.commands.methods import table as methods_table

    table = methods_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == registry.names()
    assert all(row.count(" | ") == 6 for row in rows), "a cell holds an unescaped |"
