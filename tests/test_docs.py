"""The README and the guides in step with the code (issue 35, "docs in two kinds").

* Every `rest-fast ...` command the README shows names a subcommand of `rest_fast.cli.build_parser()`
  and only options that subcommand accepts; every option the README names on its own is accepted
  by some subcommand; and every option of the user-facing subcommands appears in the README.
* The README's two fresh-machine commands are there, and its test command is the one `.ci/run` runs.
* Every relative link in README.md and docs/**/*.md points to a file that exists.
* The guides stay guides: no dated headings outside docs/results/, and short enough to read.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from rest_fast.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
INSTALL_AND_RUN = "python3 -m pip install -e . && rest-fast demo"
TEST_COMMAND = 'python3 -m pip install -e ".[test]" && python3 -m pytest -q tests'
# The subcommands a user runs; each of their options must be named in the README.
USER_FACING = ("generate", "demo", "stream", "serve", "prepare", "eval")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def accepted(parser: argparse.ArgumentParser) -> set[str]:
    return {s for s in parser._option_string_actions if s.startswith("--")}


def code_blocks(text: str) -> list[str]:
    """The lines of the fenced blocks, backslash continuations joined, comments dropped."""
    lines = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.split(" #")[0] if not line.lstrip().startswith("#") else "")
    return lines


def inline_spans(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def commands(text: str) -> list[tuple[str, str]]:
    """(subcommand, the rest of the command) for every `rest-fast SUB ...` the text shows, in code
    blocks (also after `&&`) and in inline code."""
    found = []
    for piece in code_blocks(text) + inline_spans(text):
        for segment in re.split(r"&&| \| ", piece):
            m = re.match(r"\s*rest-fast\s+(\S+)(.*)", segment)
            if m:
                found.append((m.group(1), m.group(2)))
    return found


def named_options(text: str) -> set[str]:
    """Every `--option` the text names for rest-fast: in its commands, and inline code that starts
    with an option (`--cfg`, `--checkpoint undistilled`); not other programs' (pip's)."""
    in_commands = {o for _, rest in commands(text) for o in OPTION.findall(rest)}
    alone = {o for span in inline_spans(text) if span.startswith("--") for o in OPTION.findall(span)}
    return in_commands | alone


def test_readme_commands_exist_with_their_options():
    subs = subparsers()
    shown = commands(README.read_text())
    assert {sub for sub, _ in shown} >= set(USER_FACING) | {"train"}
    bad = []
    for sub, rest in shown:
        if sub not in subs:
            bad.append(f"`rest-fast {sub}`: no such subcommand")
            continue
        bad += [f"`rest-fast {sub} {o}`: not an option of {sub}"
                for o in OPTION.findall(rest) if o not in accepted(subs[sub])]
    assert not bad, "\n".join(bad)


def test_every_option_the_readme_names_exists():
    every = set().union(*(accepted(p) for p in subparsers().values()))
    unknown = sorted(named_options(README.read_text()) - every)
    assert not unknown, f"the README names options no subcommand accepts: {unknown}"


@pytest.mark.parametrize("sub", USER_FACING)
def test_readme_names_every_option_of_the_user_facing_commands(sub):
    missing = sorted(accepted(subparsers()[sub]) - {"--help"} - named_options(README.read_text()))
    assert not missing, f"`rest-fast {sub} --help` has options the README does not name: {missing}"


def test_option_parsing_catches_a_wrong_option():
    """The checks above see an option that does not exist, in a block (continued, commented) and
    inline, and see no option in another program's command."""
    text = ("```bash\nrest-fast generate --image a.png --preset cpu|paper \\\n    --no-such-option 1   # --x\n```\n"
            "Run `rest-fast demo --nope` or `python3 -m pip install torch --index-url URL`.\n")
    subs = subparsers()
    wrong = [o for sub, rest in commands(text) for o in OPTION.findall(rest) if o not in accepted(subs[sub])]
    assert wrong == ["--no-such-option", "--nope"]
    assert named_options(text) == {"--image", "--preset", "--no-such-option", "--nope"}


def test_fresh_machine_commands_and_ci():
    text = README.read_text()
    blocks = code_blocks(text)
    assert any(line.strip().startswith(INSTALL_AND_RUN) for line in blocks), INSTALL_AND_RUN
    assert TEST_COMMAND in blocks, TEST_COMMAND
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert TEST_COMMAND.replace("pip install -e", "pip install -q -e") in ci or TEST_COMMAND in ci, \
        ".ci/run does not run the README's test command"


def markdown_files() -> list[Path]:
    return [README] + sorted((REPO / "docs").rglob("*.md"))


def test_relative_links_point_to_files():
    bad = []
    for md in markdown_files():
        text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if not (md.parent / path).exists():
                bad.append(f"{md.relative_to(REPO)}: {target}")
    assert not bad, "links to missing files:\n" + "\n".join(bad)


def test_guides_are_guides():
    guides = [README] + [p for p in (REPO / "docs").glob("*.md")]
    dated = [f"{p.relative_to(REPO)}: {line}" for p in guides for line in p.read_text().splitlines()
             if re.match(r"#+ .*20\d\d-\d\d-\d\d", line)]
    assert not dated, "dated headings belong in docs/results/:\n" + "\n".join(dated)
    # The issue asks for about 150 and 400 lines; the before-stop hook flags a README over 200.
    assert len(README.read_text().splitlines()) <= 160
    assert len((REPO / "docs" / "training.md").read_text().splitlines()) <= 420
