"""Work done once, when a record arrives, so that the views are indexed queries.

The write path calls one hook per batch (`hook.IngestHook.after_insert`, inside the
transaction that stored the batch).  It keeps the counters the views read (`counts`:
records per reception hour, per day and build, classification, platform; machine sightings
per build) and runs the payload parsers (`parsers`): each takes the records of the
classifications it names and returns facts (counted per day) and stacks (grouped by their
guilty frame).  The crash and kernel groupings are two such parsers (`crashes`,
`oopses`); others come from the ``telemetry_collector.payload_parsers`` entry-point group.

Pure cores: `stacks` (frames, stacks, the guilty frame), `guilty` (the never-guilty
list), `crashes` and `oopses` (payload to stack), `counts` (a batch to counter deltas),
`parsers` (the parser interface).  I/O: `tables` (the derived tables), `hook`.
"""
