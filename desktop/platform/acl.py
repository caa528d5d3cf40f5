"""Folders only their user may read: Cove's home ($COVE_HOME), each instance's folder (the
link token in boot.json, the SSH key, the data disk), the Windows engine's folder.

On Linux and macOS the folders are made 0700 where they are created; `make_private`
does nothing there. On Windows the umask means nothing, and a folder outside the
profile (``D:\\cove``) inherits its drive's ACL, which lets every local user read. There
`make_private` sets an explicit, protected DACL (`private_sddl`: nothing inherited from
the parent): full control for the user, SYSTEM and Administrators, inherited by every
file and folder inside (``OICI``), those already there included.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from desktop.platform import _win32


def private_sddl(user_sid: str) -> str:
    """A protected DACL ("P": no inherited entries) granting full file access ("FA") to
    `user_sid`, SYSTEM ("SY") and the built-in Administrators ("BA"), each entry inherited
    by files ("OI") and folders ("CI") inside."""
    if not _win32.SID_PATTERN.fullmatch(user_sid):
        raise ValueError(f"{user_sid!r} is not a SID in string form (S-1-...)")
    return f"D:P(A;OICI;FA;;;{user_sid})(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"


def make_private(path: Path, api: Any = None) -> None:
    """Let only the current user (and SYSTEM and Administrators) into folder `path`, and
    into what it holds. POSIX: nothing (the folder is made 0700 where it is created).
    Windows: an OSError (`Win32Error`) when the DACL cannot be set."""
    if sys.platform != "win32":
        return
    api = api or _win32.load()
    api.set_protected_dacl(str(path), private_sddl(api.current_user_sid()))
