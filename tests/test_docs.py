"""Every code block of the README and `docs/` is run or checked, and `docs/api.md` is current.

Rules for code blocks in Markdown (what this test enforces):

- Every fence names its language. ```` ```python ```` blocks are executed, page by page, in a
  fresh temporary folder; blocks of one page share their names, in order, so a block may use
  what an earlier block of the same page defined. A page that mentions `../shared/data` runs
  with that path pointing at the real shared data (and needs the `shared_data` fixture).
  A python block that cannot run here (tfmot code, which needs legacy Keras) is preceded by
  `<!-- docs-test: skip REASON -->`: it is compiled, not run. A page with a block preceded
  by `<!-- docs-test: slow REASON -->` runs only with the slow tests (`make test-slow`).
- ```` ```bash ```` / `sh` / `shell` / `console` blocks are checked without running heavy
  work: `python tools/X.py`, `python examples/X.py` name an existing script and pass only
  flags that its `--help` lists; `tfprune SUB` is a subcommand of the `tfprune` command with
  flags its `--help` lists; `make X` names a Makefile target.
- Output and other non-code blocks use ```` ```text ```` (or `json`, `c`, `cpp`); a command
  in one of them is an error (commands go in shell blocks, where they are checked).

`docs/api.md` is generated from the docstrings (`tools/gen_api_docs.py`): its blocks are the
docstrings' examples, which use the user's own `model` and data; for it this test checks that
it is up to date.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import pathlib
import re
import runpy
import shlex
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATED = {"docs/api.md"}
PAGES = sorted(["README.md"] + [str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")
                                if str(p.relative_to(ROOT)) not in GENERATED])
PYTHON, SHELL, OUTPUT = "python", ("bash", "sh", "shell", "console"), ("text", "json", "c", "cpp")
MARK = re.compile(r"<!--\s*docs-test:\s*(skip|slow)\s+(\S.*?)\s*-->")
COMMAND = re.compile(r"^\s*(\$ )?(python3?|\.venv/bin/python|make|tfprune)\s")


def code_blocks(text: str):
    """`[(language, code, line, mark)]` of the fenced blocks of a page.

    `mark` is `("skip" or "slow", reason)` from a `docs-test` comment just above, or None.
    """
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, language = len(m.group(1)), m.group(2).strip()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        previous = next((l for l in reversed(lines[:start - 1]) if l.strip()), "")
        mark = MARK.search(previous)
        blocks.append((language, "\n".join(body) + "\n", start, mark.groups() if mark else None))
        i += 1
    return blocks


def _page(page):
    return (ROOT / page).read_text()


# --- every fence is labelled; output blocks hold no commands -------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_blocks_are_labelled(page):
    for language, code, line, _ in code_blocks(_page(page)):
        where = f"{page}:{line}"
        assert language, f"{where}: a fence without a language (python, bash or text)"
        assert language in (PYTHON,) + SHELL + OUTPUT, f"{where}: unknown language {language!r}"
        if language in OUTPUT:
            commands = [l for l in code.splitlines() if COMMAND.match(l)]
            assert not commands, f"{where}: commands in a {language} block: {commands}"


# --- python blocks run ---------------------------------------------------------------------


def _python_pages():
    pages = []
    for page in PAGES:
        blocks = code_blocks(_page(page))
        if any(b[0] == PYTHON for b in blocks):
            slow = any(b[3] and b[3][0] == "slow" for b in blocks)
            pages.append(pytest.param(page, marks=[pytest.mark.slow] if slow else []))
    return pages


@pytest.mark.parametrize("page", _python_pages())
def test_python_blocks_run(page, tmp_path, monkeypatch, request):
    text = _page(page)
    work = tmp_path / "work"
    work.mkdir()
    if "shared/data" in text:
        shared = request.getfixturevalue("shared_data")
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(shared, target_is_directory=True)
    monkeypatch.chdir(work)
    import keras

    keras.backend.clear_session()      # layer names (conv2d_1, ...) as in a fresh process
    namespace = {"__name__": f"docs_{re.sub(r'[^a-z0-9]', '_', page.lower())}"}
    for language, code, line, mark in code_blocks(text):
        if language != PYTHON:
            continue
        compiled = compile(code, f"{page}:{line}", "exec")
        if mark is None or mark[0] != "skip":
            exec(compiled, namespace)  # noqa: S102 - the documentation's own examples


# --- shell blocks name real scripts, flags and targets -------------------------------------


def _commands(code: str):
    """Commands of a shell block: continuations joined, prompts and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    for line in joined.splitlines():
        line = re.sub(r"^\s*\$ ", "", line).split(" #")[0].strip()
        if line and not line.startswith("#"):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = []
            for token in lexer:        # operators inside quotes stay part of their word
                if token in ("&&", ";", "||"):
                    if words:
                        yield words
                    words = []
                else:
                    words.append(token)
            if words:
                yield words


def _flags(words):
    return [w.split("=")[0] for w in words if w.startswith("--")]


@functools.lru_cache(maxsize=None)
def _help(script: str, subcommand: str = "") -> str:
    """`--help` of a script (or of a `tfprune` subcommand), run in this process."""
    out = io.StringIO()
    argv = sys.argv
    path = list(sys.path)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            if script == "tfprune":
                from tfprune.cli import build_parser

                sys.argv = ["tfprune"] + ([subcommand] if subcommand else []) + ["--help"]
                with pytest.raises(SystemExit):
                    build_parser().parse_args(sys.argv[1:])
            else:
                sys.path.insert(0, str((ROOT / script).parent))
                sys.argv = [script, "--help"]
                with pytest.raises(SystemExit):
                    runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    return out.getvalue()


def _makefile_targets():
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def _check_command(words, where):
    if words[0] in ("python", "python3", ".venv/bin/python"):
        scripts = [w for w in words[1:] if w.endswith(".py")]
        if not scripts or words[1] == "-m":
            return
        script = scripts[0]
        assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
        assert script.startswith(("tools/", "examples/")), f"{where}: {script} outside tools/, examples/"
        usage = _help(script)
        for flag in _flags(words):
            assert flag in usage, f"{where}: {script} has no flag {flag} (see its --help)"
    elif words[0] == "tfprune":
        subcommand = words[1] if len(words) > 1 and not words[1].startswith("-") else ""
        assert subcommand in _help("tfprune"), f"{where}: no command 'tfprune {subcommand}'"
        usage = _help("tfprune", subcommand)
        for flag in _flags(words):
            assert flag in usage, f"{where}: tfprune {subcommand} has no flag {flag}"
    elif words[0] == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        for target in targets:
            assert target in _makefile_targets(), f"{where}: no Makefile target {target!r}"


@pytest.mark.parametrize("page", [p for p in PAGES if any(b[0] in SHELL for b in
                                                          code_blocks(_page(p)))])
def test_shell_blocks_name_real_scripts_flags_and_targets(page):
    for language, code, line, _ in code_blocks(_page(page)):
        if language in SHELL:
            for words in _commands(code):
                _check_command(words, f"{page}:{line}")


# --- the API reference ---------------------------------------------------------------------


def test_api_reference_is_up_to_date():
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "tools" / "gen_api_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "api.md").read_text() == module.render(), \
        "docs/api.md is stale: run python tools/gen_api_docs.py (make api-docs)"


def test_every_page_is_linked_from_the_index_and_the_readme():
    index = _page("docs/index.md")
    readme = _page("README.md")
    for page in PAGES + sorted(GENERATED):
        if page.startswith("docs/") and page != "docs/index.md":
            assert page[len("docs/"):] in index, f"docs/index.md does not link {page}"
            assert page in readme, f"README.md does not link {page}"


def test_the_checker_catches_bad_commands():
    with pytest.raises(AssertionError, match="no flag --no-such-flag"):
        _check_command(["python", "examples/demo.py", "--no-such-flag"], "here")
    with pytest.raises(AssertionError, match="does not exist"):
        _check_command(["python", "tools/no_such_tool.py"], "here")
    with pytest.raises(AssertionError, match="no Makefile target"):
        _check_command(["make", "no-such-target"], "here")
    assert [b[0] for b in code_blocks("```python\nx = 1\n```\n```\nout\n```\n")] == ["python", ""]
