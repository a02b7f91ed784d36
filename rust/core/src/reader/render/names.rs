//! Names for people: record kinds, kill-switch reasons, states, stop steps, and each
//! kind's fields by name (docs/FORMAT.md "Kinds").
use super::*;

/// The name of a record kind, when known.
pub fn kind_name(k: u8) -> Option<&'static str> {
    Some(match k {
        kind::KILL_SWITCH => "KILL_SWITCH",
        kind::TRADE => "TRADE",
        kind::ORDER_SENT => "ORDER_SENT",
        kind::ORDER_CANCELLED => "ORDER_CANCELLED",
        kind::RISK_CHECK => "RISK_CHECK",
        kind::STATE_CHANGE => "STATE_CHANGE",
        kind::RESET => "RESET",
        kind::HANDLER_FAILURE => "HANDLER_FAILURE",
        kind::TEXT => "TEXT",
        kind::ORDER_DENIED => "ORDER_DENIED",
        kind::STOP_STEP => "STOP_STEP",
        kind::USER => "USER",
        kind::GAP => "GAP",
        kind::CLOCK => "CLOCK",
        kind::SESSION_START => "SESSION_START",
        kind::SESSION_END => "SESSION_END",
        _ => return None,
    })
}

pub(super) fn reason_name(code: u64) -> Option<&'static str> {
    Some(match code {
        1 => "DAILY_LOSS_LIMIT",
        2 => "POSITION_LIMIT",
        3 => "DRAWDOWN",
        4 => "MANUAL",
        5 => "MESSAGE_RATE",
        6 => "REPEATED_EXECUTIONS",
        7 => "TRIGGER_FAILURE",
        8 => "PRICE_COLLAR",
        9 => "CONNECTIVITY",
        10 => "RISK_SYSTEM",
        255 => "OTHER",
        _ => return None,
    })
}

pub(super) fn state_name(v: i64) -> Option<&'static str> {
    Some(match v {
        0 => "ACTIVE",
        1 => "REDUCING",
        2 => "HALTED",
        _ => return None,
    })
}

pub(super) fn step_name(code: u16) -> String {
    match code {
        1 => "gate_blocked".into(),
        3 => "handlers_done".into(),
        4 => "durable".into(),
        5 => "durability_timeout".into(),
        c if c >= 1000 => format!("handler_{}_returned", c - 1000),
        c => c.to_string(),
    }
}

/// A field value, written without allocating.
#[derive(Clone, Copy)]
pub(super) enum Val {
    I(i64),
    U(u64),
    S(&'static str),
    Scope(u64),
    Step(u16),
}

/// Up to five named fields of a record.
pub(super) struct Fields {
    pub(super) items: [(&'static str, Val); 5],
    pub(super) len: usize,
}

impl Fields {
    pub(super) fn of(list: &[(&'static str, Val)]) -> Fields {
        let mut items = [("", Val::I(0)); 5];
        items[..list.len()].copy_from_slice(list);
        Fields {
            items,
            len: list.len(),
        }
    }
}

pub(super) fn name_or(name: Option<&'static str>, v: i64) -> Val {
    name.map_or(Val::I(v), Val::S)
}

/// The kind's fields, named (docs/FORMAT.md "Kinds").
pub(super) fn fields(r: &Record) -> Fields {
    use Val::{Scope, I, S, U};
    let code = i64::from(r.code);
    let sym = ("symbol", U(r.symbol_id.into()));
    match r.kind {
        kind::KILL_SWITCH => Fields::of(&[
            ("reason", name_or(reason_name(r.code.into()), code)),
            sym,
            ("position", I(r.a)),
            ("pnl_cents", I(r.b)),
            ("scope", Scope(r.c)),
        ]),
        kind::TRADE | kind::ORDER_SENT | kind::ORDER_CANCELLED => Fields::of(&[
            sym,
            ("quantity", I(r.a)),
            ("price_cents", I(r.b)),
            ("order_id", U(r.c)),
        ]),
        kind::RISK_CHECK => Fields::of(&[
            ("check", I(code)),
            ("observed", I(r.a)),
            ("limit", I(r.b)),
            ("outcome", U(r.c)),
            sym,
        ]),
        kind::STATE_CHANGE => Fields::of(&[
            ("state", name_or(state_name(code), code)),
            ("old", name_or(state_name(r.a), r.a)),
            ("reason", name_or(reason_name(r.b as u64), r.b)),
            ("scope", Scope(r.c)),
        ]),
        kind::RESET => Fields::of(&[
            (
                "outcome",
                match r.code {
                    0 => S("accepted"),
                    1 => S("refused"),
                    _ => I(code),
                },
            ),
            ("old", name_or(state_name(r.a), r.a)),
            ("new", name_or(state_name(r.b), r.b)),
            ("scope", Scope(r.c)),
        ]),
        kind::HANDLER_FAILURE => Fields::of(&[
            ("handler", I(code)),
            ("elapsed_ns", I(r.a)),
            ("kill_seq", U(r.c)),
        ]),
        kind::TEXT => Fields::of(&[("attached_to", U(r.c)), ("chunk", I(code))]),
        kind::ORDER_DENIED => Fields::of(&[("denials", I(r.a)), sym, ("scope", Scope(r.c))]),
        kind::STOP_STEP => Fields::of(&[
            ("step", Val::Step(r.code)),
            ("since_trigger_ns", I(r.a)),
            ("step_ns", I(r.b)),
            ("kill_seq", U(r.c)),
        ]),
        kind::GAP => Fields::of(&[
            (
                "ring",
                match r.code {
                    0 => S("main"),
                    1 => S("emergency"),
                    _ => I(code),
                },
            ),
            ("first_lost", I(r.a)),
            ("lost", I(r.b)),
            ("last_lost", U(r.c)),
        ]),
        kind::CLOCK => Fields::of(&[
            (
                "sync",
                match r.code {
                    0 => S("synchronised"),
                    1 => S("unsynchronised"),
                    2 => S("unknown"),
                    _ => I(code),
                },
            ),
            ("est_error_us", I(r.a)),
            ("max_error_us", I(r.b)),
            ("status", U(r.c)),
        ]),
        kind::SESSION_START => {
            Fields::of(&[("pid", I(r.a)), ("first_seq", I(r.b)), ("version", U(r.c))])
        }
        kind::SESSION_END => Fields::of(&[
            ("written", I(r.a)),
            ("dropped_main", I(r.b)),
            ("dropped_emergency", U(r.c)),
        ]),
        _ => Fields::of(&[
            ("code", I(code)),
            sym,
            ("a", I(r.a)),
            ("b", I(r.b)),
            ("c", U(r.c)),
        ]),
    }
}
