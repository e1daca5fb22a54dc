"""The role file: what this candidate's command is, as a small JSON document it can read at any time.

Written by the watchdog (the process that also sends the signals), atomically (write a
temporary file, then rename), at every change and *before* the signal that announces it, so a
command that reads it from its signal handler never sees the previous role:

    {"role": "leader", "fencing_token": 156, "lease_deadline": 81234.518,
     "lease_clock": "CLOCK_BOOTTIME", "leader": "a", "since": "2026-11-26T05:21:46.366Z",
     "demoted_from": null, "ack_file": "/tmp/consul-elect-svc_leader.role.ack"}

- `fencing_token` and `lease_deadline` are set while the role is `leader` (null otherwise); the
  deadline is rewritten at every renewal. Past it, the command must not do leader work.
- `leader` is the name of whoever leads as far as this candidate knows (null: nobody, or unknown).
- `demoted_from`: on a `follower` document written by a demotion, the term (fencing token) that
  ended. The command acknowledges that it has stopped leader work by writing the line
      follower <demoted_from>
  to `ack_file` (the role file's path plus ".ack"). An acknowledgement names its term, so one left
  over from an earlier term never counts for a later one.

The file is removed when consul-elect exits.
"""

from __future__ import annotations

import json
import logging
import os

from .clock import CLOCK_NAME, utc_now_iso
from .config import ACK_SUFFIX

log = logging.getLogger("consul_elect.watchdog")

LEADER = "leader"
FOLLOWER = "follower"


def ack_path(path: str) -> str:
    return path + ACK_SUFFIX


def document(role: str, leader: str | None, fencing_token: int | None = None, lease_deadline: float | None = None,
             demoted_from: int | None = None, path: str = "") -> dict:
    return {
        "role": role,
        "fencing_token": fencing_token if role == LEADER else None,
        "lease_deadline": round(lease_deadline, 3) if role == LEADER and lease_deadline is not None else None,
        "lease_clock": CLOCK_NAME,
        "leader": leader,
        "since": utc_now_iso(),
        "demoted_from": demoted_from if role == FOLLOWER else None,
        "ack_file": ack_path(path),
    }


def write(path: str, doc: dict) -> bool:
    """Replace the role file with *doc* in one rename; False (logged) when it cannot be written.

    The role is always told by signal too; a role file that cannot be written (a full disk, a
    tmp cleaner) must not cost the lease, so this never raises.
    """
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(doc) + "\n")
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.warning("cannot write the role file %s: %s", path, e)
        return False


def acknowledged(path: str, term: int) -> bool:
    """Has the command written "follower <term>" to the ack file?"""
    try:
        with open(ack_path(path), "rb") as f:
            words = f.read(64).split()
    except OSError:
        return False
    return len(words) == 2 and words[0] == FOLLOWER.encode() and words[1] == str(term).encode()


def identity(path: str) -> tuple[int, int] | None:
    """Which file *path* is now (device, inode): each write() makes a new one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remove(path: str, only: tuple[int, int] | None = None) -> None:
    """Remove the role file, its .tmp and its .ack; with *only*, nothing unless the role file is
    still that one (identity()), or gone."""
    if only is not None and identity(path) not in (only, None):
        return
    for name in (path, f"{path}.tmp", ack_path(path)):
        try:
            os.unlink(name)
        except OSError:
            pass


def clear_ack(path: str | None) -> None:
    """A new term begins: an old acknowledgement must not even be seen (it would not count)."""
    if path is not None:
        try:
            os.unlink(ack_path(path))
        except OSError:
            pass
