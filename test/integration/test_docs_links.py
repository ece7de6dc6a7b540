"""The documentation links only inside the repository: every link in README.md, docs/*.md and
bench/*.md must name a file or folder of the repository that exists (relative links are resolved
from the linking file's folder). http(s) and mailto links are allowed and not fetched. No server is
started."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# [text](target "title"), ![alt](target): the target up to whitespace or ')'; <target> form too.
INLINE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+[\"'(][^)]*)?\s*\)")
# [label]: target   (reference definitions)
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
# <scheme:...> autolinks and HTML href/src attributes
AUTOLINK = re.compile(r"<((?:[a-zA-Z][a-zA-Z0-9+.-]*:)[^>\s]*)>")
HTML = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")

ALLOWED_SCHEMES = ("http://", "https://", "mailto:")


def markdown_files():
    files = [os.path.join(ROOT, "README.md")]
    for pattern in ("docs/**/*.md", "bench/**/*.md"):
        files += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    return sorted(f for f in set(files) if os.path.isfile(f))


def links(text):
    """Link targets of a markdown text, outside code blocks and code spans."""
    text = FENCE.sub("", text)
    # Indented code blocks (4 spaces after a blank line) hold commands, not links.
    text = re.sub(r"(?:^|\n\n)((?: {4}|\t)[^\n]*(?:\n(?: {4}|\t)[^\n]*)*)", "\n\n", text)
    text = CODE.sub("", text)
    found = []
    for rx in (INLINE, REFDEF, AUTOLINK, HTML):
        for m in rx.finditer(text):
            t = m.group(1).strip()
            if t.startswith("<") and t.endswith(">"):
                t = t[1:-1]
            found.append(t)
    return found


def problem(md, target):
    """Why target (a link in file md) is not acceptable, or None."""
    low = target.lower()
    if low.startswith(ALLOWED_SCHEMES):
        return None
    if re.match(r"^[a-z][a-z0-9+.-]*:", low):
        return "scheme other than http(s)/mailto"
    path = target.split("#", 1)[0].split("?", 1)[0]
    if path == "":
        return None  # an anchor in the same file
    if path.startswith("/") or path.startswith("~"):
        return "absolute path"
    resolved = os.path.normpath(os.path.join(os.path.dirname(md), path))
    if os.path.commonpath([resolved, ROOT]) != ROOT:
        return "outside the repository"
    if not os.path.exists(resolved):
        return "no such file"
    return None


def test_markdown_files_found():
    files = [os.path.relpath(f, ROOT) for f in markdown_files()]
    assert "README.md" in files
    assert any(f.startswith("docs" + os.sep) for f in files)


@pytest.mark.parametrize("md", markdown_files(), ids=lambda f: os.path.relpath(f, ROOT))
def test_links_stay_in_repository(md):
    with open(md, encoding="utf-8") as f:
        text = f.read()
    bad = []
    for target in links(text):
        why = problem(md, target)
        if why:
            bad.append(f"{target}: {why}")
    assert not bad, f"{os.path.relpath(md, ROOT)}: " + "; ".join(bad)


def test_checker_catches_bad_links():
    md = os.path.join(ROOT, "README.md")
    sample = (
        "[a](../shared/CONTRACT.md) [b](/work/x.md) [c](docs/nope.md) [d](docs/api.md#x) "
        "[e](https://example.com/) [f](#top) <https://example.org>\n\n[g]: ../outside.md\n"
        "`[h](../in-code-span.md)`\n\n```\n[i](../in-fence.md)\n```\n"
    )
    got = {t: problem(md, t) for t in links(sample)}
    assert got["../shared/CONTRACT.md"] == "outside the repository"
    assert got["/work/x.md"] == "absolute path"
    assert got["docs/nope.md"] == "no such file"
    assert got["../outside.md"] == "outside the repository"
    assert got["docs/api.md#x"] is None
    assert got["https://example.com/"] is None
    assert got["#top"] is None
    assert got["https://example.org"] is None
    assert "../in-code-span.md" not in got and "../in-fence.md" not in got
