"""Installing the client as a distribution package would: `make install DESTDIR=… PREFIX=…`.

Everything installed beside the Python package is generated here from the code that owns
the facts, so the files cannot drift from the programs: unit files and etc/ files from
templates filled with the real prefix (`templates`), the default telemetrics.conf and
telemetrics.conf(5) from the config `KEYS` table (`defaultconf`, `manpages`), and one man
page per program from its click definition (`manpages`).  The programs are those of
pyproject.toml's [project.scripts]; one whose module does not exist is skipped.

It lives inside the package (not in a build script) because it imports what it
documents, the click commands and the key table, and the top-level folders are fixed;
`python -m telemetry_install --help` lists what it can write.
"""
