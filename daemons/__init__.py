"""The client's daemons and telemctl, one sub-package per program, beside what they share.

`probd` (telemprobd), `postd` (telempostd) and `ctl` (telemctl) each hold a program's rules
and its loop; `store` is the only owner of the SQLite databases (queue and journal);
`runtime` holds what every long-running program needs once (systemd's watchdog and
notifications, log throttling, signals as state; the long-running probes use the latter
too).
"""

# The module each program runs as (`python -m MODULE`), for the code that starts them.
MODULES: dict[str, str] = {
    "telemprobd": "telemetry.daemons.probd.main",
    "telempostd": "telemetry.daemons.postd.main",
    "telemctl": "telemetry.daemons.ctl.main",
}
