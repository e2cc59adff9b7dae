"""The root of every error this package raises on purpose.

Each subclass lives beside the code that raises it and carries a message a user can act
on; CLIs print ``str(error)`` on one line and exit non-zero, never a traceback.
"""


class TelemetryError(Exception):
    """Something the user or the environment can fix; the message says what."""
