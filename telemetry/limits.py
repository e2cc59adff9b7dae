"""Every size limit of the record format and the socket frame, in one place.

The figures are the original libtelemetry/telemprobd limits (spec/wire-and-records.md);
where we deliberately differ the comment says so.
"""

RECORD_FORMAT_VERSION = 4

# Classification: exactly two '/', at most 122 bytes.  The original lets the first
# segment hold 41 characters (an off-by-one); we keep it so that every record an
# original probe could send is still accepted.
CLASSIFICATION_MAX = 122
CLASSIFICATION_SEGMENT_MAX = 40
CLASSIFICATION_FIRST_SEGMENT_MAX = 41

SEVERITY_MIN = 1
SEVERITY_MAX = 4

# payload_format_version is a uint32, as in the original.
PAYLOAD_FORMAT_VERSION_MAX = 2**32 - 1

# A header line longer than this is not something any probe produces; the collector's
# own bounds are tighter (telemetry/contract.py).  (Ours: the original has no such check.)
HEADER_VALUE_MAX = 512

# The library keeps at most this many payload bytes.  The original telemprobd drops
# payloads over 8187 bytes (its message_size check counts 4+payload+1); ours accepts
# the full 8192 the library allows.
PAYLOAD_MAX = 8192

EVENT_ID_LEN = 32
MACHINE_ID_LEN = 32
MACHINE_ID_PLACEHOLDER = "FFFFFFFF"

# Header value sources: DMI values keep at most 77 characters, cpu_model 65 with the
# usual prefix, os-release lines are read in 79-byte chunks (spec 1.1, 1.2).
DMI_READ_MAX = 78
CHUNK_READ = 79
SYSTEM_NAME_MAX = 79

# Socket frame.  8 + 4 + PATH_MAX + 8192 + 15*80: the original's ceiling for a whole frame.
PATH_MAX = 4096
FRAME_MAX = 13500
FRAME_SIZE_FIELD = 4  # record_size and header_size: uint32 little-endian
# A frame needs at least: record_size + header_size + the terminator.
FRAME_MIN = 2 * FRAME_SIZE_FIELD + 1

# A unix socket path: sun_path holds 108 bytes, the NUL included.
SUN_PATH_MAX = 107

# Seconds the library waits for the daemon's acknowledgement.
ACK_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
ACK_MAX = 512
