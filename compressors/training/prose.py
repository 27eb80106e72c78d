"""More offline prose for training: openly licensed English documentation.

`corpus.py` gives the 49 Paul Graham essays (about 112,000 words). This
module adds manuals and books that Debian ships in its `main` archive, each
fetched as one pinned .deb with `apt-get download <package>=<version>` into
`<cache dir>/downloads/`, checked against its sha256, and read in place (the
.deb is an ar archive holding data.tar.xz; Python's tarfile reads it):

- postgresql: the PostgreSQL 15 manual (tutorial, concepts, administration,
  internals, SQL command pages), PostgreSQL licence (permissive).
- git: Git's documentation (command pages, the user manual, how-tos,
  technical notes), GPL-2.
- rust: the Rust project's books (The Rust Programming Language, the
  Reference, the Rustonomicon, Rust by Example, the edition guide, the
  embedded book, the rustc and rustdoc books), MIT or Apache-2.0. The API
  docs (std, core, ...) and the unstable book are left out.

Only English running text is kept: paragraphs and list items of the HTML
pages; headings, navigation, tables of contents, code and program listings,
tables, synopses and footers are dropped, and so is every paragraph that does
not read as prose (few words, many markup characters, no sentence end).
Paragraphs that repeat in many pages of a source (boilerplate) are dropped,
and pages left with under 150 words.

segpress does not redistribute the text, only weights trained on it. The
split is by document with a fixed hashed order, per source, so that dev and
test each hold about 5% of every source's words.

Not used, on purpose: Debian's own documentation packages (debian-handbook,
debian-reference*, debian-faq, developers-reference) and Python's
documentation (python3*-doc), which an independent evaluation keeps.
"""

import hashlib
import html
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

SOURCES = [
    {
        "name": "postgresql",
        "package": "postgresql-doc-15",
        "version": "15.20-0+deb12u1",
        "fetch": "apt-get download postgresql-doc-15=15.20-0+deb12u1 (Debian 12 bookworm-security, main)",
        "file": "postgresql-doc-15_15.20-0+deb12u1_all.deb",
        "sha256": "4c44bf2c599f208b3f46454a6cf7a72e25ec46ff74d37b59dd31ad76b00eebb7",
        "licence": "PostgreSQL Licence (permissive, BSD/MIT-like); "
                   "Copyright PostgreSQL Global Development Group, Regents of the University of California",
        "contents": "The PostgreSQL 15 manual as HTML: tutorial, SQL language, administration, "
                    "client interfaces, internals, reference pages, release notes",
        "root": "usr/share/doc/postgresql-doc-15/html/",
    },
    {
        "name": "git",
        "package": "git-doc",
        "version": "1:2.39.5-0+deb12u3",
        "fetch": "apt-get download git-doc=1:2.39.5-0+deb12u3 (Debian 12 bookworm, main)",
        "file": "git-doc_1%3a2.39.5-0+deb12u3_all.deb",
        "sha256": "3c89668a11053a6bafade3de1f611f4613db31e082af63f43d8c5b69ad8795ec",
        "licence": "GPL-2 (Git's Documentation/, Copyright Linus Torvalds and others)",
        "contents": "Git 2.39 documentation as HTML: command manual pages, the Git user manual, "
                    "tutorials, how-tos and technical notes",
        "root": "usr/share/doc/git-doc/",
    },
    {
        "name": "rust",
        "package": "rust-doc",
        "version": "1.63.0+dfsg1-2",
        "fetch": "apt-get download rust-doc=1.63.0+dfsg1-2 (Debian 12 bookworm, main)",
        "file": "rust-doc_1.63.0+dfsg1-2_all.deb",
        "sha256": "96ef96fe6df87d939ca713bd7df3d15c2b778ccb892eca025c4ee504146f697b",
        "licence": "MIT or Apache-2.0 (rust src/doc/*, Copyright The Rust Project Developers)",
        "contents": "The Rust 1.63 books as HTML (mdBook): The Rust Programming Language, the Rust "
                    "Reference, the Rustonomicon, Rust by Example, the Edition Guide, the Embedded "
                    "Rust book, the rustc and rustdoc books",
        "root": "usr/share/doc/rust-doc/html/",
        "books": ["book", "reference", "nomicon", "rust-by-example", "edition-guide",
                  "embedded-book", "rustc", "rustdoc"],
    },
]

# An independent evaluation uses these; this module must never fetch them.
FORBIDDEN_PACKAGES = ("debian-handbook", "debian-reference", "debian-faq", "developers-reference",
                      "python3-doc", "python3.")

PROVENANCE = {
    "sources": [
        {"source": f"Debian package {s['package']} {s['version']} ({s['file']}, sha256 {s['sha256']})",
         "licence": s["licence"], "contents": s["contents"]}
        for s in SOURCES
    ],
    "licence": "PostgreSQL Licence (postgresql-doc-15), GPL-2 (git-doc), MIT or Apache-2.0 (rust-doc); "
               "all in Debian main; segpress does not redistribute the text, only weights trained on it",
}

MIN_WORDS = 150          # a page with fewer words of prose is dropped
HELD_OUT_SHARE = 0.05    # of each source's words, for dev and for test each
MIN_HELD_OUT_DOCS = 3    # documents of each source in dev and in test, at least
BOILERPLATE_PAGES = 5    # a paragraph found on this many pages of a source is boilerplate


# -- downloads ----------------------------------------------------------------


class ProseError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def deb_path(cache_dir: str | Path, source: dict) -> Path:
    """The source's pinned .deb, downloaded once into `<cache_dir>/downloads/`."""
    folder = Path(cache_dir) / "downloads"
    deb = folder / source["file"]
    if not deb.exists():
        folder.mkdir(parents=True, exist_ok=True)
        spec = f"{source['package']}={source['version']}"
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            cmd = ["apt-get", "download", spec]
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            got = list(Path(tmp).glob("*.deb"))
            if done.returncode != 0 or len(got) != 1:
                raise ProseError(f"could not download {spec} ({' '.join(cmd)}):\n{done.stderr.strip()}\n"
                                 f"Run `apt-get update` first (a superseded version leaves the archive: then pin the "
                                 f"current one and its sha256 in SOURCES), or put {source['file']} into {folder}.")
            got[0].replace(deb)
    if _sha256(deb) != source["sha256"]:
        raise ProseError(f"{deb} is not the expected {source['file']} (sha256 differs); delete it")
    return deb


def _deb_data(deb: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive), opened for reading."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ProseError(f"{deb} is not a .deb (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise ProseError(f"{deb} has no data.tar member")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            body = f.read(size)
            if size % 2:
                f.read(1)
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")


def _pages(deb: Path, keep) -> dict[str, str]:
    """{path: HTML text} of the .deb's regular files whose path `keep` accepts."""
    out = {}
    with _deb_data(deb) as tar:
        for member in tar:
            path = member.name.removeprefix("./")
            if member.isfile() and keep(path):
                out[path] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    return out


# -- HTML to prose ------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Elements whose whole content is dropped.
SKIP_TAGS = {"head", "script", "style", "pre", "table", "nav", "h1", "h2", "h3", "h4", "h5", "h6",
             "dt", "sup", "svg", "button", "form", "math", "header", "footer", "figure", "caption",
             "kbd", "samp"}
SKIP_CLASSES = {"navheader", "navfooter", "toc", "refsynopsisdiv", "listingblock", "literalblock",
                "titlepage", "menu-bar", "sidebar", "searchresults-outer", "search-wrapper",
                "screen", "programlisting", "synopsis", "cmdsynopsis", "funcsynopsis", "verseblock",
                "table", "informaltable", "footnotes", "mobile-nav-chapters", "nav-wrapper",
                "nav-wide-wrapper", "index", "indexdiv", "chapter-toc", "sect-toc"}
SKIP_IDS = {"header", "footer", "footnotes", "sidebar", "menu-bar", "toc"}
# Elements that hold running text; text is only taken inside one of them.
TEXT_TAGS = {"p", "li", "dd", "blockquote"}
BLOCK_TAGS = TEXT_TAGS | {"div", "ul", "ol", "dl", "section", "article", "main", "body", "br", "hr",
                          "tr", "td", "th"}


class _Paragraphs(HTMLParser):
    """Collects the text of p/li/dd/blockquote outside skipped elements, one string per block."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buf: list[str] = []
        self._skip_depth = 0   # > 0 while inside a skipped element
        self._text_depth = 0   # > 0 while inside a text element

    def _flush(self):
        text = " ".join("".join(self._buf).split())
        if text:
            self.paragraphs.append(text)
        self._buf = []

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            if tag in ("br", "hr"):
                self._flush()
            return
        if self._skip_depth:
            self._skip_depth += 1
            return
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if tag in SKIP_TAGS or classes & SKIP_CLASSES or attrs.get("id") in SKIP_IDS:
            self._flush()
            self._skip_depth = 1
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in TEXT_TAGS:
            self._text_depth += 1

    def handle_startendtag(self, tag, attrs):
        if tag in ("br", "hr") and not self._skip_depth:
            self._flush()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if self._skip_depth:
            self._skip_depth -= 1
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in TEXT_TAGS and self._text_depth:
            self._text_depth -= 1

    def handle_data(self, data):
        if self._text_depth and not self._skip_depth:
            self._buf.append(data)

    def close(self):
        super().close()
        self._flush()


MARKUP = set("<>{}[]\\|=;$#`^~@*")
SENTENCE_END = re.compile(r"""[.!?:]['")\]]*$""")


def is_prose(paragraph: str) -> bool:
    """A paragraph that reads as English running text."""
    words = paragraph.split()
    if len(words) < 6:
        return False
    if sum(c in MARKUP for c in paragraph) > 0.015 * len(paragraph):
        return False
    wordy = sum(bool(re.fullmatch(r"[(\"']*[A-Za-z][a-z'’-]*[.,;:!?)\"']*", w)) for w in words)
    if wordy < 0.75 * len(words):
        return False
    return bool(SENTENCE_END.search(paragraph)) or len(words) >= 25


def html_paragraphs(page: str) -> list[str]:
    """The prose paragraphs of one HTML page, in order."""
    parser = _Paragraphs()
    parser.feed(page)
    parser.close()
    return [html.unescape(p) for p in parser.paragraphs if is_prose(p)]


# -- the sources --------------------------------------------------------------


def _keep(source: dict):
    root = source["root"]
    if source["name"] == "postgresql":
        return lambda p: p.startswith(root) and p.endswith(".html") and "/" not in p[len(root):]
    if source["name"] == "git":
        return lambda p: p.startswith(root) and p.endswith(".html")
    if source["name"] == "rust":
        books = tuple(root + b + "/" for b in source["books"])
        # print.html is each book again in one page; 2018-edition/... are redirect stubs.
        return lambda p: (p.startswith(books) and p.endswith(".html")
                          and Path(p).name not in ("print.html", "toc.html", "404.html")
                          and not re.search(r"/(2018-edition|first-edition|second-edition)/", p))
    raise ValueError(source["name"])


def _name(source: dict, path: str) -> str:
    return source["name"] + "/" + path[len(source["root"]):].removesuffix(".html")


def _source_documents(cache_dir: str | Path, source: dict) -> dict[str, str]:
    pages = _pages(deb_path(cache_dir, source), _keep(source))
    paragraphs = {_name(source, path): html_paragraphs(page) for path, page in sorted(pages.items())}
    seen: dict[str, int] = {}
    for paras in paragraphs.values():
        for p in set(paras):
            seen[p] = seen.get(p, 0) + 1
    out, texts = {}, set()
    for name, paras in paragraphs.items():
        text = "\n\n".join(p for p in paras if seen[p] < BOILERPLATE_PAGES)
        if len(text.split()) >= MIN_WORDS and text not in texts:
            out[name] = text
            texts.add(text)
    return out


def _cache_key() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for s in SOURCES:
        h.update(s["sha256"].encode())
    return h.hexdigest()[:16]


def documents(cache_dir: str | Path) -> dict[str, str]:
    """Every document of every source, "source/page" -> cleaned text (paragraphs
    separated by blank lines). Parsed once and kept in `<cache_dir>/prose/`."""
    for s in SOURCES:
        if s["package"].startswith(FORBIDDEN_PACKAGES):
            raise ProseError(f"{s['package']} is reserved for evaluation")
    cached = Path(cache_dir) / "prose" / f"documents-{_cache_key()}.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))
    docs = {}
    for source in SOURCES:
        docs.update(_source_documents(cache_dir, source))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    tmp.replace(cached)
    return docs


def source_of(name: str) -> str:
    return name.split("/", 1)[0]


def split(cache_dir: str | Path) -> dict[str, dict[str, str]]:
    """{"train"|"dev"|"test": {name: text}}, by document. Within each source,
    documents in the order of sha256(name) fill test, then dev, each up to
    HELD_OUT_SHARE of the source's words (a document that would overshoot
    that by more than a fifth goes on to the next part); the rest is train."""
    docs = documents(cache_dir)
    parts = {"train": {}, "dev": {}, "test": {}}
    for source in SOURCES:
        names = [n for n in docs if source_of(n) == source["name"]]
        total = sum(len(docs[n].split()) for n in names)
        target = HELD_OUT_SHARE * total
        words = {"test": 0, "dev": 0}
        count = {"test": 0, "dev": 0}
        for name in sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest()):
            w = len(docs[name].split())
            part = "train"
            for held in ("test", "dev"):
                short = words[held] < target or count[held] < MIN_HELD_OUT_DOCS
                if short and words[held] + w <= 1.2 * target:
                    part = held
                    break
            if part != "train":
                words[part] += w
                count[part] += 1
            parts[part][name] = docs[name]
    return parts


def summary(parts: dict[str, dict[str, str]]) -> str:
    lines = [f"{'source':<12}" + "".join(f"{p:>22}" for p in ("train", "dev", "test"))]
    for source in [s["name"] for s in SOURCES] + ["all"]:
        row = f"{source:<12}"
        for p in ("train", "dev", "test"):
            texts = [t for n, t in parts[p].items() if source == "all" or source_of(n) == source]
            row += f"{len(texts):>8} docs {sum(len(t.split()) for t in texts):>8} w"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m compressors.training.prose CACHE_DIR")
    print(summary(split(sys.argv[1])))
