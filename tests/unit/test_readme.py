"""The README and docs/: the README stays a short front door, every figure quoted from the
committed run equals `metrics/evaluate.json` as committed at HEAD, and every relative link leads
somewhere.

The figures are checked against the committed file, not the workspace's, which the README's own
experiments (`dvc exp run -S lr=0.0005`) rewrite.

A figure is quoted under a marker line (docs/contributing.md describes it):

- `<!-- metrics/evaluate.json: KEY ... -->` before a paragraph: the paragraph's decimal numbers
  are those keys' values, in order, rounded to the decimals shown;
- `<!-- metrics/evaluate.json rows NAME ...: KEY ... -->` before a fenced block: in each line of
  the block whose first word is one of the names, the decimal numbers are those keys' values.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
METRICS = REPO / "metrics" / "evaluate.json"
MAX_README_BYTES = 15_000

MARKER = re.compile(
    r"^<!-- metrics/evaluate\.json(?: rows (?P<rows>[^:]+))?: (?P<keys>[a-z_ ]+?) -->$"
)
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
TREE = "├└│─ "


@dataclass(frozen=True)
class Quote:
    """Figures on one line of a page that a marker says come from the committed run."""

    page: Path
    line_number: int
    line: str
    keys: tuple[str, ...]


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


def _fence_end(lines: list[str], start: int) -> int:
    """Index of the line closing the fence opened at `start`."""
    for index in range(start + 1, len(lines)):
        if lines[index].startswith("```"):
            return index
    raise AssertionError(f"unclosed code fence at line {start + 1}")


def quotes(page: Path) -> list[Quote]:
    """The marked figures of a page: one Quote per line holding them."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Quote] = []
    for index, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if match is None:
            continue
        keys = tuple(match["keys"].split())
        where = f"{_name(page)}:{index + 1}"
        if match["rows"] is None:
            end = index + 1
            while end < len(lines) and lines[end].strip():
                end += 1
            paragraph = " ".join(lines[index + 1 : end])
            assert paragraph, f"{where}: the marker must stand right above its paragraph"
            found.append(Quote(page, index + 2, paragraph, keys))
            continue
        assert index + 1 < len(lines) and lines[index + 1].startswith("```"), (
            f"{where}: a marker with rows must stand right above a code fence"
        )
        block = lines[index + 2 : _fence_end(lines, index + 1)]
        for row in match["rows"].split():
            hits = [
                (offset, text)
                for offset, text in enumerate(block)
                if text.strip(TREE).split()[:1] == [row]
            ]
            assert hits, f"{where}: no row {row!r} in the block below"
            found += [Quote(page, index + 3 + offset, text, keys) for offset, text in hits]
    return found


@functools.cache
def committed_metrics() -> dict[str, float]:
    """`metrics/evaluate.json` at HEAD; the test is skipped outside a git checkout."""
    try:
        inside = subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("git is not installed: the committed metrics cannot be read")
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        pytest.skip(f"{REPO} is not a git checkout: there are no committed metrics to read")
    # `HEAD:./path` is relative to cwd, wherever the repository's root is
    shown = subprocess.run(
        ["git", "show", f"HEAD:./{_name(METRICS)}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, f"git show HEAD:{_name(METRICS)} failed: {shown.stderr}"
    return json.loads(shown.stdout)


def test_readme_is_a_short_front_door() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, (
        f"README.md is {size} bytes, over {MAX_README_BYTES}: move detail to a page in docs/"
    )


def test_readme_quotes_the_committed_run() -> None:
    assert quotes(README), "README.md marks no figure of the committed run"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_quoted_figures_equal_the_committed_metrics(page: Path) -> None:
    metrics = committed_metrics()
    for quote in quotes(page):
        where = f"{_name(page)}:{quote.line_number}"
        shown = DECIMAL.findall(quote.line)
        assert len(shown) == len(quote.keys), (
            f"{where}: {len(shown)} decimal figures {shown} for keys {list(quote.keys)}"
        )
        for key, figure in zip(quote.keys, shown, strict=True):
            assert key in metrics, f"{where}: {key} is not in the committed {_name(METRICS)}"
            decimals = len(figure.split(".")[1])
            expected = f"{metrics[key]:.{decimals}f}"
            assert figure == expected, (
                f"{where}: {key} is quoted as {figure}, but the committed {_name(METRICS)} holds "
                f"{metrics[key]} ({expected}): commit what `dvc repro` wrote, or fix the figure"
            )


def test_readme_quotes_no_committed_figure_without_a_marker() -> None:
    """A committed figure outside every marked paragraph would not be checked."""
    marked = {quote.line for quote in quotes(README)}
    metrics = committed_metrics()
    forms = {
        f"{metrics[key]:.{decimals}f}"
        for key in ("test_age_mae", "test_gender_accuracy", "test_baseline_age_mae")
        for decimals in range(2, 6)
    }
    lines = README.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if any(line.strip() and line.strip() in text for text in marked):
            continue
        unmarked = sorted(set(DECIMAL.findall(line)) & forms)
        assert not unmarked, f"README.md:{number}: {unmarked} quoted without a marker"


def _without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _without_code(text: str) -> str:
    """The text with fenced blocks and inline code spans removed."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in _without_fences(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match is None:
            continue
        slug = _slug(match[1])
        suffix = 1
        unique = slug
        while unique in found:
            unique = f"{slug}-{suffix}"
            suffix += 1
        found.add(unique)
    return found


def relative_links(page: Path) -> list[str]:
    targets = LINK.findall(_without_code(page.read_text(encoding="utf-8")))
    return [target for target in targets if not SCHEME.match(target)]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_lead_to_files_that_exist(page: Path) -> None:
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.is_file(), f"{_name(page)}: link {target!r} leads to no file"
        if anchor and destination.suffix == ".md":
            assert anchor in anchors(destination), (
                f"{_name(page)}: link {target!r}: {destination.name} has no heading #{anchor}"
            )


def test_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)
    }
    missing = [_name(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not missing, f"README.md links none of {missing}"
