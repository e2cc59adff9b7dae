"""The rate limiter core: its promises checked over arbitrary traffic (hypothesis)."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.daemons.probd.ratelimit import (
    DISABLED,
    SLOTS,
    Limit,
    Policy,
    RateLimiter,
    Verdict,
)

W = 60.0  # a one-minute window: slots of one second

events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=30, allow_nan=False),  # time since the previous event
        st.sampled_from([0, 1000, 1001]),  # uid
        st.integers(min_value=1, max_value=400),  # size
    ),
    max_size=120,
)


def run(limiter: RateLimiter, evs, start: float = 1000.0):
    now = start
    out = []
    for gap, uid, size in evs:
        now += gap
        out.append((now, uid, size, limiter.decide(uid, size, now)))
    return out


def max_in_any_window(points: list[tuple[float, int]], length: float) -> int:
    """Largest sum of amounts whose times fall within some half-open span of `length`."""
    best = 0
    for t0, _ in points:
        best = max(best, sum(a for t, a in points if t0 <= t < t0 + length))
    return best


policies = st.builds(
    Policy,
    records=st.builds(Limit, st.integers(min_value=0, max_value=12), st.just(W)),
    bytes=st.one_of(st.just(DISABLED), st.builds(Limit, st.integers(min_value=0, max_value=2500), st.just(W))),
    uid_share=st.sampled_from([30, 50, 100]),
    spool=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(policies, events)
def test_no_window_ever_holds_more_than_the_limit(policy: Policy, evs):
    decisions = run(RateLimiter(policy), evs)
    kept = [(d.booking.at, uid, size) for _, uid, size, d in decisions if d.verdict is not Verdict.REFUSE]
    assert max_in_any_window([(t, 1) for t, _, _ in kept], W) <= policy.records.amount
    if policy.bytes.enabled:
        assert max_in_any_window([(t, s) for t, _, s in kept], W) <= policy.bytes.amount
    for uid in {u for _, u, _ in kept}:
        mine = [(t, s) for t, u, s in kept if u == uid]
        assert max_in_any_window([(t, 1) for t, _ in mine], W) <= policy.uid_amount(policy.records)
        if policy.bytes.enabled:
            assert max_in_any_window(mine, W) <= policy.uid_amount(policy.bytes)


@settings(max_examples=300, deadline=None)
@given(policies, events)
def test_verdicts_follow_the_strategy(policy: Policy, evs):
    for now, _, _, d in run(RateLimiter(policy), evs):
        if d.verdict is Verdict.ADMIT:
            assert d.booking.at == now
        elif d.verdict is Verdict.DEFER:
            assert policy.spool
            assert now < d.booking.at <= now + W + W / SLOTS
        else:
            assert d.reason and d.booking is None


@settings(max_examples=200, deadline=None)
@given(policies, events, st.sampled_from([0, 1000, 1001]), st.integers(min_value=1, max_value=400))
def test_capacity_comes_back_after_a_quiet_window(policy: Policy, evs, uid, size):
    limiter = RateLimiter(policy)
    decisions = run(limiter, evs)
    last = max((d.booking.at for *_, d in decisions if d.booking), default=1000.0)
    end = max([1000.0, last] + [t for t, *_ in decisions])
    quiet = end + W + W / SLOTS + 0.01
    fits = policy.uid_amount(policy.records) >= 1 and (
        not policy.bytes.enabled or size <= policy.uid_amount(policy.bytes))
    d = limiter.decide(uid, size, quiet)
    assert (d.verdict is Verdict.ADMIT) == fits


def test_disabled_policy_admits_everything():
    limiter = RateLimiter(Policy())
    assert all(limiter.decide(0, 10_000, t).verdict is Verdict.ADMIT for t in range(10_000))


def test_one_uid_cannot_take_the_whole_window():
    policy = Policy(records=Limit(10, W), uid_share=50)
    limiter = RateLimiter(policy)
    flood = [limiter.decide(1000, 100, 1.0).verdict for _ in range(20)]
    assert flood.count(Verdict.ADMIT) == 5
    others = [limiter.decide(1001, 100, 2.0).verdict for _ in range(5)]
    assert others == [Verdict.ADMIT] * 5
    assert limiter.decide(1002, 100, 3.0).verdict is Verdict.REFUSE


def test_spool_strategy_spreads_the_excess_over_the_next_window():
    limiter = RateLimiter(Policy(records=Limit(3, W), spool=True))
    verdicts = [limiter.decide(0, 10, 5.0) for _ in range(7)]
    assert [d.verdict for d in verdicts] == [Verdict.ADMIT] * 3 + [Verdict.DEFER] * 3 + [Verdict.REFUSE]
    assert all(5.0 + W <= d.booking.at <= 5.0 + W + W / SLOTS + 1 for d in verdicts[3:6])
    assert "deferral backlog" in verdicts[6].reason


def test_with_spool_a_user_within_their_share_is_not_deferred_behind_a_flooder():
    """The flooder's deferred records are booked ahead in the machine's window; a user
    within their own share goes now, and no window goes over its limit."""
    limiter = RateLimiter(Policy(records=Limit(10, W), uid_share=50, spool=True))
    flood = [limiter.decide(1000, 10, 1.0).verdict for _ in range(12)]
    assert flood == [Verdict.ADMIT] * 5 + [Verdict.DEFER] * 5 + [Verdict.REFUSE] * 2
    others = [limiter.decide(1001, 10, 2.0).verdict for _ in range(6)]
    assert others == [Verdict.ADMIT] * 5 + [Verdict.DEFER]  # beyond their own share they wait too
    assert limiter.decide(1002, 10, 3.0).verdict is Verdict.DEFER  # the machine's window is full now


def test_window_zero_judges_each_record_alone():
    limiter = RateLimiter(Policy(bytes=Limit(100, 0.0)))
    assert limiter.decide(0, 100, 1.0).verdict is Verdict.ADMIT
    assert limiter.decide(0, 100, 1.0).verdict is Verdict.ADMIT
    refused = limiter.decide(0, 101, 1.0)
    assert refused.verdict is Verdict.REFUSE and "100 bytes" in refused.reason


def test_a_record_larger_than_the_byte_limit_is_refused_even_with_spool():
    limiter = RateLimiter(Policy(bytes=Limit(500, W), spool=True))
    assert limiter.decide(0, 501, 1.0).verdict is Verdict.REFUSE


def test_release_gives_the_capacity_back():
    limiter = RateLimiter(Policy(records=Limit(1, W)))
    d = limiter.decide(0, 10, 1.0)
    assert limiter.decide(0, 10, 1.5).verdict is Verdict.REFUSE
    limiter.release(d.booking)
    assert limiter.decide(0, 10, 2.0).verdict is Verdict.ADMIT


@settings(max_examples=200, deadline=None)
@given(policies, events, events)
def test_restore_continues_exactly_where_the_snapshot_left(policy: Policy, before, after):
    first = RateLimiter(policy)
    decided = run(first, before)
    now = max([1000.0] + [t for t, *_ in decided])
    copy = RateLimiter.restore(policy, first.snapshot(now), now, elapsed=0.0)
    a = [(v, d.verdict, d.at) for *v, d in run(first, after, start=now)]
    b = [(v, d.verdict, d.at) for *v, d in run(copy, after, start=now)]
    assert [x[1] for x in a] == [x[1] for x in b]


def test_restore_accounts_for_the_time_that_passed():
    policy = Policy(records=Limit(2, W))
    limiter = RateLimiter(policy)
    limiter.decide(0, 1, 100.0)
    limiter.decide(0, 1, 100.0)
    snap = limiter.snapshot(100.0)
    # Restarted 10 s later on a different clock: still full.
    soon = RateLimiter.restore(policy, snap, now=5.0, elapsed=10.0)
    assert soon.decide(0, 1, 5.0).verdict is Verdict.REFUSE
    # Restarted after the window: empty.
    later = RateLimiter.restore(policy, snap, now=5.0, elapsed=W + 2)
    assert later.decide(0, 1, 5.0).verdict is Verdict.ADMIT


def test_restore_with_a_changed_window_or_garbage_never_fails():
    limiter = RateLimiter(Policy(records=Limit(5, W)))
    for _ in range(5):
        limiter.decide(7, 10, 50.0)
    snap = limiter.snapshot(50.0)
    wider = Policy(records=Limit(5, 5 * W))
    assert RateLimiter.restore(wider, snap, 50.0, 0.0).decide(7, 1, 50.0).verdict is Verdict.REFUSE
    infinite = ('{"v":1,"global":{"records":[[Infinity,1]]}}', '{"v":1,"global":{"records":[[0,Infinity]]}}')
    for junk in ("", "{", "[]", '{"v":1,"global":{"records":[["x",1]]}}', '{"v":99}', *infinite):
        assert RateLimiter.restore(wider, junk, 0.0, 0.0).decide(0, 1, 0.0).verdict is Verdict.ADMIT


def test_policy_from_config_keys():
    cfg = SimpleNamespace(rate_limit_enabled=True, record_burst_limit=1000, record_window_length=15,
                          byte_burst_limit=-1, byte_window_length=20, rate_limit_uid_share=50,
                          rate_limit_strategy="drop")
    p = Policy.from_config(cfg)
    assert p.records == Limit(1000, 900.0) and not p.bytes.enabled and not p.spool
    assert p.uid_amount(p.records) == 500
    off = Policy.from_config(SimpleNamespace(**{**vars(cfg), "rate_limit_enabled": False}))
    assert not off.active


def test_uid_state_is_forgotten_once_it_no_longer_counts():
    limiter = RateLimiter(Policy(records=Limit(100, W), uid_share=50))
    for uid in range(1000):
        limiter.decide(uid, 1, 10.0)
    limiter.forget_idle(10.0 + 2 * W)
    assert limiter.snapshot(10.0 + 2 * W) == '{"v":1,"global":{},"uids":{}}'
