"""Socket and path activation under systemd: telemprobd starts on the first connection to
/run/telem-0, exits when idle (daemon_idle_time) and comes back on the next one;
telempostd starts when the queue changes; hprobe's record reaches the collector."""

from __future__ import annotations

import time

from system import (
    IDLE_SECONDS,
    active_state,
    collector_records,
    hprobe_ok,
    journal,
    journal_cursor,
    main_pid,
    prop,
    show,
    stop_daemons,
    wait_for,
    wait_state,
)


def records_of(m, classification: str) -> list[dict]:
    return [r for r in collector_records(m) if r.get("classification") == classification]


def test_first_connection_starts_telemprobd(ready):
    m = ready
    stop_daemons(m)
    assert active_state(m, "telemprobd.socket") == "active"
    assert active_state(m, "telemprobd.service") == "inactive"
    cursor = journal_cursor(m)
    hprobe_ok(m)
    assert active_state(m, "telemprobd.service") in ("active", "deactivating")
    assert prop(m, "telemprobd.service", "TriggeredBy") == "telemprobd.socket"
    assert "Started telemprobd.service" in journal(m, "telemprobd.service", cursor) or \
        "Started Telemetry probe daemon" in journal(m, "telemprobd.service", cursor)


def test_idle_exit_and_reactivation(ready):
    m = ready
    hprobe_ok(m)
    first = show(m, "telemprobd.service", "InvocationID", "MainPID")
    assert int(first["MainPID"]) > 0
    # daemon_idle_time is IDLE_SECONDS in the test configuration.
    wait_state(m, "telemprobd.service", "inactive", timeout=IDLE_SECONDS + 60)
    after = show(m, "telemprobd.service", "Result", "ExecMainStatus", "NRestarts")
    assert after["Result"] == "success" and after["ExecMainStatus"] == "0", after
    assert active_state(m, "telemprobd.socket") == "active", "the socket stays armed"
    assert "exiting for recycling" in journal(m, "telemprobd.service").lower()
    hprobe_ok(m)
    again = show(m, "telemprobd.service", "InvocationID", "MainPID")
    assert again["InvocationID"] != first["InvocationID"]
    assert active_state(m, "telemprobd.service") in ("active", "deactivating")


def test_queue_change_starts_telempostd_and_the_record_reaches_the_collector(ready):
    m = ready
    stop_daemons(m)
    event = "0" * 31 + "7"
    r = m.run("telem-record-gen", "-c", "org.example/systemd/path", "-p", "activated", "-e", event)
    assert r.returncode == 0, r.stderr
    wait_state(m, "telempostd.service", "active", "deactivating", "inactive")
    got = wait_for(lambda: [x for x in records_of(m, "org.example/systemd/path") if x.get("event_id") == event],
                   what="the record at the collector")
    assert got[0]["payload"] == "activated"
    assert prop(m, "telempostd.service", "TriggeredBy") == "telempostd.path"
    assert int(prop(m, "telempostd.service", "NRestarts")) == 0


C_RECORD_HEADERS = (
    ("record_format_version", "4"), ("classification", "org.example/systemd/cspool"), ("severity", "2"),
    ("machine_id", "6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b"), ("creation_timestamp", "1700000000"), ("arch", "x86_64"),
    ("host_type", "no_sv_file|no_pn_file|no_pvr_file"), ("build", "41000"), ("kernel_version", "6.6.1-1.native"),
    ("payload_format_version", "1"), ("system_name", "clear-linux-os"), ("board_name", "no_bn_file|no_bv_file"),
    ("cpu_model", "blank"), ("bios_version", "no_bv_file"), ("event_id", "c" * 32),
)


def test_records_a_c_telemprobd_staged_are_delivered_and_the_queue_lives_apart(ready):
    """The layout a C telemprobd leaves (spec/wire-and-records.md 5): a file of 15 header
    lines, the payload and a newline, mode 0600, owned by the telemetry user."""
    m = ready
    stop_daemons(m)
    assert m.run("test", "-f", "/var/spool/telemetry/queue/queue.db").returncode == 0
    assert m.run("test", "-e", "/var/spool/telemetry/queue.db").returncode != 0
    staged = "".join(f"{k}: {v}\n" for k, v in C_RECORD_HEADERS) + "from the C client\n"
    m.sh("umask 077 && cat > /var/spool/telemetry/Ab3dE9 && chown telemetry:telemetry /var/spool/telemetry/Ab3dE9",
         input=staged, check=True)
    m.run("systemctl", "start", "telemprobd.service", check=True)
    got = wait_for(lambda: [x for x in records_of(m, "org.example/systemd/cspool")
                            if x.get("event_id") == "c" * 32], what="the C record at the collector")
    assert got[0]["payload"] == "from the C client"  # the C telemprobd's newline is framing
    assert m.run("test", "-e", "/var/spool/telemetry/Ab3dE9").returncode != 0
    assert "1 imported" in journal(m, "telemprobd.service")


def test_cold_start_figure(ready, figures):
    """From cold (both services stopped, only their socket and path units armed): the time
    from running hprobe to the record being at the collector.  A figure, not a check."""
    m = ready
    samples = []
    for _ in range(3):
        stop_daemons(m)
        before = len(records_of(m, "org.clearlinux/hello/world"))
        t0 = time.monotonic()
        hprobe_ok(m, as_nobody=False)
        wait_for(lambda n=before: len(records_of(m, "org.clearlinux/hello/world")) > n, interval=0.02,
                 what="the hello record at the collector")
        samples.append(time.monotonic() - t0)
    figures.add("first hprobe to the record at the collector, both daemons activated from cold",
                f"{min(samples):.2f} s best, {max(samples):.2f} s worst of {len(samples)} "
                "(includes polling the collector every 20 ms from outside)")
    for unit in ("telemprobd.service", "telempostd.service"):
        if active_state(m, unit) != "active":
            hprobe_ok(m)
        memory = prop(m, unit, "MemoryCurrent")
        shown = f"{int(memory) / 2**20:.1f} MiB" if memory.isdigit() else \
            f"{memory} (the container's systemd has no memory controller on this host)"
        pid = main_pid(m, unit)
        rollup = m.run("cat", f"/proc/{pid}/smaps_rollup").stdout if pid else ""
        kib = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.split()[1:2]}
        if "Rss" in kib:
            shown += f"; RSS {kib['Rss'] / 1024:.1f} MiB, PSS {kib['Pss'] / 1024:.1f} MiB"
        figures.add(f"{unit} MemoryCurrent", shown)
