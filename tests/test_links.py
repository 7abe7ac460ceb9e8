"""Every pointer a reader follows leads somewhere: each relative link and #anchor in README.md,
CHANGELOG.md and docs/*.md names a file that exists and a heading in it (by GitHub's anchors), and
each `README, "Section"` or `docs/foo.md, "Section"` in the comments of deploy/ names a section
that exists."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title"), images too; reference definitions: [text]: target
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# In deploy/'s comments: (README, "Helm chart"), (docs/operations.md: "Probes"), README, section "X".
POINTER = re.compile(r"\b(README(?:\.md)?|docs/[\w.-]+\.md)\s*[,:]\s*(?:section\s+)?\"([^\"]+)\"")
# A path in deploy/'s comments: docs/events.md, deploy/events/cloudformation.yaml, docs/faults.md#soak
PATH = re.compile(r"(?<![\w./-])((?:docs|deploy)/[\w.-]+(?:/[\w.-]+)*)(#[\w-]+)?")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with code spans emptied: links inside code are
    examples, not links."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, CODE_SPAN.sub("``", line)))
    return lines


def heading_text(markdown: str) -> str:
    """A heading's text as rendered: link targets, code marks and emphasis gone."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"[`*]", "", text).strip()


def slug(text: str) -> str:
    """GitHub's anchor for a heading's text: lower case, every character but letters, digits, marks,
    '_', '-' and ' ' dropped, spaces made hyphens."""
    kept = (c for c in text.lower() if c in "_- " or unicodedata.category(c)[0] in "LNM")
    return "".join(kept).replace(" ", "-")


def headings(path: Path) -> list[str]:
    fenced, found = False, []
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            found.append(heading_text(match.group(2)))
    return found


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives path's headings: a repeated slug gets -1, -2, ..."""
    seen: dict[str, int] = {}
    result = set()
    for text in headings(path):
        base = slug(text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(f"{base}-{count}" if count else base)
    return result


def link_targets(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(text):
        found += [(number, target) for target in INLINE_LINK.findall(line)]
        if match := REFERENCE.match(line):
            found.append((number, match.group(1)))
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per relative link or anchor of the Markdown file path that leads nowhere."""
    broken = []
    for number, target in link_targets(path.read_text()):
        if SCHEME.match(target):
            continue  # http(s), mailto: not followed here
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.is_relative_to(root) or not linked.exists():
            broken.append(f"{where}: no such file in the repository")
        elif anchor and (linked.suffix != ".md" or unquote(anchor) not in anchors(linked)):
            broken.append(f"{where}: no heading with that anchor in {linked.relative_to(root)}")
    return broken


def section_exists(document: Path, name: str) -> bool:
    """A heading reads name, or begins with it and a colon: "Fleet sizing" names "Fleet sizing: AWS
    quotas and many pods"."""
    wanted = name.casefold()
    return any(h.casefold() == wanted or h.casefold().startswith(wanted + ":") for h in headings(document))


def comment_prose(text: str) -> str:
    """The file as one line of words, comment marks dropped: a pointer may wrap across comment lines."""
    return " ".join(line.strip().lstrip("#").strip() for line in text.splitlines())


def broken_pointers(path: Path, root: Path = ROOT) -> list[str]:
    """One line per section pointer or path in a deploy/ file that leads nowhere, each said once."""
    prose, broken = comment_prose(path.read_text()), []
    where = path.relative_to(root)
    for document, section in POINTER.findall(prose):
        target = root / ("README.md" if document.startswith("README") else document)
        if not target.exists():
            broken.append(f'{where}: {document}, "{section}": no such file')
        elif not section_exists(target, section):
            broken.append(f'{where}: {document}, "{section}": no such section in {target.relative_to(root)}')
    for relative, anchor in PATH.findall(prose):
        target = root / relative.rstrip(".")
        if not target.exists():
            broken.append(f"{where}: {relative}: no such file")
        elif anchor and (target.suffix != ".md" or anchor[1:] not in anchors(target)):
            broken.append(f"{where}: {relative}{anchor}: no heading with that anchor")
    return list(dict.fromkeys(broken))


def markdown_files(root: Path) -> list[Path]:
    return [path for path in [root / "README.md", root / "CHANGELOG.md"] if path.exists()] + sorted(
        (root / "docs").glob("*.md")
    )


def deploy_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "deploy").rglob("*") if path.is_file())


def test_every_link_and_anchor_in_the_docs_resolves() -> None:
    broken = [line for path in markdown_files(ROOT) for line in broken_links(path)]
    assert broken == [], "\n".join(broken)


def test_every_section_pointer_in_deploy_names_a_section_that_exists() -> None:
    broken = [line for path in deploy_files(ROOT) for line in broken_pointers(path)]
    assert broken == [], "\n".join(broken)


def test_anchors_are_githubs() -> None:
    assert slug(heading_text("Performance targets, against their floors (same run)")) == (
        "performance-targets-against-their-floors-same-run"
    )
    assert slug(heading_text("Choosing `local_ttl`")) == "choosing-local_ttl"
    assert slug(heading_text("A fleet against AWS's quotas")) == "a-fleet-against-awss-quotas"
    assert slug(heading_text("Multi-team (Airflow 3.2+)")) == "multi-team-airflow-32"


def test_the_checks_find_what_is_broken(tmp_path: Path) -> None:
    """Each kind of breakage, in a tree of its own: the checks above would pass on a checker that
    finds nothing."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "deploy").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Fleet sizing: quotas\n\n## Setup\n\n## Setup\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/guide.md#fleet-sizing-quotas) [ok](docs/guide.md#setup-1) [ok](#readme)\n"
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#fleet-sizing) [bad local](#nowhere)\n"
        "[outside](../elsewhere.md) `[in code](docs/missing.md)` [web](https://example.com/#x)\n"
        "\n```\n[in a fence](docs/missing.md)\n```\n"
        "# readme\n"
    )
    found = broken_links(tmp_path / "README.md", tmp_path)
    assert [line.split(": ", 1)[0] for line in found] == ["README.md:2", "README.md:2", "README.md:2", "README.md:3"]
    assert [line.split(": ")[1] for line in found] == [
        "docs/missing.md",
        "docs/guide.md#fleet-sizing",
        "#nowhere",
        "../elsewhere.md",
    ]
    (tmp_path / "deploy" / "values.yaml").write_text(
        '# Size it (docs/guide.md, "Fleet sizing"), set up once (docs/guide.md: "Setup").\n'
        '# Gone: (README, "Helm chart"), (docs/guide.md, "Fleet\n'
        '#   quotas"), docs/events.md, deploy/values.yaml#top.\n'
    )
    assert broken_pointers(tmp_path / "deploy" / "values.yaml", tmp_path) == [
        'deploy/values.yaml: README, "Helm chart": no such section in README.md',
        'deploy/values.yaml: docs/guide.md, "Fleet quotas": no such section in docs/guide.md',
        "deploy/values.yaml: docs/events.md: no such file",
        "deploy/values.yaml: deploy/values.yaml#top: no heading with that anchor",
    ]
