"""Knowledge-graph files: TSV triple splits, text mentions, the NTP Countries layout, and the
Nations/UMLS/Kinships splits bundled inside the ``pykeen`` package (read, never imported).

Every loader returns plain Python/NumPy data; malformed lines raise ``ValueError`` naming the file
and the 1-based line number.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

__all__ = [
    "load_triples",
    "read_text_lines",
    "load_mentions",
    "load_nl_facts",
    "load_countries",
    "countries_leaks",
    "pykeen_dataset_dir",
    "load_pykeen_dataset",
    "PYKEEN_DATASETS",
]

PYKEEN_DATASETS = ("nations", "umls", "kinships")
_NL_RE = re.compile(r"^\s*([^\s(),]+)\s*\(\s*([^\s(),]+)\s*,\s*([^\s(),]+)\s*\)\s*\.\s*$")


def read_text_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (a leading byte-order mark is dropped).

    Raises ``FileNotFoundError`` naming the path, and ``ValueError`` naming the path, the 1-based
    line and the byte offset of the first byte that is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {str(path)!r}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line}: not UTF-8 (byte {data[e.start : e.start + 1]!r} at offset "
            f"{e.start}: {e.reason})"
        ) from None
    return text.splitlines()


_read_lines = read_text_lines


def load_triples(path: str | Path) -> list[tuple[str, str, str]]:
    """Reads ``s<TAB>p<TAB>o`` lines (blank lines skipped) -> list of ``(s, p, o)``.

    A file without any triple raises ``ValueError`` naming it (an empty split is a broken
    download, not a data set)."""
    out = []
    for i, ln in enumerate(_read_lines(path), 1):
        if not ln.strip():
            continue
        parts = ln.rstrip("\n\r").split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(
                f"{path}: line {i}: expected 3 tab-separated fields 's<TAB>p<TAB>o', got {ln!r}"
            )
        out.append(tuple(p.strip() for p in parts))
    if not out:
        raise ValueError(f"{path}: no triples (the file is empty or only blank lines)")
    return out  # type: ignore[return-value]


def load_mentions(path: str | Path, *, min_count: int = 1) -> list[tuple[str, str, str]]:
    """Text mentions (GNTP Sec. 4) -> ``(s, pattern, o)`` with a whitespace-separated pattern.

    Two line layouts (blank lines skipped):

    * the GNTP code's mention files, 4 tab-separated columns ``s<TAB>pattern<TAB>o<TAB>count``
      with ``:``-separated pattern tokens, e.g.
      ``vietnam<TAB>[XXX]:is:a:neighbor:of:[YYY]<TAB>cambodia<TAB>1``; the tokens are
      returned joined by spaces (``"[XXX] is a neighbor of [YYY]"``, ``[XXX]``/``[YYY]`` marking
      the subject/object slots stay tokens, as in the reference), and mentions seen fewer than
      ``min_count`` times are dropped (the reference's ``--mentions-min``, default 1);
    * 3 columns ``s<TAB>surface pattern<TAB>o`` (whitespace-separated tokens, count 1).

    Malformed lines raise ``ValueError`` naming the file and the 1-based line.
    """
    if min_count < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count}")
    out = []
    for i, ln in enumerate(_read_lines(path), 1):
        if not ln.strip():
            continue
        parts = [p.strip() for p in ln.rstrip("\n\r").split("\t")]
        if len(parts) not in (3, 4) or not all(parts):
            raise ValueError(
                f"{path}: line {i}: expected 's<TAB>pattern<TAB>o<TAB>count' (or 3 columns "
                f"without the count), got {ln!r}"
            )
        s, pattern, o = parts[:3]
        count = 1
        if len(parts) == 4:
            if not re.fullmatch(r"\d+", parts[3]):
                raise ValueError(
                    f"{path}: line {i}: count must be an integer >= 0, got {parts[3]!r}"
                )
            count = int(parts[3])
            tokens = pattern.split(":")
            if not all(t.strip() for t in tokens):
                raise ValueError(
                    f"{path}: line {i}: empty token in ':'-separated pattern {pattern!r}"
                )
            pattern = " ".join(t.strip() for t in tokens)
        if count >= min_count:
            out.append((s, pattern, o))
    if not out:
        raise ValueError(f"{path}: no mentions with count >= {min_count}")
    return out


def load_nl_facts(path: str | Path) -> list[tuple[str, str, str]]:
    """NTP ``.nl`` facts ``p(s, o).`` (one per line, ``%`` comments) -> ``(s, p, o)``."""
    out = []
    for i, ln in enumerate(_read_lines(path), 1):
        if not ln.strip() or ln.strip().startswith("%"):
            continue
        m = _NL_RE.match(ln)
        if m is None:
            raise ValueError(f"{path}: line {i}: expected a binary fact 'p(s, o).', got {ln!r}")
        out.append((m.group(2), m.group(1), m.group(3)))
    if not out:
        raise ValueError(f"{path}: no facts 'p(s, o).' (the file is empty or only comments)")
    return out


def _read_names(path: Path) -> list[str]:
    names = [ln.strip() for ln in _read_lines(path) if ln.strip()]
    if not names:
        raise ValueError(f"{path}: no names (the file is empty)")
    return names


_HIDDEN = {
    "S1": "locatedIn(c, region) must be absent for every test country c",
    "S2": "locatedIn(c, _) (region and subregion) must be absent for every test country c",
    "S3": "locatedIn(c, _) must be absent for every test country c, and locatedIn(n, region) "
    "for every n with neighborOf(c, n)",
}


def countries_leaks(
    train: list[tuple[str, str, str]],
    full: list[tuple[str, str, str]],
    test: list[str],
    regions: list[str],
    variant: str,
) -> list[tuple[str, str, str]]:
    """Training facts that the Countries split ``variant`` must hide (Nickel et al. 2016, as in
    NTP Sec. 5.1): ``locatedIn(c, region)`` of a test country ``c`` (S1); also its subregion,
    i.e. any ``locatedIn(c, _)`` (S2); also ``locatedIn(n, region)`` of each neighbour ``n`` of a
    test country (S3), where the neighbours are ``{n : neighborOf(c, n)}`` in ``full`` as written
    (the canonical ``countries.nl`` is not symmetric: ``neighborOf(palestine, jordan)`` without
    ``neighborOf(jordan, palestine)``, and ``countries_S3.nl`` keeps ``locatedIn(palestine, asia)``).

    Dev countries are not held out by the definition: the canonical files keep the region fact of
    some of them, so they are not checked.
    """
    test_set, region_set = set(test), set(regions)
    hide = {(s, o) for s, p, o in full if p == "locatedIn" and s in test_set and o in region_set}
    if variant in ("S2", "S3"):
        hide |= {(s, o) for s, p, o in full if p == "locatedIn" and s in test_set}
    if variant == "S3":
        near = {o for s, p, o in full if p == "neighborOf" and s in test_set}
        hide |= {(s, o) for s, p, o in full if p == "locatedIn" and s in near and o in region_set}
    return [(s, p, o) for s, p, o in train if p == "locatedIn" and (s, o) in hide]


def load_countries(
    data_dir: str | Path, variant: str = "S1", *, train_path: str | Path | None = None
) -> dict:
    """The NTP Countries layout (Bouchard et al. 2015; NTP Sec. 5.1).

    ``data_dir`` holds ``countries_{variant}.nl`` (training facts ``locatedIn``/``neighborOf``),
    ``countries_{variant}.nlt`` (templates; optional), ``countries.nl`` (the full KB, giving the
    test countries' true regions), ``regions.txt``, ``dev.txt`` and ``test.txt`` (country names).
    ``train_path`` (a ``s<TAB>p<TAB>o`` file, e.g. the GNTP code's
    ``countries_{variant}_kept.tsv`` of its text-mention setting, where some training facts are
    replaced by mentions) replaces ``countries_{variant}.nl`` as the training facts and is checked
    the same way.

    Returns a dict with ``train`` (triples), ``templates_path`` (or ``None``), ``regions``,
    ``dev``/``test`` (country lists) and ``dev_labels``/``test_labels`` (country -> set of true
    regions among ``regions``). A training fact that the split must hide
    (:func:`countries_leaks`) raises ``ValueError`` naming it; the canonical S1-S3 files pass.
    """
    d = Path(data_dir)
    if variant not in ("S1", "S2", "S3"):
        raise ValueError(f"variant must be 'S1', 'S2' or 'S3', got {variant!r}")
    if not d.is_dir():
        raise FileNotFoundError(f"Countries directory not found: {str(d)!r}")
    train_file = Path(train_path) if train_path else d / f"countries_{variant}.nl"
    train = load_triples(train_file) if train_path else load_nl_facts(train_file)
    regions = _read_names(d / "regions.txt")
    dev = _read_names(d / "dev.txt")
    test = _read_names(d / "test.txt")
    full = load_nl_facts(d / "countries.nl")
    region_set = set(regions)
    gold: dict[str, set[str]] = {}
    for s, p, o in full:
        if p == "locatedIn" and o in region_set:
            gold.setdefault(s, set()).add(o)
    for c in dev + test:
        if c not in gold:
            raise ValueError(f"country {c!r} has no locatedIn(_, region) fact in countries.nl")
    leaked = countries_leaks(train, full, test, regions, variant)
    if leaked:
        s, p, o = leaked[0]
        raise ValueError(
            f"{train_file}: training fact {p}({s}, {o}) breaks the {variant} "
            f"split ({len(leaked)} such fact(s)): {_HIDDEN[variant]}"
        )
    tpl = d / f"countries_{variant}.nlt"
    return {
        "train": train,
        "templates_path": str(tpl) if tpl.is_file() else None,
        "regions": regions,
        "dev": dev,
        "test": test,
        "dev_labels": {c: gold[c] for c in dev},
        "test_labels": {c: gold[c] for c in test},
    }


def pykeen_dataset_dir(name: str) -> Path:
    """Directory of pykeen's bundled ``{train,valid,test}.txt`` for ``name``, without importing
    pykeen (found with ``importlib.util.find_spec``)."""
    if name not in PYKEEN_DATASETS:
        raise ValueError(f"dataset must be one of {PYKEEN_DATASETS}, got {name!r}")
    spec = importlib.util.find_spec("pykeen")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package 'pykeen' not found; install it with `pip install --no-deps pykeen`"
        )
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "datasets" / name
        if (d / "train.txt").is_file():
            return d
    raise FileNotFoundError(f"pykeen is installed but has no datasets/{name}/train.txt")


def load_pykeen_dataset(name: str) -> dict[str, list[tuple[str, str, str]]]:
    """``{"train", "valid", "test"}`` triple lists of Nations, UMLS or Kinships."""
    d = pykeen_dataset_dir(name)
    return {split: load_triples(d / f"{split}.txt") for split in ("train", "valid", "test")}
