"""The type stubs cannot drift: every public name has a stub, with the same parameters."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import killswitch_audit
import pytest

native = pytest.importorskip("killswitch_audit._native")
STUB = Path(killswitch_audit.__file__).with_name("_native.pyi")


def _stub_tree() -> dict[str, object]:
    tree = ast.parse(STUB.read_text())
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = node
    return out


def _stub_params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [p.arg for p in a.kwonlyargs]
    return [n for n in names if n not in ("self", "cls")]


def _runtime_params(obj: object) -> list[str]:
    text = getattr(obj, "__text_signature__", None)
    assert text, f"{obj!r} has no text signature"
    inner = text.strip()[1:-1]
    names = []
    for part in (p.strip() for p in inner.split(",")):
        if not part or part in ("/", "*") or part.startswith("$"):
            continue
        names.append(re.split(r"[=:]", part)[0].strip())
    return names


def _public_native_names() -> list[str]:
    return [n for n in dir(native) if not n.startswith("__")]


def test_every_native_name_has_a_stub():
    stubs = _stub_tree()
    missing = [n for n in _public_native_names() if n not in stubs]
    assert not missing, f"names without a stub in {STUB.name}: {missing}"
    extra = [n for n in stubs if not hasattr(native, n)]
    assert not extra, f"stubs for names the module does not have: {extra}"


@pytest.mark.parametrize("name", _public_native_names())
def test_stub_signatures_match_the_built_module(name):
    stub = _stub_tree()[name]
    obj = getattr(native, name)
    if isinstance(stub, ast.FunctionDef):
        assert _stub_params(stub) == _runtime_params(obj), name
        return
    assert isinstance(obj, type)
    for attr, value in vars(obj).items():
        if attr.startswith("__") and attr not in ("__enter__", "__exit__"):
            continue
        assert attr in stub, f"{name}.{attr} has no stub"
        if attr in stub and getattr(value, "__text_signature__", None):
            assert _stub_params(stub[attr]) == _runtime_params(value), f"{name}.{attr}"
    if getattr(obj, "__text_signature__", None) and "__new__" in stub:
        assert _stub_params(stub["__new__"]) == _runtime_params(obj), f"{name}()"


def test_every_name_in_all_imports():
    for name in killswitch_audit.__all__:
        assert getattr(killswitch_audit, name) is not None, name


def test_stub_and_marker_ship_in_the_package():
    pkg = Path(killswitch_audit.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_native.pyi").exists()
