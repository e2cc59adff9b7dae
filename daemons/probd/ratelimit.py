"""telemprobd's rate limits: records and bytes per sliding window, for the machine and per uid.

No I/O and no clock of its own: every call takes `now` (seconds on a monotonic clock), so
the rules are tested exhaustively and the daemon decides when time passes.

The rules (documented in the README):

* A limit is "N per W minutes": within any span of W minutes at most N records (or N
  bytes, counted over the real record sizes) are taken.  -1 disables a limit;
  `rate_limit_enabled=false` disables both.  W = 0 judges each record alone (a record is
  refused only if it alone exceeds the limit).
* A window is kept as 60 slots of W/60.  A record counts from its slot until 61 slots
  later, i.e. for between W and W + W/60: the limit is never exceeded, and capacity comes
  back at most one slot late.
* Per-uid share: one uid may take at most `rate_limit_uid_share` percent of each limit
  (N * share // 100); the rest of the window stays available to other users, so one
  local user flooding the socket cannot lock everyone else out.  100 turns it off.
* Strategy `drop`: a record over a limit is refused.  Strategy `spool`: it is kept and
  booked into the first later slot where every limit has room, and delivered from then
  on.  Bookings are first-come first-served per window and reach at most one window
  ahead; beyond that the record is refused, so a flood cannot book the future away.
* The state survives restarts: `snapshot` gives the bookings relative to now, `restore`
  puts them back given the time that passed (they are re-slotted if W changed).
"""

from __future__ import annotations

import enum
import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

SLOTS = 60
SNAPSHOT_VERSION = 1
# A booking never reaches further than this many windows ahead of now.
DEFER_HORIZON_WINDOWS = 1
# Kept per-uid state is dropped for uids beyond this (oldest first); uids are local
# accounts, so this is never reached in practice, but the memory is bounded regardless.
MAX_TRACKED_UIDS = 4096


@dataclass(frozen=True)
class Limit:
    """One limit of the original's config: so much per window."""
    amount: int  # -1: disabled
    window: float  # seconds; 0: each record judged alone

    @property
    def enabled(self) -> bool:
        return self.amount >= 0


DISABLED = Limit(-1, 0.0)


@dataclass(frozen=True)
class Policy:
    """The rate-limit settings together, as the config gives them."""
    records: Limit = DISABLED
    bytes: Limit = DISABLED
    uid_share: int = 100  # percent of each limit one uid may take
    spool: bool = False  # strategy: True = defer, False = drop

    @property
    def active(self) -> bool:
        return self.records.enabled or self.bytes.enabled

    def uid_amount(self, limit: Limit) -> int:
        """One uid's part of a limit: share percent, rounded down, but at least 1."""
        if limit.amount <= 0:
            return limit.amount
        return max(1, limit.amount * self.uid_share // 100)

    @classmethod
    def from_config(cls, cfg) -> Policy:
        if not cfg.rate_limit_enabled:
            return cls(spool=cfg.rate_limit_strategy == "spool", uid_share=cfg.rate_limit_uid_share)
        return cls(
            records=Limit(cfg.record_burst_limit, cfg.record_window_length * 60.0),
            bytes=Limit(cfg.byte_burst_limit, cfg.byte_window_length * 60.0),
            uid_share=cfg.rate_limit_uid_share,
            spool=cfg.rate_limit_strategy == "spool",
        )


class Verdict(enum.Enum):
    ADMIT = "admit"
    DEFER = "defer"
    REFUSE = "refuse"


@dataclass(slots=True)
class Booking:
    """Where a record was counted, so a failed commit can take it back.

    Not frozen (never changed once made): one is made for every record, and a frozen
    dataclass's __init__, an object.__setattr__ per field, costs three times as much."""

    uid: int
    size: int
    at: float  # the monotonic time it counts from


@dataclass(slots=True)
class Decision:
    """The limiter's answer for one record, with the booking to commit or give back.

    Not frozen (never changed once made): one is made for every record, and a frozen
    dataclass's __init__, an object.__setattr__ per field, costs three times as much."""

    verdict: Verdict
    booking: Booking | None = None
    reason: str = ""

    @property
    def at(self) -> float | None:
        return self.booking.at if self.booking else None


class Window:
    """One limit's slots: amounts booked per slot index, in slot order."""

    __slots__ = ("length", "cap", "slot", "label", "_entries", "_total")

    def __init__(self, length: float, cap: int, label: str = ""):
        self.length = length
        self.cap = cap
        self.slot = length / SLOTS
        self.label = label  # for messages: "records per 15 min"
        self._entries: deque[list[int]] = deque()  # [slot index, amount], indexes increasing
        self._total = 0

    def index(self, t: float) -> int:
        # The epsilon makes index(start(i)) == i despite rounding.
        return math.floor(t / self.slot + 1e-9)

    def start(self, idx: int) -> float:
        return idx * self.slot

    def _expire(self, now_idx: int) -> None:
        entries = self._entries
        oldest = now_idx - SLOTS
        while entries and entries[0][0] < oldest:
            self._total -= entries.popleft()[1]

    def empty(self, now: float) -> bool:
        self._expire(self.index(now))
        return not self._entries

    def slot_if_fits(self, now: float, amount: int) -> int | None:
        """The slot index of `now` if `amount` can be counted there, else None."""
        idx = math.floor(now / self.slot + 1e-9)  # self.index(now), without a call per record
        entries = self._entries
        if entries and entries[0][0] < idx - SLOTS:
            self._expire(idx)
        if entries and entries[-1][0] > idx:
            return None  # bookings ahead: newcomers queue behind them
        return idx if self._total + amount <= self.cap else None

    def fits_at(self, idx: int, amount: int) -> bool:
        """Whether `amount` booked at slot `idx` keeps every window that counts it (those
        ending at idx .. idx + SLOTS) within the cap, bookings ahead included."""
        self._expire(idx)
        entries = self._entries
        for end in range(idx, idx + SLOTS + 1):
            counted = sum(a for i, a in entries if end - SLOTS <= i <= end)
            if counted + amount > self.cap:
                return False
            if not entries or entries[-1][0] <= end:
                return True  # later windows only lose bookings
        return True

    def earliest(self, now: float, amount: int) -> int | None:
        """First slot index where `amount` can be booked behind every existing booking."""
        if amount > self.cap:
            return None
        idx = self.index(now)
        self._expire(idx)
        entries = self._entries
        j = max(idx, entries[-1][0]) if entries else idx
        # Beyond the last booking the sum over a window ending at j only falls as j grows.
        counted = self._total
        pos = 0
        while True:
            while pos < len(entries) and entries[pos][0] < j - SLOTS:
                counted -= entries[pos][1]
                pos += 1
            if counted + amount <= self.cap:
                return j
            # Jump to the slot where the next entry leaves the window.
            j = entries[pos][0] + SLOTS + 1

    def book(self, idx: int, amount: int) -> None:
        entries = self._entries
        self._total += amount
        if entries and entries[-1][0] == idx:
            entries[-1][1] += amount
        elif not entries or entries[-1][0] < idx:
            entries.append([idx, amount])
        else:  # re-slotting after a restore: keep the order
            pos = 0
            while entries[pos][0] < idx:
                pos += 1
            if entries[pos][0] == idx:
                entries[pos][1] += amount
            else:
                entries.insert(pos, [idx, amount])

    def unbook(self, idx: int, amount: int) -> None:
        for e in self._entries:
            if e[0] == idx:
                take = min(amount, e[1])
                e[1] -= take
                self._total -= take
                if e[1] == 0:
                    self._entries.remove(e)
                return

    def items(self) -> Iterable[tuple[float, int]]:
        """(slot start time, amount) of every booking."""
        return ((self.start(i), a) for i, a in self._entries)


def _window(limit: Limit, cap: int, what: str, scope: str) -> Window | None:
    if not limit.enabled or limit.window <= 0:
        return None
    return Window(limit.window, cap, f"{cap} {what} per {limit.window / 60:g} min{scope}")


class _Pair:
    """The records window and the bytes window of one scope (the machine, or one uid)."""

    __slots__ = ("records", "bytes")

    def __init__(self, policy: Policy, uid: int | None = None):
        share = uid is not None
        scope = f" for uid {uid} (a {policy.uid_share}% share)" if share else ""
        rec_cap = policy.uid_amount(policy.records) if share else policy.records.amount
        byte_cap = policy.uid_amount(policy.bytes) if share else policy.bytes.amount
        self.records = _window(policy.records, rec_cap, "records", scope)
        self.bytes = _window(policy.bytes, byte_cap, "bytes", scope)

    def windows(self, size: int) -> list[tuple[Window, int]]:
        out = []
        if self.records is not None:
            out.append((self.records, 1))
        if self.bytes is not None:
            out.append((self.bytes, size))
        return out

    def empty(self, now: float) -> bool:
        return all(w.empty(now) for w in (self.records, self.bytes) if w is not None)


class RateLimiter:
    def __init__(self, policy: Policy):
        self.policy = policy
        self._active = policy.active
        self._global = _Pair(policy)
        self._share = policy.uid_share < 100 and self._active
        self._uids: dict[int, _Pair] = {}
        # What one record on its own may not exceed (also the W = 0 rule), in the order
        # judged: (counted in bytes, largest amount, why a record above it can never pass).
        self._alone_rules: list[tuple[bool, int, str]] = []
        for limit, in_bytes, what in ((policy.records, False, "records"), (policy.bytes, True, "bytes")):
            if not limit.enabled:
                continue
            self._alone_rules.append(
                (in_bytes, limit.amount, f"record exceeds the limit of {limit.amount} {what} per window"))
            if self._share and limit.window > 0:
                self._alone_rules.append((in_bytes, policy.uid_amount(limit),
                                          f"record exceeds one user's share ({policy.uid_share}%) of "
                                          f"{limit.amount} {what} per window"))
        # The largest size and count every rule takes: a record within both (the usual case)
        # is not judged rule by rule.
        self._alone_ok: tuple[float, float] = (
            min([cap for in_bytes, cap, _ in self._alone_rules if in_bytes], default=math.inf),
            min([cap for in_bytes, cap, _ in self._alone_rules if not in_bytes], default=math.inf))

    # --- deciding ----------------------------------------------------------------------

    def _scope_windows(self, uid: int, size: int) -> list[tuple[Window, int]]:
        windows = self._global.windows(size)
        if self._share:
            pair = self._uids.get(uid)
            if pair is None:
                if len(self._uids) >= MAX_TRACKED_UIDS:
                    self._uids.pop(next(iter(self._uids)))
                pair = self._uids[uid] = _Pair(self.policy, uid)
            windows += pair.windows(size)
        return windows

    def decide(self, uid: int, size: int, now: float) -> Decision:
        """Admit, defer or refuse one record of `size` bytes from `uid`, and count it."""
        if not self._active:
            return Decision(Verdict.ADMIT, Booking(uid, size, now))
        max_size, max_records = self._alone_ok
        if size > max_size or max_records < 1:
            for in_bytes, cap, why in self._alone_rules:
                if (size if in_bytes else 1) > cap:
                    return Decision(Verdict.REFUSE, reason=why)
        windows = self._scope_windows(uid, size)
        slots = [w.slot_if_fits(now, amount) for w, amount in windows]
        if None not in slots:
            for i, (w, amount) in enumerate(windows):
                w.book(slots[i], amount)  # type: ignore[arg-type]  # (None is not in slots)
            return Decision(Verdict.ADMIT, Booking(uid, size, now))
        over = next("over the limit of " + w.label
                    for (w, _), idx in zip(windows, slots, strict=True) if idx is None)
        if not self.policy.spool:
            return Decision(Verdict.REFUSE, reason=over)
        if self._within_share(uid, windows, slots, now):
            # Others' deferred records booked ahead do not hold up a user within their
            # share: their bookings stay valid, and no window goes over its limit.
            for w, amount in windows:
                w.book(w.index(now), amount)
            return Decision(Verdict.ADMIT, Booking(uid, size, now))
        at = now
        for w, amount in windows:
            idx = w.earliest(now, amount)
            if idx is None:
                return Decision(Verdict.REFUSE, reason=over)
            at = max(at, w.start(idx))
        if any(at - now > w.length * DEFER_HORIZON_WINDOWS + w.slot for w, _ in windows):
            return Decision(Verdict.REFUSE, reason=over + "; the deferral backlog is full")
        for w, amount in windows:
            w.book(w.index(at), amount)
        return Decision(Verdict.DEFER, Booking(uid, size, at), reason=over)

    def _within_share(self, uid: int, windows: list[tuple[Window, int]], slots: list[int | None],
                      now: float) -> bool:
        """The uid's own windows take the record now (none of its own records wait ahead of
        it), and the machine's do too once every booking ahead is counted."""
        if not self._share:
            return False
        n_global = len(self._global.windows(0))
        if any(idx is None for idx in slots[n_global:]):
            return False
        return all(idx is not None or w.fits_at(w.index(now), amount)
                   for (w, amount), idx in zip(windows[:n_global], slots[:n_global], strict=True))

    def release(self, booking: Booking) -> None:
        """Take back a booking whose record was not staged after all."""
        for w, amount in self._scope_windows(booking.uid, booking.size):
            w.unbook(w.index(booking.at), amount)

    def forget_idle(self, now: float) -> None:
        """Drop per-uid state that no longer counts (keeps memory bounded)."""
        for uid in [u for u, pair in self._uids.items() if pair.empty(now)]:
            del self._uids[uid]

    # --- persistence -------------------------------------------------------------------

    def snapshot(self, now: float) -> str:
        """The bookings as JSON, times relative to `now`."""
        def dump(pair: _Pair) -> dict[str, list[list[float]]]:
            out = {}
            for name in ("records", "bytes"):
                w = getattr(pair, name)
                if w is not None and not w.empty(now):
                    # Slot midpoints: rounding cannot move a booking into the next slot.
                    out[name] = [[round(t + w.slot / 2 - now, 3), a] for t, a in w.items()]
            return out

        self.forget_idle(now)
        state = {"v": SNAPSHOT_VERSION, "global": dump(self._global),
                 "uids": {str(u): d for u, pair in self._uids.items() if (d := dump(pair))}}
        return json.dumps(state, separators=(",", ":"))

    @classmethod
    def restore(cls, policy: Policy, snapshot: str | None, now: float, elapsed: float) -> RateLimiter:
        """A limiter with `snapshot`'s bookings, `elapsed` seconds after it was taken.

        A damaged snapshot is ignored (the limits start afresh), never an error: the state
        is an optimisation of fairness, not data.
        """
        limiter = cls(policy)
        if not snapshot or not policy.active:
            return limiter
        try:
            state = json.loads(snapshot)
            if state.get("v") != SNAPSHOT_VERSION:
                return limiter
            limiter._load(limiter._global, state.get("global", {}), now, elapsed)
            if limiter._share:
                for uid, d in state.get("uids", {}).items():
                    pair = limiter._uids.setdefault(int(uid), _Pair(policy, int(uid)))
                    limiter._load(pair, d, now, elapsed)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError):  # OverflowError: infinities
            return cls(policy)
        return limiter

    @staticmethod
    def _load(pair: _Pair, d: dict, now: float, elapsed: float) -> None:
        for name in ("records", "bytes"):
            w = getattr(pair, name)
            if w is None:
                continue
            for rel, amount in d.get(name, []):
                t = now + float(rel) - max(0.0, elapsed)
                if amount > 0 and t >= now - w.length - w.slot:
                    w.book(w.index(t), int(amount))
