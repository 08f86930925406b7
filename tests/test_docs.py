"""The documentation's links resolve, and the README stays a short start.

Every relative link in README.md, docs/*.md and savedmodels/README.md must name an existing file
or folder, and an anchor (`page.md#section`, `#section`) must name a heading of that page under
GitHub's slug rules. Plain text parsing only: no TensorFlow import, so this runs in a second.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def doc_files():
    """Every Markdown file whose links are checked."""
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "savedmodels" / "README.md"]


def prose_lines(text):
    """The lines of a Markdown text outside fenced code blocks, with inline code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation except '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor a Markdown file defines through its headings (duplicates get -1, -2, ...)."""
    seen, result = {}, set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path):
    """(line number, target) of every link in a Markdown file, outside code."""
    found = []
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(prose_lines(text), start=1):
        found.extend((number, target) for target in LINK.findall(line))
    return found


def broken_links(path):
    """Messages for the relative links of `path` that do not resolve."""
    problems = []
    for _, target in links(path):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: link {target!r}: {dest} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(
                f"{path.name}: link {target!r}: {dest.name} has no heading with anchor "
                f"#{anchor}; its anchors: {sorted(anchors(dest))}"
            )
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path):
    assert path.exists()
    assert broken_links(path) == []


def test_readme_is_at_most_250_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert missing == []


def test_no_documentation_mentions_the_design_notes_file():
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        assert "DESIGN.md" not in text, f"{path} mentions DESIGN.md; link docs/design.md instead"
        assert "../shared" not in text, f"{path} links outside the repository"


def test_readme_states_the_commands_ci_runs():
    # .ci/run runs exactly these; the README's quickstart block must show them as they are.
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert 'pip install -e ".[dev]"' in commands
    assert "kdepth fit --stage 1" in commands
    assert "pytest" in commands


def test_slug_follows_github_rules():
    assert slug("1, 4, 7: where the training time goes") == "1-4-7-where-the-training-time-goes"
    assert slug("Images given to `kdepth predict`") == "images-given-to-kdepth-predict"
    assert slug("Evaluation protocol (NYU Depth v2)") == "evaluation-protocol-nyu-depth-v2"
    assert slug("train_step and test-step") == "train_step-and-test-step"


def test_checker_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Real section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Twice\n\n## Twice\n\n"
        "[ok](other.md#real-section) [dup](#twice-1) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [bad anchor](other.md#no-such-section)\n"
        "```\n[in code](nowhere.md)\n```\n`[inline](nowhere.md)`\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2
    assert "missing.md" in problems[0] and "does not exist" in problems[0]
    assert "#no-such-section" in problems[1] and "real-section" in problems[1]
