"""Leases on shared work (the spool, the webhooks' outbox): who holds one, and which holders are gone.

A holder is `host:pid:token`. Work leased by a process that died waits for its lease to run out, unless a
process on the same host sees at start that the holder is gone: its pid no longer runs, or it is this
very pid with another token (a container restarted with the same pid 1). Holders on other hosts are
never judged: only their leases' expiry frees their work.
"""
from __future__ import annotations

import os
import secrets
import socket


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def gone(owner: str, me: str, alive=None) -> bool:
    """True when `owner` held leases in an earlier process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    my_host, _, my_rest = me.partition(":")
    pid_text, _, _token = rest.partition(":")
    if owner == me or host != my_host or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == int(my_rest.partition(":")[0]):
        return True  # our pid, another token: an earlier incarnation
    return not (alive or _alive)(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: running
    return True
