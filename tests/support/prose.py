"""Real English prose that every install has: the docstrings of Python's standard library, Django and NumPy.

The load tests need a realistic corpus (thousands of chunks of varied, real text) on a fresh clone with
nothing beside it; SciFact stays in ../shared under its own licence. Docstrings are written by people for
people, vary from a line to pages, and come with the interpreter and the project's own dependencies, so
they can be read here offline (about 3,900 chunks at the default chunk settings with Python 3.11). Files are parsed with `ast`, never imported: no module runs.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import django
import numpy

# Folders of code whose docstrings are not prose about the module (tests, demos, vendored tools).
SKIPPED_FOLDERS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip", "pydoc_data", "tkinter"}
)
# Docstrings shorter than this say little ("Return self."); modules with less prose than this are skipped.
MIN_DOCSTRING_WORDS = 12
MIN_DOCUMENT_WORDS = 80
NODES_WITH_DOCSTRINGS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def source_roots() -> list[tuple[str, Path]]:
    """Where the prose comes from, in order: the standard library, then Django and NumPy (kbsite needs both)."""
    return [
        ("", Path(sysconfig.get_paths()["stdlib"])),
        ("django.", Path(django.__file__).parent),
        ("numpy.", Path(numpy.__file__).parent),
    ]


def _source_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        private = any(part.startswith("_") for part in parts[:-1]) or (
            parts[-1].startswith("_") and parts[-1] != "__init__.py"
        )
        if private or SKIPPED_FOLDERS.intersection(parts[:-1]):
            continue
        yield path


def _prose(docstring: str) -> str:
    """The docstring without its interactive examples, which are code rather than prose."""
    lines = [line for line in docstring.splitlines() if not line.lstrip().startswith((">>>", "..."))]
    return "\n".join(lines).strip()


def module_prose(path: Path) -> str:
    """The module's, its classes' and its functions' docstrings, in the order they appear."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    docstrings = []
    for node in ast.walk(tree):
        if isinstance(node, NODES_WITH_DOCSTRINGS):
            docstring = ast.get_docstring(node)
            if docstring and len(docstring.split()) >= MIN_DOCSTRING_WORDS:
                docstrings.append(_prose(docstring))
    return "\n\n".join(text for text in docstrings if text)


def prose_documents() -> Iterator[tuple[str, str]]:
    """(title, text) for each module with enough prose: "json.decoder", then the next, lazily."""
    for prefix, root in source_roots():
        for path in _source_files(root):
            text = module_prose(path)
            if len(text.split()) >= MIN_DOCUMENT_WORDS:
                module = ".".join(path.relative_to(root).with_suffix("").parts)
                yield f"{prefix}{module}".removesuffix(".__init__"), text
