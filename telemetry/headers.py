"""Header names: the record's 15 lines, their HTTP spellings and our extension headers.

The record order is the wire order of record_format_version 4 and must never change:
both telemprobd and an original C telemprobd check the names position by position.
"""

RECORD_FORMAT_VERSION = "record_format_version"
CLASSIFICATION = "classification"
SEVERITY = "severity"
MACHINE_ID = "machine_id"
CREATION_TIMESTAMP = "creation_timestamp"
ARCH = "arch"
HOST_TYPE = "host_type"
BUILD = "build"
KERNEL_VERSION = "kernel_version"
PAYLOAD_FORMAT_VERSION = "payload_format_version"
SYSTEM_NAME = "system_name"
BOARD_NAME = "board_name"
CPU_MODEL = "cpu_model"
BIOS_VERSION = "bios_version"
EVENT_ID = "event_id"

RECORD_HEADERS: tuple[str, ...] = (
    RECORD_FORMAT_VERSION,
    CLASSIFICATION,
    SEVERITY,
    MACHINE_ID,
    CREATION_TIMESTAMP,
    ARCH,
    HOST_TYPE,
    BUILD,
    KERNEL_VERSION,
    PAYLOAD_FORMAT_VERSION,
    SYSTEM_NAME,
    BOARD_NAME,
    CPU_MODEL,
    BIOS_VERSION,
    EVENT_ID,
)

# collector-contract.md section 2: Title-Case, hyphenated; every hop forwards these.
HTTP_HEADERS: dict[str, str] = {
    RECORD_FORMAT_VERSION: "Record-Format-Version",
    CLASSIFICATION: "Classification",
    SEVERITY: "Severity",
    MACHINE_ID: "Machine-Id",
    CREATION_TIMESTAMP: "Creation-Timestamp",
    ARCH: "Arch",
    HOST_TYPE: "Host-Type",
    BUILD: "Build",
    KERNEL_VERSION: "Kernel-Version",
    PAYLOAD_FORMAT_VERSION: "Payload-Format-Version",
    SYSTEM_NAME: "System-Name",
    BOARD_NAME: "Board-Name",
    CPU_MODEL: "Cpu-Model",
    BIOS_VERSION: "Bios-Version",
    EVENT_ID: "Event-Id",
}

TID_HEADER = "X-Telemetry-TID"
# Ours: unique per record and stable across retries, so a collector can drop the
# duplicate that a crash during a POST can cause.  An original collector ignores it.
RECORD_ID_HEADER = "X-Telemetry-Record-Id"
