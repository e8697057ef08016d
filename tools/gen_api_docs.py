"""Generates `docs/api.md`, the API reference, from tfprune's docstrings.

One entry per public name: the top-level exports of `tfprune` (grouped by the `# --- ... ---`
sections of `tfprune/__init__.py`), then the public names of the modules `tfprune.export`,
`tfprune.curvature`, `tfprune.criteria`, `tfprune.allocation`, `tfprune.datasets`,
`tfprune.zoo` and the error classes of `tfprune.errors`. A module's public names are its
`__all__`, or else the classes, functions and constants it defines or re-exports from its
own package. Google-style sections (`Args:`, `Returns:`, ...) become lists.

Runtime: a few seconds (importing TensorFlow).

    python tools/gen_api_docs.py                 # writes docs/api.md
    python tools/gen_api_docs.py --check         # exit status 1 when docs/api.md is stale

`make api-docs` runs the first; `tests/test_docs.py` runs the check.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import pathlib
import re
import sys
import tempfile
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"
MODULES = ("export", "curvature", "criteria", "allocation", "datasets", "zoo")
SECTIONS = ("Args", "Arguments", "Returns", "Raises", "Attributes", "Yields")
_SECTION = re.compile(rf"^({'|'.join(SECTIONS)}):\s*$")
_ITEM = re.compile(r"^(\*{0,2}[\w.\[\], ]+?)(\s*\([^)]*\))?:\s+(.*)$")


def top_level_sections():
    """`[(section title, [names])]` of `tfprune/__init__.py`, in the file's order.

    Names imported under a `# --- title ---` comment belong to that section; modules are
    left out (they have sections of their own when listed in `MODULES`).
    """
    path = ROOT / "tfprune" / "__init__.py"
    source = path.read_text()
    lines = source.splitlines()
    sections, current = [], None
    titles = {}
    for number, line in enumerate(lines, start=1):
        m = re.match(r"#\s*---\s*(.+?)\s*-+\s*$", line)
        if m:
            titles[number] = m.group(1)
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        above = [n for n in titles if n < node.lineno]
        if not above:
            continue
        title = titles[max(above)]
        if current is None or current[0] != title:
            current = (title, [])
            sections.append(current)
        current[1].extend(a.asname or a.name for a in node.names)
    return sections


def module_names(module) -> list:
    """The public names of a module: `__all__`, or what it defines in its own package."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        owner = getattr(value, "__module__", None)
        if inspect.isclass(value) or inspect.isfunction(value):
            if owner and owner.startswith(module.__name__):
                names.append(name)
        elif name.isupper() and isinstance(value, (str, int, float, tuple, frozenset, dict)):
            names.append(name)
    return names


def _signature(qualified: str, value) -> str:
    """`name(a, b=1)` without annotations (as Keras' reference pages), wrapped when long."""
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return f"{qualified}(...)"
    params, star = [], False
    for p in signature.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
        star = star or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        params.append(str(p.replace(annotation=inspect.Parameter.empty)))
    text = f"{qualified}({', '.join(params)})"
    if len(text) <= 96:
        return text
    return f"{qualified}(\n" + "".join(f"    {p},\n" for p in params) + ")"


def render_docstring(doc: str) -> str:
    """Markdown of a Google-style docstring: sections as bold titles and bullet lists."""
    out, section, fence, entry = [], None, False, []

    def flush():
        if not entry:
            return
        text = " ".join(entry)
        item = _ITEM.match(text)
        if section in ("Args", "Arguments", "Attributes", "Raises") and item:
            name, kind, rest = item.groups()
            out.append(f"- `{name}`{kind or ''}: {rest}")
        elif section in ("Args", "Arguments", "Attributes", "Raises"):
            out.append(f"- {text}")
        else:
            out.append(text)
        entry.clear()

    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            fence = not fence
            section = None
            out.append(line if stripped != "```" or not fence else line + "text")
            continue
        if fence:
            out.append(line)
            continue
        m = _SECTION.match(line)
        if m or line.rstrip() in ("Example:", "Examples:"):
            flush()
            section = m.group(1) if m else None
            out += ["", f"**{line.strip()}**", ""]
            continue
        if section and line.startswith("    "):
            # A new entry starts at the first indentation level with `name: text`, unless the
            # entry before it has not reached its own `name:` yet (names over several lines).
            if not line.startswith("        ") and _ITEM.match(stripped) \
                    and _ITEM.match(" ".join(entry) or "x: x"):
                flush()
            entry.append(stripped)
            continue
        flush()
        if section and stripped:
            section = None
        out.append(line)
    flush()
    return "\n".join(out).strip() + "\n"


def _entry(qualified: str, value, level: str = "###") -> str:
    head = f"{level} `{qualified}`\n\n"
    if inspect.isclass(value) or callable(value):
        kind = "class" if inspect.isclass(value) else "function"
        head += f"```python\n{kind} {_signature(qualified, value)}\n```\n\n"
        doc = inspect.getdoc(value) or "(no docstring)"
        return head + render_docstring(doc)
    # Object addresses (`<function <lambda> at 0x7f...>`) change from run to run.
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
    if len(text) > 300:
        text = f"{type(value).__name__} of {len(value)} entries"
    return head + f"```text\n{qualified} = {text}\n```\n"


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).strip().replace(" ", "-")


def render() -> str:
    """The whole of `docs/api.md`."""
    import tfprune
    from tfprune import errors

    parts, toc = [], []

    def section(title, intro, entries):
        toc.append(f"- [{title}](#{_anchor(title)}): " + ", ".join(
            f"`{q.split('.', 1)[1] if q.count('.') else q}`" for q, _ in entries))
        parts.append(f"## {title}\n\n{intro}\n")
        parts.extend(_entry(q, v) for q, v in entries)

    for title, names in top_level_sections():
        entries = [(f"tfprune.{n}", getattr(tfprune, n)) for n in names
                   if not isinstance(getattr(tfprune, n, None), types.ModuleType)]
        if entries:
            section(title[0].upper() + title[1:], "Exported by `tfprune`.", entries)
    for name in MODULES:
        module = getattr(tfprune, name)
        intro = render_docstring(inspect.getdoc(module) or "").strip()
        entries = [(f"tfprune.{name}.{n}", getattr(module, n)) for n in module_names(module)]
        section(f"tfprune.{name}", intro, entries)
    error_classes = [(f"tfprune.errors.{n}", c) for n, c in vars(errors).items()
                     if inspect.isclass(c) and issubclass(c, errors.TfpruneError)]
    toc.append("- [tfprune.errors](#tfpruneerrors): every typed error")
    rows = ["| error | derives from | raised when |", "|---|---|---|"]
    for qualified, c in error_classes:
        bases = ", ".join(f"`{b.__name__}`" for b in c.__bases__)
        summary = (inspect.getdoc(c) or "").split("\n\n")[0].replace("\n", " ").replace("|", "/")
        rows.append(f"| `{qualified}` | {bases} | {summary} |")
    parts.append("## tfprune.errors\n\n" + render_docstring(inspect.getdoc(errors)).strip()
                 + "\n\n" + "\n".join(rows) + "\n")
    head = ("# API reference\n\n"
            "Generated from the docstrings by `python tools/gen_api_docs.py` (`make api-docs`); "
            "do not edit by hand. The code in the docstrings' examples uses names such as "
            "`model`, `x` and `y` for the user's own model and data.\n\n"
            + "\n".join(toc) + "\n")
    return "\n".join([head] + parts).rstrip() + "\n"


def _write_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it (exit 1 if stale)")
    parser.add_argument("--out", type=pathlib.Path, default=OUTPUT,
                        help="output file (default docs/api.md)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run python tools/gen_api_docs.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    _write_atomic(args.out, text)
    print(f"written: {args.out} ({len(text):,} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
