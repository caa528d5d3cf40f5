"""Private folders on Windows (desktop.platform.acl, _win32.set_protected_dacl): the
SDDL, and the Win32 calls it takes, over fake DLLs that answer as advapi32 does
(SetNamedSecurityInfoW returns its error code; the descriptor is LocalAlloc'd)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from desktop.platform import _win32, acl
from desktop.platform._win32 import Win32Error
from tests.helpers.windows_fakes import RecordingDll

SID = "S-1-5-21-1004336348-1177238915-682003330-1001"


def test_the_sddl_grants_the_user_system_and_administrators_only() -> None:
    sddl = acl.private_sddl(SID)
    assert sddl == f"D:P(A;OICI;FA;;;{SID})(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"
    owner, flags = sddl[:2], sddl[2]
    assert owner == "D:" and flags == "P"  # a protected DACL: nothing from the parent
    aces = sddl[3:].strip("()").split(")(")
    assert [a.split(";")[5] for a in aces] == [SID, "SY", "BA"]  # no Everyone, no Users
    assert all(a.split(";")[:3] == ["A", "OICI", "FA"] for a in aces)  # inherited inside


@pytest.mark.parametrize("bad", ["", "WD", "S-1-5-21)(A;OICI;FA;;;WD", "s-1-5-18"])
def test_only_a_sid_goes_into_the_sddl(bad: str) -> None:
    with pytest.raises(ValueError, match="not a SID"):
        acl.private_sddl(bad)


class FakeAdvapi(RecordingDll):
    """kernel32 and advapi32 in one: records each call; SetNamedSecurityInfoW answers
    `set_result` (an error code, as the real one returns)."""

    def __init__(self, set_result: int = 0) -> None:
        super().__init__()
        self.set_result = set_result

    def _ConvertStringSecurityDescriptorToSecurityDescriptorW(self, sddl: str, rev: int,
                                                              out: Any, size: Any) -> int:
        out._obj.value = 0x5D00
        return 1

    def _GetSecurityDescriptorDacl(self, sd: Any, present: Any, dacl: Any,
                                   defaulted: Any) -> int:
        assert getattr(sd, "value", sd) == 0x5D00
        present._obj.value = 1
        dacl._obj.value = 0xDAC1
        return 1

    def _SetNamedSecurityInfoW(self, *args: Any) -> int:
        return self.set_result


def _api(dll: FakeAdvapi) -> _win32.Win32Api:
    return _win32.Win32Api(dll, dll, lambda: 0)


def test_the_dacl_is_set_on_the_folder_protected() -> None:
    dll = FakeAdvapi()
    _api(dll).set_protected_dacl(r"D:\cove", acl.private_sddl(SID))
    names = [c[0] for c in dll.calls]
    assert names == ["ConvertStringSecurityDescriptorToSecurityDescriptorW",
                     "GetSecurityDescriptorDacl", "SetNamedSecurityInfoW", "LocalFree"]
    assert dll.calls[0][1:3] == (acl.private_sddl(SID), 1)  # SDDL_REVISION_1
    _, path, kind, info, owner, group, dacl, sacl = dll.calls[2]
    assert (path, kind) == (r"D:\cove", 1)  # SE_FILE_OBJECT
    assert info == 0x00000004 | 0x80000000  # DACL, protected from inheritance
    assert (owner, group, sacl) == (None, None, None)  # only the DACL changes
    assert getattr(dacl, "value", dacl) == 0xDAC1  # the DACL inside the descriptor
    assert getattr(dll.calls[3][1], "value", dll.calls[3][1]) == 0x5D00  # freed


def test_a_refused_dacl_is_an_error_and_the_descriptor_is_freed() -> None:
    dll = FakeAdvapi(set_result=5)  # ERROR_ACCESS_DENIED
    with pytest.raises(Win32Error) as e:
        _api(dll).set_protected_dacl(r"D:\cove", acl.private_sddl(SID))
    assert e.value.code == 5 and "SetNamedSecurityInfoW" in str(e.value)
    assert dll.calls[-1][0] == "LocalFree"


def test_make_private_on_windows_uses_the_current_user(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    class Api:
        calls: list[tuple[str, str]] = []

        def current_user_sid(self) -> str:
            return SID

        def set_protected_dacl(self, path: str, sddl: str) -> None:
            self.calls.append((path, sddl))

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(_win32, "load", Api)
    acl.make_private(tmp_path / "cove")
    assert Api.calls == [(str(tmp_path / "cove"), acl.private_sddl(SID))]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")
def test_make_private_leaves_posix_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_win32, "load", lambda: pytest.fail("no Win32 API on POSIX"))
    folder = tmp_path / "cove"
    folder.mkdir(mode=0o755)
    before = stat.S_IMODE(os.stat(folder).st_mode)
    acl.make_private(folder)
    assert stat.S_IMODE(os.stat(folder).st_mode) == before


def test_the_windows_engine_folder_is_made_private(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from desktop.windows_engine import engine as winengine

    private: list[Path] = []
    monkeypatch.setattr(winengine, "make_private", private.append)
    path = tmp_path / "windows" / "settings.json"
    winengine.save_settings(path, winengine.WindowsSettings())
    assert private == [path.parent] and path.exists()


class _Api:
    def __init__(self, error: OSError | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.error = error

    def current_user_sid(self) -> str:
        return SID

    def set_protected_dacl(self, path: str, sddl: str) -> None:
        if self.error:
            raise self.error
        self.calls.append((path, sddl))


def test_cove_home_and_instance_folders_are_made_private_on_windows(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$COVE_HOME outside the profile (D:\\cove) would inherit the drive's ACL: the
    folder Cove makes gets the private DACL, parents made as needed."""
    from desktop.platform import files

    monkeypatch.setattr(sys, "platform", "win32")
    api = _Api()
    folder = tmp_path / "cove" / "default"
    files._private_folder_windows(folder, api)
    assert folder.is_dir() and api.calls == [(str(folder), acl.private_sddl(SID))]


def test_a_folder_windows_will_not_make_private_is_an_error_naming_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from desktop.platform import files

    monkeypatch.setattr(sys, "platform", "win32")
    api = _Api(Win32Error("SetNamedSecurityInfoW", 5))
    with pytest.raises(files.NotPrivateError) as e:
        files._private_folder_windows(tmp_path / "cove", api)
    assert str(tmp_path / "cove") in str(e.value) and "COVE_HOME" in str(e.value)
