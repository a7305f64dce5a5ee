"""README.md and docs/*.md: every relative link and image resolves, and each generated block is
on the page its writer targets.

A page that moves or a file that is renamed breaks links silently on GitHub; this test names the
page, the line and the target. Links to other sites are not fetched (no network in the suite);
an anchor (``page.md#section``) must match one of the target page's headings, slugged as GitHub
slugs them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")"
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks and indented code, inline code removed."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            continue
        yield n, re.sub(r"`[^`]*`", "", line)


def links(page: Path) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in _prose_lines(page.read_text()) for m in LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found = set()
    for _, line in _prose_lines(page.read_text()):
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            found.add(slug(m.group(1)))
    # headings inside generated blocks keep their code spans: slug them from the raw text too
    for m in re.finditer(r"^#{1,6}\s+(.*)$", page.read_text(), re.M):
        found.add(slug(m.group(1)))
    return found


def test_the_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "method.md", "architecture.md", "mmdetection.md", "controls.md", "performance.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for n, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.relative_to(REPO)}:{n}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.relative_to(REPO)}:{n}: {target} (no heading #{anchor} in {dest.name})")
    assert not broken, "\n".join(broken)


def test_the_link_pattern_reads_links_images_and_anchors(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("see [a](docs/a.md#x-y) and ![img](../f.png \"t\")\n"
                    "```\n[not](in-a-fence.md)\n```\n"
                    "`[not](inline-code.md)` and [site](https://example.org)\n")
    assert links(page) == [(1, "docs/a.md#x-y"), (1, "../f.png"), (5, "https://example.org")]
    assert slug("Known limits (measured by the committed `make report` run)") == \
        "known-limits-measured-by-the-committed-make-report-run"
    assert slug("6. Python API") == "6-python-api"


def _markers(tag: str) -> tuple[str, str]:
    return f"<!-- {tag}:BEGIN -->", f"<!-- {tag}:END -->"


def _constant(path: Path, name: str) -> str:
    """A module-level string constant, read without importing the module (step.py imports torch)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} defines no {name}")


@pytest.mark.parametrize("writer, tag", [
    ("dynrcnn/report/studies/mmdet.py", "RESULTS-MMDET"),
    ("dynrcnn/report/studies/controls.py", "CONTROLS"),
    ("dynrcnn/report/studies/trees.py", "TREES"),
    ("dynrcnn/report/studies/premise.py", "PREMISE-TEST"),
    ("benchmarks/step.py", "PERFORMANCE"),
])
def test_each_generated_block_is_on_the_page_its_writer_targets(writer, tag):
    page = REPO / _constant(REPO / writer, "DOC_PAGE")
    text = page.read_text()
    begin, end = _markers(tag)
    assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end), page
    readme = (REPO / "README.md").read_text()
    assert begin not in readme and end not in readme, f"README.md still holds the {tag} block"


def test_make_benchmark_writes_the_performance_page():
    makefile = (REPO / "Makefile").read_text()
    page = _constant(REPO / "benchmarks/step.py", "DOC_PAGE")
    step_line = next(line for line in makefile.splitlines() if "benchmarks/step.py" in line)
    assert f"--page {page}" in step_line
    assert f"--page {page}" in next(line for line in makefile.splitlines() if "benchmarks/nms.py" in line)
    text = (REPO / page).read_text()  # benchmarks/nms.py writes step.py's page (it imports DOC_PAGE)
    assert text.count("<!-- NMS:BEGIN -->") == 1 and text.count("<!-- NMS:END -->") == 1


def test_readme_keeps_its_own_blocks_and_stays_a_front_page():
    readme = (REPO / "README.md").read_text()
    headlines = [_constant(REPO / f"dynrcnn/report/studies/{s}.py", "HEADLINE_TAG") for s in ("trees", "premise")]
    for tag in ("RESULTS-HEADLINE", "RESULTS-TIME", "RESULTS", *headlines):  # each study's headline line has its place
        begin, end = _markers(tag)
        assert readme.count(begin) == 1 and readme.count(end) == 1, tag
    assert len(readme.splitlines()) <= 150
