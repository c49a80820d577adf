"""Pure domain rules from domain.md: transitions, load-type upgrades, lane matching."""

from __future__ import annotations

from dataclasses import dataclass

from db.errors import BadInput, InvalidTransition

LOAD_TRANSITIONS: dict[str, frozenset[str]] = {
    "OPEN": frozenset({"ASSIGNED", "CANCELED"}),
    "ASSIGNED": frozenset({"OPEN", "COMPLETED", "CANCELED"}),
    "COMPLETED": frozenset(),
    "CANCELED": frozenset(),
}
INVOICE_TRANSITIONS: dict[str, frozenset[str]] = {
    "MISSING_DATA": frozenset({"DRAFT", "VOID"}),
    "DRAFT": frozenset({"BILLED", "VOID"}),
    "BILLED": frozenset({"PENDING_PAYMENT", "DRAFT", "VOID"}),
    "PENDING_PAYMENT": frozenset({"PAID", "DRAFT", "VOID"}),
    "PAID": frozenset({"PENDING_PAYMENT", "VOID"}),
    "VOID": frozenset(),
}
LOAD_TYPE_RANK = {"UNMAPPED": 0, "SPOT": 1, "CONTRACT": 2}

WILDCARD_TRIP = "*"
CANCELING_TRACKING = frozenset({"CANCELED", "CANCELLED", "WITHDRAWN"})
COMPLETING_TRACKING = frozenset({"DELIVERED", "COMPLETED"})

REASON_NO_LANE = "No lane matches this load's route"
REASON_SPOT_RATE = "Spot load: rate needs review"


def can_move(transitions: dict[str, frozenset[str]], current: str, target: str) -> bool:
    return current == target or target in transitions[current]


def check_transition(
    entity: str, transitions: dict[str, frozenset[str]], current: str, target: str, id_: object
) -> None:
    if not can_move(transitions, current, target):
        raise InvalidTransition(f"{entity} {id_} cannot move from {current} to {target}", ids=[id_])


def is_upgrade(current: str, candidate: str) -> bool:
    return LOAD_TYPE_RANK[candidate] > LOAD_TYPE_RANK[current]


@dataclass(frozen=True)
class LaneKey:
    hcr: str
    trip_number: str


def match_lane_type(hcr: str | None, trip: str | None, lanes: set[LaneKey]) -> tuple[str, LaneKey | None]:
    """The most specific lane wins: exact -> CONTRACT, wildcard -> SPOT, else UNMAPPED."""
    if not hcr:
        return "UNMAPPED", None
    if trip and trip != WILDCARD_TRIP and LaneKey(hcr, trip) in lanes:
        return "CONTRACT", LaneKey(hcr, trip)
    if LaneKey(hcr, WILDCARD_TRIP) in lanes:
        return "SPOT", LaneKey(hcr, WILDCARD_TRIP)
    return "UNMAPPED", None


def tracking_target(tracking_status: str | None) -> str | None:
    """The load status a FourKites tracking status asks for, if any."""
    status = (tracking_status or "").strip().upper()
    if status in CANCELING_TRACKING:
        return "CANCELED"
    if status in COMPLETING_TRACKING:
        return "COMPLETED"
    return None


MAX_TEXT = 200


def check_text(value: str | None, field: str, *, required: bool = False, max_len: int = MAX_TEXT) -> str | None:
    """Refuse blank required strings, strings over `max_len` characters, and text no
    database stores: NUL (PostgreSQL refuses it) or lone surrogates (not UTF-8)."""
    if value is not None and not is_storable(value):
        raise BadInput(f"{field} contains a NUL character or invalid Unicode")
    if value is None or not value.strip():
        if required:
            raise BadInput(f"{field} must not be blank")
        return None if value is None else value
    if len(value) > max_len:
        raise BadInput(f"{field} is longer than {max_len} characters")
    return value


def is_storable(value: str) -> bool:
    """Text that both databases store as given: no NUL, valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
