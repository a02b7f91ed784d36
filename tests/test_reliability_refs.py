"""Every guarantee in RELIABILITY.md keeps its test: each test it names exists, in the file it
names (a renamed, moved or deleted test fails here, not silently in a document)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "RELIABILITY.md"

# `path::name`, `::name` (in the file the table names), `name*` (a prefix)
REF = re.compile(r"`((?:tests|rust)/[\w/.-]+\.(?:py|rs))?::([\w*]+)`")


def _tests_in(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", text, re.M))
    return set(re.findall(r"fn (\w+)\s*\(", text))


def _all_tests() -> set[str]:
    files = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("rust/**/*.rs"), *ROOT.glob("benches/**/*.rs")]
    return set().union(*(_tests_in(f) for f in files))


def _has(names: set[str], name: str) -> bool:
    return any(n.startswith(name[:-1]) for n in names) if name.endswith("*") else name in names


def test_every_test_named_in_reliability_md_exists():
    everywhere = _all_tests()
    wrong = []
    count = 0
    for line_no, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        for path, name in REF.findall(line):
            count += 1
            if not path:  # `::name`: the file is named by the table's heading
                if not _has(everywhere, name):
                    wrong.append(f"line {line_no}: no test {name} anywhere")
                continue
            f = ROOT / path
            if not f.is_file():
                wrong.append(f"line {line_no}: {path} does not exist")
            elif not _has(_tests_in(f), name):
                wrong.append(f"line {line_no}: {name} is not in {path}")
    assert count > 50, f"only {count} test references found: did the pattern stop matching?"
    assert not wrong, "\n".join(wrong)
