"""Rebuild the BEIR files of the labelled sets made from Debian's documentation packages.

``python tests/data/build_labelled_sets.py [NAME]...`` (Debian 12, after ``apt-get install
postgresql-doc-15``, with the man pages of the commands below installed, and Python's HTML
documentation from ``python3.11-doc`` at ``PYTHON_DOC_HTML``). For the PostgreSQL and man-page
sets, ``questions.txt`` is the hand-written source: ``question | answer file | ...``; the
Python FAQ set takes its questions from the FAQ's own headings. This script writes
``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv`` in each set's folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).parent
PG_HTML = Path("/usr/share/doc/postgresql-doc-15/html")
# Pages in the PostgreSQL set besides those that answer a question: a seeded sample of the
# rest of the manual (release notes and the index left out). Pages of more than MAX_WORDS
# (big function tables, ALTER TABLE) are left out, with the questions they answer, so that
# embedding the set stays affordable on a CI machine.
PG_DISTRACTORS = 100
MAX_WORDS = 5000
PY_HTML = Path(os.environ.get("PYTHON_DOC_HTML", "/usr/share/doc/python3.11/html"))
# The Python FAQ set: a question is a FAQ heading that asks one; its answer must say more
# than a word or two. Distractors are sections of these folders of the documentation, of a
# single topic's length (sections under FAQ_MIN_WORDS are mostly a signature or a link list,
# those over FAQ_MAX_WORDS a whole module's reference).
QUESTION_WORDS = {"how", "why", "what", "is", "are", "can", "do", "does", "where", "when"}
QUESTION_WORDS |= {"which", "who", "should", "will", "has", "have"}
FAQ_MIN_ANSWER_WORDS = 15
FAQ_DISTRACTOR_FOLDERS = ("library", "tutorial", "howto")
FAQ_MIN_WORDS = 40
FAQ_MAX_WORDS = 450
COMMANDS = [
    "ls",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "chmod",
    "chown",
    "ln",
    "df",
    "du",
    "find",
    "grep",
    "sed",
    "sort",
    "uniq",
    "cut",
    "tr",
    "head",
    "tail",
    "wc",
    "tar",
    "gzip",
    "xz",
    "curl",
    "ssh",
    "date",
    "touch",
    "cat",
    "split",
    "diff",
    "ps",
    "kill",
    "dd",
    "tee",
    "xargs",
    "env",
    "nl",
    "paste",
    "join",
    "comm",
    "stat",
    "readlink",
    "realpath",
    "mktemp",
    "timeout",
    "nice",
    "less",
    "dmesg",
    "free",
    "top",
    "zip",
    "unzip",
    "wget",
    "bzip2",
    "shred",
    "install",
    "base64",
    "sha256sum",
    "fold",
    "fmt",
    "seq",
    "shuf",
    "numfmt",
    "truncate",
    "journalctl",
    "systemctl",
]


def _norm(text: str) -> str:
    return " ".join(text.split())


class _Html(HTMLParser):
    """DocBook HTML to Markdown-ish text: headings, paragraphs, verbatim <pre>; navigation
    bars and tables of contents dropped."""

    BLOCK: ClassVar[set[str]] = {
        "p",
        "div",
        "pre",
        "li",
        "dt",
        "dd",
        "tr",
        "table",
        "dl",
        "ul",
        "ol",
        "br",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title = ""
        self._skip = 0
        self._divs: list[bool] = []
        self._pre = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "title":
            self._in_title = True
        if tag == "div":
            skip = any(c in classes for c in ("navheader", "navfooter", "toc"))
            self._divs.append(skip)
            self._skip += skip
        if self._skip:
            return
        if tag == "pre":
            self._pre += 1
            self.out.append("\n\n")
        elif tag in ("h1", "h2", "h3", "h4", "h5"):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag == "li":
            self.out.append("\n\n* ")
        elif tag in ("td", "th"):
            self.out.append(" | ")
        elif tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag == "div" and self._divs and self._divs.pop():
            self._skip -= 1
            return
        if self._skip:
            return
        if tag == "pre":
            self._pre -= 1
            self.out.append("\n\n")
        elif tag in self.BLOCK or tag in ("h1", "h2", "h3", "h4", "h5"):
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self._skip:
            self.out.append(data if self._pre else re.sub(r"\s+", " ", data))


def pg_page(path: Path) -> dict[str, str]:
    parser = _Html()
    parser.feed(path.read_text(encoding="utf-8"))
    title = _norm(parser.title)
    blocks = []
    for block in re.split(r"\n\s*\n", "".join(parser.out)):
        if "\n" in block.strip("\n") and not block.startswith("#"):
            block = "\n".join(line.rstrip() for line in block.strip("\n").splitlines())
        else:
            block = block.strip()
        if block.strip():
            blocks.append(block)
    while blocks and blocks[0].lstrip("#").strip() == title:
        blocks = blocks[1:]
    text = f"# {title}\n\n" + "\n\n".join(blocks) + "\n"
    return {"_id": path.stem + ".md", "title": title, "text": text}


def pg_corpus() -> list[dict[str, str]]:
    pages = []
    for path in sorted(PG_HTML.glob("*.html")):
        if path.name.startswith("release-") or path.name in ("index.html", "bookindex.html"):
            continue
        page = pg_page(path)
        if 60 <= len(page["text"].split()) <= MAX_WORDS:  # under 60: a table of contents
            pages.append(page)
    return pages


class _Sphinx(HTMLParser):
    """The main body of a Sphinx HTML page as Markdown-ish text: headings, paragraphs,
    verbatim <pre>; permalinks, local tables of contents and toctrees dropped."""

    BLOCK: ClassVar[set[str]] = {
        "p",
        "div",
        "pre",
        "li",
        "dt",
        "dd",
        "tr",
        "table",
        "dl",
        "ul",
        "ol",
        "section",
        "blockquote",
        "figure",
        "nav",
    }
    SKIP: ClassVar[set[str]] = {"headerlink", "contents", "toctree-wrapper", "sphinxsidebar"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._body = 0  # 1 inside the main body
        self._stack: list[tuple[str, bool]] = []
        self._skip = 0
        self._pre = 0
        self._cell = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("br", "img", "hr", "meta", "link", "input", "wbr"):
            if self._body and not self._skip and tag == "br":
                self.out.append("\n\n")
            return
        if not self._body:
            if tag == "div" and a.get("role") == "main":
                self._body = 1
                self._stack = []
            return
        skip = bool(set((a.get("class") or "").split()) & self.SKIP) or a.get("id") == "contents"
        self._stack.append((tag, skip))
        self._skip += skip
        if self._skip:
            return
        if tag == "pre":
            self._pre += 1
            self.out.append("\n\n")
        elif re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n\x00" + tag[1] + " ")
        elif tag == "li":
            self.out.append("\n\n* ")
        elif tag in ("td", "th"):
            self._cell += 1
            self.out.append(" | ")
        elif tag in self.BLOCK:
            self.out.append(" " if self._cell and tag != "tr" else "\n\n")

    def handle_endtag(self, tag: str) -> None:
        if not self._body:
            return
        if not self._stack:
            self._body = 0  # the main body's own </div>
            return
        # pop up to the matching tag (Sphinx HTML is well formed; be lenient anyway)
        while self._stack:
            open_tag, skip = self._stack.pop()
            self._skip -= skip
            if open_tag == tag:
                break
        if self._skip or skip:
            return
        if tag == "pre":
            self._pre -= 1
            self.out.append("\n\n")
        elif tag in ("td", "th"):
            self._cell -= 1
        elif tag in self.BLOCK and self._cell and tag != "tr":
            self.out.append(" ")
        elif tag in self.BLOCK or re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._body and not self._skip:
            self.out.append(data if self._pre else re.sub(r"\s+", " ", data))


def sphinx_sections(path: Path) -> list[tuple[str, str]]:
    """``(heading, text)`` of each part of a Sphinx page cut before each of its headings."""
    parser = _Sphinx()
    parser.feed(path.read_text(encoding="utf-8"))
    blocks = []
    for block in re.split(r"\n\s*\n", "".join(parser.out)):
        if "\n" in block.strip("\n") and not block.startswith("\x00"):
            block = "\n".join(line.rstrip() for line in block.strip("\n").splitlines())
        else:
            block = block.strip()
        if block.strip() and block.strip() != "*":
            blocks.append(block)
    parts: list[tuple[str, list[str]]] = []
    for block in blocks:
        if block.startswith("\x00"):
            parts.append((_norm(block[2:]), []))
        elif parts:
            parts[-1][1].append(block)
    return [(h, "\n\n".join(b)) for h, b in parts]


def man_options(command: str) -> list[dict[str, str]]:
    """One passage per option of ``command``'s man page: the option line and its text."""
    env = {**os.environ, "MANWIDTH": "200"}
    out = subprocess.run(
        ["man", "--nh", "--nj", "-E", "ascii", command], capture_output=True, text=True, env=env
    ).stdout
    lines = out.splitlines()
    name = next((lines[i + 1].strip() for i, s in enumerate(lines) if s.strip() == "NAME"), "")
    match = re.match(r"\S+(?:, \S+)* +- +(.*)", name)
    what = match.group(1) if match else name
    entries: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            if current is not None:
                current.append("")
        elif 3 <= indent <= 7 and line.lstrip()[0] in "-+":
            current = [line]
            entries.append(current)
        elif indent <= 7:
            current = None
        elif current is not None:
            current.append(line)
    option = r"[-+][^\s,]*(?: [A-Z<\[][^\s,]*)?"
    rows, seen = [], {}
    for entry in entries:
        head = entry[0].strip()
        m = re.match(rf"({option}(?:, *{option})*)( {{2,}}(.*))?$", head)
        flag, first = (m.group(1), [m.group(3)]) if m and m.group(3) else (head, [])
        paragraphs, paragraph = [], []
        for line in first + entry[1:]:
            if line.strip():
                paragraph.append(_norm(line))
            elif paragraph:
                paragraphs.append(" ".join(paragraph))
                paragraph = []
        if paragraph:
            paragraphs.append(" ".join(paragraph))
        if not paragraphs:
            continue
        key = re.sub(r"\W+", "_", flag.split(",")[0].split("=")[0].split()[0]).strip("_")
        n = seen[key] = seen.get(key, -1) + 1
        title = f"{command} {flag}"
        text = f"# {title}\n\n{command} - {what}\n\n" + "\n\n".join(paragraphs) + "\n"
        rows.append(
            {"_id": f"{command}-{key}{f'-{n}' if n else ''}.md", "title": title, "text": text}
        )
    return rows


def _sentence(text: str, phrase: str) -> str:
    """The sentence(s) of ``text``'s paragraph (whitespace collapsed) that hold ``phrase``."""
    want = _norm(phrase)
    flat = next(p for p in map(_norm, re.split(r"\n\s*\n", text)) if want in p)
    at = flat.index(want)
    ends = [flat.rfind(". ", 0, at) + 2, flat.rfind(".) ", 0, at) + 3]
    start = max([e for e in ends if e > 2] or [0])
    end = flat.find(". ", at + len(want))
    return flat[start : end + 1 if end >= 0 else len(flat)].strip()


def write_set(
    folder: Path, corpus: list[dict[str, str]], questions: list[dict[str, object]]
) -> None:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as fh:
        for doc in corpus:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w") as fh, (folder / "qrels/test.tsv").open("w") as qr:
        qr.write("query-id\tcorpus-id\tscore\n")
        for q in questions:
            row = {k: q[k] for k in ("_id", "text", "answer_file", "answer_passage")}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            for doc in sorted(q["relevant"]):  # type: ignore[call-overload]
                qr.write(f"{q['_id']}\t{doc}\t1\n")


def _questions(folder: Path) -> list[list[str]]:
    lines = (folder / "questions.txt").read_text().splitlines()
    return [[p.strip() for p in line.split(" | ")] for line in lines if line.strip()]


def build_postgresql(folder: Path = HERE / "postgresql-manual-qa") -> None:
    pages = {p["_id"]: p for p in pg_corpus()}
    questions = []
    for i, (text, answer, phrase, *others) in enumerate(_questions(folder), 1):
        if not all(d in pages for d in (answer, *others)):
            continue
        passage = _sentence(pages[answer]["text"], phrase)
        same = {d for d, p in pages.items() if passage in _norm(p["text"])}
        relevant = {answer, *others} | same
        questions.append(
            {
                "_id": f"q{i:03d}",
                "text": text,
                "answer_file": answer,
                "answer_passage": passage,
                "relevant": relevant,
            }
        )
    needed = set().union(*(q["relevant"] for q in questions))  # type: ignore[arg-type]
    rest = sorted(set(pages) - needed)
    chosen = needed | set(random.Random(26).sample(rest, PG_DISTRACTORS))
    write_set(folder, [pages[d] for d in sorted(chosen)], questions)


def build_manpages(folder: Path = HERE / "manpage-options-qa") -> None:
    corpus = [row for command in COMMANDS for row in man_options(command)]
    docs = {d["_id"]: d for d in corpus}
    questions = []
    for i, (text, answer, *others) in enumerate(_questions(folder), 1):
        passage = _norm(docs[answer]["text"].split("\n\n", 2)[2])
        questions.append(
            {
                "_id": f"q{i:03d}",
                "text": text,
                "answer_file": answer,
                "answer_passage": passage,
                "relevant": {answer, *others},
            }
        )
    write_set(folder, corpus, questions)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60].rstrip("-")


def build_python_faq(folder: Path = HERE / "python-faq-qa") -> None:
    """Questions: the FAQ's headings that ask one, as written; relevant: the answer under the
    heading, without the heading. Passages: every FAQ answer and sections of the library
    reference, tutorial and HOWTOs cut at their headings, all without their heading."""
    corpus: dict[str, dict[str, str]] = {}

    def add(page: str, heading: str, text: str) -> str:
        stem = f"{page}-{_slug(heading) or 'top'}"
        doc, n = f"{stem}.md", 0
        while doc in corpus:  # two headings of a page with the same words
            n += 1
            doc = f"{stem}-{n}.md"
        corpus[doc] = {"_id": doc, "title": "", "text": text + "\n"}
        return doc

    questions: list[dict[str, object]] = []
    for path in sorted((PY_HTML / "faq").glob("*.html")):
        if path.name == "index.html":
            continue
        for heading, text in sphinx_sections(path):
            if len(text.split()) < 5:  # a chapter's heading, or a page title
                continue
            doc = add(f"faq-{path.stem}", heading, text)
            asks = "?" in heading or heading.split()[0].lower() in QUESTION_WORDS
            if asks and len(text.split()) >= FAQ_MIN_ANSWER_WORDS:
                questions.append(
                    {
                        "_id": f"q{len(questions) + 1:03d}",
                        "text": heading,
                        "answer_file": doc,
                        "answer_passage": _norm(text.split("\n\n")[0]),
                        "relevant": {doc},
                    }
                )
    for sub in FAQ_DISTRACTOR_FOLDERS:
        for path in sorted((PY_HTML / sub).glob("*.html")):
            for heading, text in sphinx_sections(path):
                if FAQ_MIN_WORDS <= len(text.split()) <= FAQ_MAX_WORDS:
                    add(f"{sub}-{path.stem}", heading, text)
    write_set(folder, list(corpus.values()), questions)


if __name__ == "__main__":
    builders = {
        "postgresql-manual-qa": build_postgresql,
        "manpage-options-qa": build_manpages,
        "python-faq-qa": build_python_faq,
    }
    for name in sys.argv[1:] or builders:
        builders[name]()
