"""Rule templates: parsing the NTP ``.nlt`` format and the GNTP clause format.

A rule template is a function-free Horn clause over binary atoms whose predicates are placeholders,
instantiated ``count`` times with learnable predicate embeddings (Rocktaschel & Riedel 2017, Sec. 4;
Minervini et al. 2020, Sec. 3):

* NTP ``.nlt`` (one template per clause, may span lines, ends with ``.``)::

      20  #1(X, Y) :- #2(X, Z), #3(Z, Y).

* GNTP clause format (one per line, weight ``<count>`` at the end, default 1)::

      p(X, Y) :- q(X, Z), r(Z, Y)  <20>

Placeholders with the same name inside one clause share their embedding (``#1(X,Y) :- #1(Y,X)`` is
a symmetry template). Variables are upper-case identifiers; only binary atoms are supported.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

__all__ = [
    "Atom",
    "Template",
    "parse_templates",
    "load_templates",
    "format_template",
    "is_variable",
]

_ATOM_RE = re.compile(r"\s*(#?[A-Za-z0-9_./']+)\s*\(\s*([^()]*?)\s*\)\s*")
_NLT_RE = re.compile(r"^\s*(\d+)\s+(.*?)\s*\.\s*$", re.S)
_CLAUSE_RE = re.compile(r"^\s*(.*?)\s*(?:<\s*(\d+)\s*>)?\s*\.?\s*$", re.S)
_VAR_RE = re.compile(r"^[A-Z][A-Za-z0-9_]*$")


def is_variable(term: str) -> bool:
    """True for logic variables (identifiers starting with an upper-case letter)."""
    return bool(_VAR_RE.match(term))


@dataclasses.dataclass(frozen=True)
class Atom:
    """A binary atom ``predicate(arg0, arg1)``; predicate is a placeholder name."""

    predicate: str
    args: tuple[str, str]

    def __str__(self) -> str:
        return f"{self.predicate}({self.args[0]}, {self.args[1]})"


@dataclasses.dataclass(frozen=True)
class Template:
    """A rule template ``head :- body`` to be instantiated ``count`` times.

    Attributes:
      head: the head atom.
      body: the body atoms (non-empty).
      count: number of instantiations (rules with their own predicate embeddings).
      predicates: distinct placeholder names in order of appearance; slot ``i`` of the learnable
        ``(count, len(predicates), dim)`` embedding array belongs to ``predicates[i]``.
    """

    head: Atom
    body: tuple[Atom, ...]
    count: int = 1

    @property
    def atoms(self) -> tuple[Atom, ...]:
        return (self.head, *self.body)

    @property
    def predicates(self) -> tuple[str, ...]:
        seen: list[str] = []
        for a in self.atoms:
            if a.predicate not in seen:
                seen.append(a.predicate)
        return tuple(seen)

    def slot(self, atom: Atom) -> int:
        return self.predicates.index(atom.predicate)

    @property
    def variables(self) -> tuple[str, ...]:
        seen: list[str] = []
        for a in self.atoms:
            for t in a.args:
                if t not in seen:
                    seen.append(t)
        return tuple(seen)


def _parse_atom(text: str, lineno: int) -> Atom:
    m = _ATOM_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"line {lineno}: cannot parse atom {text.strip()!r}")
    args = tuple(a.strip() for a in m.group(2).split(","))
    if len(args) != 2 or not all(args):
        raise ValueError(
            f"line {lineno}: only binary atoms are supported, got {text.strip()!r} "
            f"with {len(args)} argument(s)"
        )
    for a in args:
        if not is_variable(a):
            raise ValueError(
                f"line {lineno}: template arguments must be variables, "
                f"got {a!r} in {text.strip()!r}"
            )
    if args[0] == args[1]:
        raise ValueError(f"line {lineno}: repeated variable inside one atom: {text.strip()!r}")
    return Atom(m.group(1), args)  # type: ignore[arg-type]


def _split_atoms(text: str, lineno: int) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"line {lineno}: unbalanced parentheses in {text.strip()!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"line {lineno}: unbalanced parentheses in {text.strip()!r}")
    parts.append("".join(cur))
    return parts


def _parse_clause(text: str, count: int, lineno: int) -> Template:
    if ":-" not in text:
        raise ValueError(
            f"line {lineno}: a template needs ':-' (head :- body), got {text.strip()!r}"
        )
    head_txt, body_txt = text.split(":-", 1)
    head = _parse_atom(head_txt, lineno)
    body = tuple(_parse_atom(a, lineno) for a in _split_atoms(body_txt, lineno))
    if count < 1:
        raise ValueError(f"line {lineno}: template count must be >= 1, got {count}")
    t = Template(head, body, count)
    body_vars = {v for a in body for v in a.args}
    for v in head.args:
        if v not in body_vars:
            raise ValueError(f"line {lineno}: head variable {v!r} does not occur in the body")
    return t


def parse_templates(text: str, fmt: str = "auto") -> list[Template]:
    """Parses rule templates from ``text``.

    Args:
      text: file contents.
      fmt: ``"nlt"`` (NTP: ``N  #1(X,Y) :- #2(Y,X).``, clauses may span lines), ``"clauses"``
        (GNTP: ``p(X,Y) :- q(Y,X) <N>``, one per line) or ``"auto"`` (``nlt`` if the first
        non-blank, non-comment line starts with a count).

    Raises:
      ValueError: naming the 1-based line number of the malformed clause.
    """
    lines = text.splitlines()
    if fmt == "auto":
        first = next((ln for ln in lines if ln.strip() and not ln.strip().startswith("%")), "")
        fmt = "nlt" if re.match(r"^\s*\d+\s", first) else "clauses"
    if fmt not in ("nlt", "clauses"):
        raise ValueError(f"fmt must be 'nlt', 'clauses' or 'auto', got {fmt!r}")
    out: list[Template] = []
    if fmt == "clauses":
        for i, ln in enumerate(lines, 1):
            s = ln.strip()
            if not s or s.startswith("%"):
                continue
            m = _CLAUSE_RE.match(s)
            count = int(m.group(2)) if m and m.group(2) else 1
            body = m.group(1) if m else s
            if "<" in body or ">" in body:
                raise ValueError(f"line {i}: malformed weight in {s!r} (expected '<N>')")
            out.append(_parse_clause(body, count, i))
        return out
    buf: list[str] = []
    start = 0
    for i, ln in enumerate(lines, 1):
        s = ln.strip()
        if not s or s.startswith("%"):
            if buf:
                continue
            continue
        if not buf:
            start = i
        buf.append(s)
        if s.endswith("."):
            clause = " ".join(buf)
            buf = []
            m = _NLT_RE.match(clause)
            if m is None:
                raise ValueError(f"line {start}: expected 'COUNT  head :- body.', got {clause!r}")
            out.append(_parse_clause(m.group(2), int(m.group(1)), start))
    if buf:
        raise ValueError(f"line {start}: unterminated template (missing final '.'): {buf[0]!r}")
    return out


def load_templates(path: str | Path, fmt: str = "auto") -> list[Template]:
    """Reads a template file (``.nlt`` or GNTP clauses); see :func:`parse_templates`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template file not found: {str(path)!r}")
    if fmt == "auto" and path.suffix == ".nlt":
        fmt = "nlt"
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line}: not UTF-8 ({e.reason} at offset {e.start})"
        ) from None
    try:
        return parse_templates(text, fmt)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def format_template(t: Template, fmt: str = "clauses") -> str:
    """Writes ``t`` back in the NTP ``.nlt`` or GNTP clause format (inverse of the parser)."""
    clause = f"{t.head} :- " + ", ".join(str(a) for a in t.body)
    if fmt == "nlt":
        return f"{t.count}\t{clause}."
    if fmt == "clauses":
        return f"{clause} <{t.count}>"
    raise ValueError(f"fmt must be 'nlt' or 'clauses', got {fmt!r}")
