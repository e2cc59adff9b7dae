"""Signals as state: real signals sent to this process; a handler never raises, a wait
ends as the signal arrives, and the previous handlers come back."""

from __future__ import annotations

import logging
import os
import signal
import threading

from telemetry.daemons.runtime.signals import RELOAD_SIGNALS, Signals


def test_stop_is_recorded_and_ends_a_wait_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with Signals() as sig:
        assert not sig.stop_requested and sig.stop_signal is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert sig.stop_requested and sig.stop_signal == signal.SIGTERM and sig.stop_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # the first stop signal is the one kept
        assert sig.stop_signal == signal.SIGTERM
        assert sig.wait(3600) == []  # already stopping: no sleep at all
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_during_a_wait_ends_it():
    with Signals() as sig:
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        try:
            assert sig.wait(3600) == []  # returns when the signal arrives, not in an hour
        finally:
            timer.cancel()
        assert sig.stop_requested


def test_readable_fds_are_returned_and_reload_counts_once():
    r, w = os.pipe()
    try:
        with Signals(reload=RELOAD_SIGNALS) as sig:
            os.write(w, b"x")
            assert sig.wait(5, [r]) == [r]
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)
            assert sig.wait(5, [r]) == [r]  # the pipe's byte is still there
            assert sig.take_reload() is True and sig.take_reload() is False
            assert not sig.stop_requested
    finally:
        os.close(r)
        os.close(w)


def test_a_signal_inside_logging_is_not_swallowed(capsys):
    """The old handler raised; raised inside a log handler's emit, logging printed
    '--- Logging error ---' and the program went on as if nothing happened."""

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of emit

    log = logging.getLogger("test-signals")
    log.propagate = False
    log.addHandler(Slow())
    try:
        with Signals() as sig:
            log.warning("retrying")
            assert sig.stop_requested
    finally:
        log.handlers.clear()
    assert "Logging error" not in capsys.readouterr().err


def test_request_stop_from_the_program_wakes_a_waiter():
    with Signals() as sig:
        sig.request_stop()
        assert sig.stop_requested and sig.wait(3600) == []


def test_a_loop_with_its_own_flags_hears_of_them():
    seen: list[str] = []
    with Signals(reload=RELOAD_SIGNALS, on_stop=lambda: seen.append("stop"),
                 on_reload=lambda: seen.append("reload")) as sig:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == ["reload", "stop"] and sig.stop_requested and sig.take_reload()
