"""Form fields of the risk console: what a command form may contain, checked before anything
runs. Owns the field limits (scope text, reason length, control-table field bytes), the
per-field error type `FieldErrors` the endpoints turn into a 400, and the scope+reason pair
every command form carries. No Starlette here: plain values in, canonical values or errors out.
"""

from __future__ import annotations

from typing import Any

from ..control._layout import check_reason

REASON_MIN, REASON_MAX = 3, 500
#: control-table field limits (ControlPlane refuses longer ones; checked here to name the field)
_FIELD_BYTES = (("account", 32), ("strategy", 40), ("venue", 24))


class FieldErrors(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_scope(text: Any) -> str:
    """Canonical scope text (ValueError with the reason shown next to the field)."""
    from ..killswitch import Scope

    if not isinstance(text, str) or not text.strip():
        raise ValueError("a scope is required: firm, or e.g. account=A1;venue=XNAS")
    if len(text) > 255 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("scope text: at most 255 printable characters")
    try:
        scope = Scope.parse(text)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{e}; write firm, or key=value pairs joined by ';' with keys "
            "account, strategy, symbol_id, venue"
        ) from None
    for what, most in _FIELD_BYTES:
        v = getattr(scope, what)
        if v is not None and (not v or len(v.encode()) > most):
            raise ValueError(f"scope {what} must be 1..{most} bytes, got {v!r}")
    return scope.text


def validate_reason(text: Any) -> str:
    if not isinstance(text, str):
        raise ValueError("a reason is required")
    v = text.strip()
    if len(v) < REASON_MIN:
        raise ValueError(f"a reason of at least {REASON_MIN} characters is required")
    if len(v) > REASON_MAX:
        raise ValueError(f"reason: at most {REASON_MAX} characters, got {len(v)}")
    return check_reason(v)


def _scope_and_reason(form: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """The two fields every command form has, checked; errors keyed by field name."""
    errors: dict[str, str] = {}
    scope = reason = ""
    try:
        scope = validate_scope(form.get("scope", ""))
    except ValueError as e:
        errors["scope"] = str(e)
    try:
        reason = validate_reason(form.get("reason", ""))
    except ValueError as e:
        errors["reason"] = str(e)
    return scope, reason, errors
