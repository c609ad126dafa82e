"""Descriptions of the pipeline configuration keys, read from the comments in config.py.

config.py stays the one place where a pipeline setting, its default and its meaning are written:
a field's inline comment (with any continuation comment lines aligned under it) is its
description, and full-line comments directly above a field are kept as a note (a group header
such as "geometric (training-free) backend", or the description of a field without an inline
comment). The node's ``pipeline.*`` parameter descriptions and config/openmask3d.yaml use them.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import config


@dataclass(frozen=True)
class FieldDoc:
    above: tuple[str, ...] = ()     # full-line comments right above the field
    inline: str = ""                # the comment on the field's line (+ aligned continuations)

    @property
    def text(self) -> str:
        """One-line description: the inline comment, else the comment above."""
        return self.inline or " ".join(self.above)


def _comments(source: str) -> dict[int, tuple[int, str, bool]]:
    """line -> (column, text, whole_line) of every comment."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            whole = not tok.line[:col].strip()
            out[row] = (col, tok.string.lstrip("#").strip(), whole)
    return out


@cache
def field_docs() -> dict[str, FieldDoc]:
    """Dotted pipeline key (as in ``PipelineConfig().flat()``) -> its comments in config.py."""
    try:
        source = Path(config.__file__).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):     # installed without sources: no descriptions
        return {}
    comments = _comments(source)
    classes: dict[str, dict[str, FieldDoc]] = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        docs = classes[cls.name] = {}
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above = []
            row = stmt.lineno - 1
            while row in comments and comments[row][2] and comments[row][0] == stmt.col_offset:
                above.insert(0, comments[row][1])
                row -= 1
            inline = [c[1] for r, c in comments.items()
                      if stmt.lineno <= r <= stmt.end_lineno and not c[2]]
            row = stmt.end_lineno + 1
            while inline and row in comments and comments[row][2] and \
                    comments[row][0] > stmt.col_offset:
                inline.append(comments[row][1])
                row += 1
            docs[stmt.target.id] = FieldDoc(tuple(above), " ".join(inline))
    out = {}
    for f in dataclasses.fields(config.PipelineConfig):
        section = getattr(config.PipelineConfig(), f.name)
        if dataclasses.is_dataclass(section):
            sub = classes.get(type(section).__name__, {})
            out.update({f"{f.name}.{g.name}": sub.get(g.name, FieldDoc())
                        for g in dataclasses.fields(section)})
        else:
            out[f.name] = classes.get("PipelineConfig", {}).get(f.name, FieldDoc())
    return out
