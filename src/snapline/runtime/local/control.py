"""What each message on a control link (supervisor <-> rank) must hold, checked before use.

Theory of operation
-------------------
``wire`` admits only processes that hold the job's secret and turns their bytes into plain
data -- of *any* shape. A peer that holds the secret is trusted not to lie, but a bug in it (or
a process from another installation) can still send a well-formed frame of the wrong shape: a
list where a dict belongs, a reply without its counters, a round that is an array. Read
unchecked, that raises ``AttributeError`` on ``msg.get`` or ``KeyError``/``TypeError`` deep in
the recovery coordinator, and one buggy rank would take down the supervisor (and the job).

So each end checks every control message here, once, as it arrives, before anything reads it:
the envelope (a dict whose ``op`` is a str) and, for each op this runtime sends, the fields the
receiver reads, with their plain types. A message that fails raises ``WireError``, which the
reader already treats as that link's failure, exactly like an undecodable frame: the
supervisor logs ``bad_control_frame`` and treats the rank as failed (it is killed and
recovered); a rank logs ``bad_control_frame`` and exits (its supervisor recovers it). An op
this runtime does not know passes the envelope check; the receiver logs and ignores it.

Channel frames (rank <-> rank) are checked in ``channels``, next to their format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from snapline.runtime.local.wire import describe, malformed

_Check = Callable[[object], bool]


# ------------------------------------------------------------------------- field checks


def _int(value: object) -> bool:
    return type(value) is int  # not bool: True is no count


def _opt_int(value: object) -> bool:
    return value is None or type(value) is int


def _bool(value: object) -> bool:
    return type(value) is bool


def _str(value: object) -> bool:
    return type(value) is str


def _any(value: object) -> bool:
    return True


def _int_list(value: object) -> bool:
    return type(value) is list and all(type(x) is int for x in value)


def _str_list(value: object) -> bool:
    return type(value) is list and all(type(x) is str for x in value)


def _int_map(value: object) -> bool:
    return type(value) is dict and all(type(k) is int and type(v) is int for k, v in value.items())


def _str_keyed(value: object) -> bool:
    return type(value) is dict and all(type(k) is str for k in value)


def _peer_table(value: object) -> bool:
    # rank -> the address it listens on (``endpoints``).
    return type(value) is dict and all(type(k) is int and type(v) is str for k, v in value.items())


def _replay_entry(entry: object) -> bool:
    # ``plain.replay_to_plain``: ["m", src, seq, payload, piggyback] or ["t", name].
    if type(entry) is not list or not entry or type(entry[0]) is not str:
        return False
    if entry[0] == "m":
        return len(entry) in (4, 5) and type(entry[1]) is int and type(entry[2]) is int
    return entry[0] == "t" and len(entry) == 2 and type(entry[1]) is str


def _replay(value: object) -> bool:
    return type(value) is list and all(_replay_entry(e) for e in value)


def _held_outputs(value: object) -> bool:
    return type(value) is list and all(
        type(e) is list and len(e) == 2 and type(e[0]) is int for e in value
    )


def _record(value: object) -> bool:
    # ``plain.record_to_plain``, or None for a rank that has no engine yet.
    if value is None:
        return True
    if type(value) is not dict:
        return False
    return (
        _int(value.get("rank"))
        and _int(value.get("index"))
        and _bool(value.get("forced"))
        and _int_map(value.get("sent"))
        and _int_map(value.get("received"))
        and (value.get("attachments") is None or type(value.get("attachments")) is dict)
    )


# ------------------------------------------------------------------------- message specs

#: Per op: field -> (check, required). Optional fields may be absent; present, they must pass.
_Spec = Mapping[str, tuple[_Check, bool]]

#: A ``ready: True`` rank's counters (``Worker._counters``), as the job reads them.
_COUNTERS: _Spec = {
    "frozen": (_bool, True),
    "done": (_bool, True),
    **{
        name: (_int, True)
        for name in (
            "requested",
            "delivered",
            "sent",
            "undelivered",
            "unsent",
            "timers",
            "activity",
            "committed",
            "gaps",
        )
    },
    "sent_to": (_int_map, True),
    "received_from": (_int_map, True),
}

#: What a rank sends the supervisor.
FROM_RANK: Mapping[str, _Spec] = {
    "hello": {
        "rank": (_int, True),
        "pid": (_int, True),
        "address": (_str, False),
        "node": (_str, False),
    },
    "hb": {"rank": (_int, True), "ready": (_bool, True)},
    "probe_reply": {"seq": (_opt_int, True), "ready": (_bool, True)},
    "ready": {"rank": (_int, True), "round": (_opt_int, False)},
    "connected": {"rank": (_int, True), "round": (_opt_int, True)},
    "frozen": {"rank": (_int, True), "round": (_opt_int, True), "volatile": (_record, True)},
    "resumed": {"round": (_opt_int, True), "sent": (_int_map, True), "received": (_int_map, True)},
    "result": {
        "rank": (_int, True),
        "result": (_any, True),
        "stats": (_str_keyed, True),
        "held_outputs": (_held_outputs, True),
    },
    "fatal": {
        "rank": (_int, True),
        "error": (_str, True),
        "kind": (_str, True),
        "message": (_str, True),
        "traceback": (_str, True),
        "signature": (_str_list, True),
    },
}

#: Ops whose message carries a rank's counters (checked as ``_COUNTERS`` once ready).
_WITH_COUNTERS = frozenset({"hb", "probe_reply"})

#: What the supervisor sends a rank.
FROM_SUPERVISOR: Mapping[str, _Spec] = {
    "init": {},
    "restore": {
        "round": (_opt_int, False),
        "index": (_int, True),
        "epoch": (_int, True),
        "replay": (_replay, False),
        "timers_only": (_bool, False),
        "commit": (_int_list, False),
    },
    "connect": {"round": (_opt_int, False), "peers": (_peer_table, False)},
    "resume": {
        "round": (_opt_int, False),
        "epoch": (_int, False),
        "recovery": (_bool, False),
        "restored": (_int_list, False),
        "cuts": (_int_map, False),
        "exact": (_int_list, False),
        "rearrive": (_replay, False),
        "commit": (_int_list, False),
    },
    "freeze": {
        "round": (_opt_int, False),
        "failed": (_int_list, False),
        "newly_failed": (_int_list, False),
    },
    "probe": {"seq": (_opt_int, False)},
    "stop": {},
    "exit": {},
}


def _check(msg: object, specs: Mapping[str, _Spec], what: str) -> dict[str, Any]:
    if type(msg) is not dict:
        raise malformed(what, f"expected a dict with an 'op', got {describe(msg)}")
    op = msg.get("op")
    if type(op) is not str:
        raise malformed(what, f"'op' must be a str, got {describe(op)}")
    spec = specs.get(op)
    if spec is None:
        return msg  # unknown op: the receiver logs and ignores it
    if op in _WITH_COUNTERS and msg.get("ready") is True:
        spec = {**spec, **_COUNTERS}
    for name, (ok, required) in spec.items():
        if name not in msg:
            if required:
                raise malformed(f"{what} {op!r}", f"field {name!r} is missing")
            continue
        value = msg[name]
        if not ok(value):
            raise malformed(f"{what} {op!r}", f"field {name!r} holds {describe(value)}")
    return msg


def check_from_rank(msg: object) -> dict[str, Any]:
    """``msg`` (decoded from a rank's control link) if well shaped, else ``WireError``."""
    return _check(msg, FROM_RANK, "control message from a rank")


def check_from_supervisor(msg: object) -> dict[str, Any]:
    """``msg`` (decoded from the supervisor's control link) if well shaped, else ``WireError``."""
    return _check(msg, FROM_SUPERVISOR, "control message from the supervisor")
