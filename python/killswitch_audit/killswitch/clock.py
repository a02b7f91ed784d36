"""Clock evidence for MiFID II RTS 25: the kernel's synchronisation state, judged."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..types import ClockEvidence

__all__ = ["clock_evidence"]


def clock_evidence(max_error_us: float = 100.0) -> ClockEvidence:
    """The kernel's clock synchronisation state (adjtimex, through the native extension) judged
    against `max_error_us` (MiFID II RTS 25: 100 µs for HFT). Returns {"state", "est_error_us",
    "max_error_us", "status_bits", "ok", "message"}; never invents a figure: without the
    extension or the syscall the state is "unknown" and the figures are None."""
    try:
        from .. import _native

        state, est, mx, bits = _native.clock_sync_state()
    except Exception:
        return {
            "state": "unknown",
            "est_error_us": None,
            "max_error_us": None,
            "status_bits": None,
            "ok": False,
            "message": "clock synchronisation unknown: the kernel's figures are not available "
            "(no native extension); the log carries no evidence of traceability to UTC",
        }
    if state == 2:
        return {
            "state": "unknown",
            "est_error_us": None,
            "max_error_us": None,
            "status_bits": bits,
            "ok": False,
            "message": "clock synchronisation unknown: adjtimex gave no answer; the log "
            "carries no evidence of traceability to UTC",
        }
    if state == 1:
        return {
            "state": "unsynchronised",
            "est_error_us": est,
            "max_error_us": mx,
            "status_bits": bits,
            "ok": False,
            "message": "the kernel reports the clock UNSYNCHRONISED (no NTP/PTP discipline on "
            f"this machine; kernel maximum error {mx} us): timestamps are not traceable to UTC "
            "within the RTS 25 bound",
        }
    ok = mx <= max_error_us
    msg = (
        f"clock synchronised: estimated error {est} us, maximum error {mx} us "
        f"(bound {max_error_us:g} us)"
    )
    if not ok:
        msg += ": the maximum error EXCEEDS the RTS 25 bound"
    return {
        "state": "synchronised",
        "est_error_us": est,
        "max_error_us": mx,
        "status_bits": bits,
        "ok": ok,
        "message": msg,
    }
