"""What a directory of TOML files looks like right now, cheaply: (name, mtime, size) of each file.

Watchers (policies, prompts) poll this once a second and reload only when it changes; a reload
validates the whole directory and swaps it in at once, or keeps the last good set.
"""

from __future__ import annotations

from pathlib import Path

Signature = tuple[tuple[str, int, int], ...]


def signature(directory: Path) -> Signature:
    out = []
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
        try:
            st = path.stat()
        except OSError:  # removed between glob and stat: the next poll sees the directory as it settles
            continue
        out.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(out)
