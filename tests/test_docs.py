"""The documentation's links resolve, and no file cites the course's private notes.

For README.md, bench/README.md and every docs/*.md: every relative link and image target
(`[..](path)`, `![..](path)`, reference definitions, HTML src/href) names an existing file inside
the repository, and every `#anchor` names a heading of the page it points to, slugged as GitHub
does. Links inside code (fenced blocks and `inline code`) are not links and are skipped, and so
are http(s) and mailto targets.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
EXTERNAL = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)
# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("ALGORITHMS" + ".md", "STYLE" + ".md", "../" + "shared", "/work/" + "shared")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_TARGET = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_TARGET = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def prose_lines(text: str):
    """(line number, line) for every line outside fenced code blocks, fences included as None."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lowercased, without punctuation
    other than '-' and '_', spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)        # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)                               # inline HTML
    parts = _CODE_SPAN.split(text)                                    # [prose, ticks, code, prose, ...]
    rendered = []
    for i, part in enumerate(parts):
        if i % 3 == 0:      # prose: drop emphasis markers (an '_' inside a word is a character)
            part = re.sub(r"(?<!\w)[*_]+|[*_]+(?!\w)", "", part)
            rendered.append(part)
        elif i % 3 == 2:    # code span content, kept as written
            rendered.append(part)
    text = "".join(rendered).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    result = set()
    previous = ""
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        heading = None
        atx = _ATX.match(line)
        if atx:
            heading = atx.group(2) or ""
        elif _SETEXT.match(line) and previous.strip() and not _ATX.match(previous):
            heading = previous.strip()
        if heading is not None:
            slug = github_slug(heading)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            result.add(slug if n == 0 else f"{slug}-{n}")
        previous = line
    return result


def link_targets(path: Path):
    """(line number, target) for every link and image in the prose of a markdown file."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        prose = _CODE_SPAN.sub("", line)
        found = [m.group(1) for m in _INLINE_TARGET.finditer(prose)]
        found += [m.group(1) for m in _REFERENCE_DEF.finditer(prose)]
        found += [m.group(1) for m in _HTML_TARGET.finditer(prose)]
        for target in found:
            yield number, target.strip("<>")


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per link of `path` that does not resolve, naming the line and what is missing."""
    problems = []
    rel = path.relative_to(root)
    for number, target in link_targets(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        file_part, anchor = unquote(file_part), unquote(anchor)
        if file_part:
            base = root if file_part.startswith("/") else path.parent
            resolved = (base / file_part.lstrip("/")).resolve()
            if not resolved.is_relative_to(root):
                problems.append(f"{rel}:{number}: {target} points outside the repository")
                continue
            if not resolved.exists():
                problems.append(f"{rel}:{number}: {target}: no file {resolved.relative_to(root)}")
                continue
        else:
            resolved = path
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{rel}:{number}: {target}: no heading with anchor #{anchor} in "
                            f"{resolved.relative_to(root)} (anchors: {', '.join(sorted(anchors(resolved)))})")
    return problems


# ---------------------------------------------------------------- the checker itself
@pytest.mark.parametrize("heading, slug", [
    ("How the autodiff works (read this first)", "how-the-autodiff-works-read-this-first"),
    ("Train a GPT on your CPU: `make demo`", "train-a-gpt-on-your-cpu-make-demo"),
    ("Zeroth-order optimization: ZO-SGD, MeZO, LoZO (lecture 9)",
     "zeroth-order-optimization-zo-sgd-mezo-lozo-lecture-9"),
    ("Memory and FLOPs: predicted, measured, and the lecture's formulas (`minigrad.memory`)",
     "memory-and-flops-predicted-measured-and-the-lectures-formulas-minigradmemory"),
    ("Optimizers (`optim/`)", "optimizers-optim"),
    ("**Bold** and _emphasis_ with `snake_case`", "bold-and-emphasis-with-snake_case"),
    ("[A link](x.md) in a heading", "a-link-in-a-heading"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_checker_reports_broken_links_and_skips_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.png").write_bytes(b"\x89PNG")
    (tmp_path / "other.md").write_text("# Other page\n\n## Same\n\n## Same\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Section two\n\n"
        "[ok](other.md) [ok](other.md#same-1) [ok](#section-two) ![ok](docs/there.png)\n"
        "[ok](https://example.com/none) [ok](mailto:a@b.c) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n```\n"
        "[bad](missing.md)\n![bad](docs/gone.png)\n[bad](#no-such-heading)\n"
        "[bad](other.md#same-2)\n[bad](../outside.md)\n",
        encoding="utf-8")
    problems = broken_links(page, root=tmp_path)
    assert [p.split(":")[1] for p in problems] == ["10", "11", "12", "13", "14"], problems
    assert "no file docs/gone.png" in problems[1]
    assert "#no-such-heading" in problems[2]
    assert "outside the repository" in problems[4]


# ---------------------------------------------------------------- the repository's pages
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_and_images_resolve(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_pages_exist():
    names = {p.name for p in PAGES if p.parent.name == "docs"}
    assert {"autodiff.md", "training.md", "optimizers.md", "memory.md", "precision.md",
            "zeroth_order.md", "kernels.md"} <= names


def _repository_files():
    """The files git tracks; outside a git checkout (an unpacked archive), every file below the
    root except the virtualenv, caches and run outputs."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        return [n for n in listed.stdout.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "out", "runs", "__pycache__", ".pytest_cache", ".hypothesis", "build"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
                and not p.name.endswith(".egg-info")]


def test_no_file_cites_the_private_course_notes():
    """Cite papers (authors, year, arXiv id) or public repositories, not files outside the repository."""
    hits = []
    for name in _repository_files():
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            hits += [f"{name}:{number}: {word}" for word in FORBIDDEN if word in line]
    assert not hits, "mentions of files outside the repository:\n" + "\n".join(hits)
