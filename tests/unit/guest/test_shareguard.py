"""The share guard's loader (guest_engine.boot.shareguard) against a stand-in bpftool that
pins what the real one pins with `loadall ... autoattach` (one link per program, named
after it); the BPF object itself is compiled and checked in tests/unit/image, and runs on
the real VM in tests/integration/test_shares.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from guest_engine.boot import shareguard


class Bpftool:
    """`system.run` for bpftool: `prog loadall OBJ DIR autoattach` makes DIR and a pin per
    program it attaches (`attach`), or exits 255 as bpftool does when the load fails."""

    def __init__(self, attach: tuple[str, ...] = shareguard.PROGRAMS, fail: str = "") -> None:
        self.attach, self.fail = attach, fail
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], check: bool = True, timeout: float = 60,
                 pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
        self.calls.append(list(cmd))
        assert cmd[:3] == ["bpftool", "prog", "loadall"] and cmd[-1] == "autoattach"
        if self.fail:
            raise RuntimeError(f"{' '.join(cmd)} exited 255: {self.fail}")
        pins = Path(cmd[4])
        pins.mkdir()  # bpftool refuses a folder that exists: the loader must clear it
        for name in self.attach:
            (pins / name).write_text("")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def where(tmp_path: Path) -> dict[str, Path]:
    obj = tmp_path / "share-guard.bpf.o"
    obj.write_bytes(b"\x7fELF")
    lsm = tmp_path / "lsm"
    lsm.write_text("lockdown,capability,landlock,yama,apparmor,tomoyo,bpf,ipe,ima,evm")
    return {"obj": obj, "pin_dir": tmp_path / "bpf" / "cove-share-guard", "lsm_list": lsm}


@pytest.fixture
def bpftool(monkeypatch: pytest.MonkeyPatch) -> Bpftool:
    tool = Bpftool()
    monkeypatch.setattr(shareguard.system, "run", tool)
    return tool


def test_loads_and_attaches_both_hooks(where: dict[str, Path], bpftool: Bpftool) -> None:
    where["pin_dir"].parent.mkdir()
    assert shareguard.load(**where) == sorted(shareguard.PROGRAMS)
    assert bpftool.calls == [["bpftool", "prog", "loadall", str(where["obj"]),
                              str(where["pin_dir"]), "autoattach"]]
    assert shareguard.loaded(where["pin_dir"]) == sorted(shareguard.PROGRAMS)


def test_an_agent_started_again_finds_the_guard_in_place(where: dict[str, Path],
                                                          bpftool: Bpftool) -> None:
    where["pin_dir"].parent.mkdir()
    shareguard.load(**where)
    assert shareguard.load(**where) == sorted(shareguard.PROGRAMS)
    assert len(bpftool.calls) == 1  # not loaded twice (bpftool would refuse the folder)


def test_a_half_done_load_is_cleared_and_done_again(where: dict[str, Path],
                                                     bpftool: Bpftool) -> None:
    where["pin_dir"].mkdir(parents=True)
    (where["pin_dir"] / "cove_share_chmod").write_text("")  # the agent died mid-load
    assert shareguard.load(**where) == sorted(shareguard.PROGRAMS)
    assert len(bpftool.calls) == 1


def test_a_kernel_without_the_bpf_lsm_is_named(where: dict[str, Path],
                                               bpftool: Bpftool) -> None:
    where["lsm_list"].write_text("lockdown,capability,landlock,yama,apparmor\n")
    with pytest.raises(RuntimeError, match=r"BPF LSM is not active \(active: lockdown,"
                                           r"capability,landlock,yama,apparmor\); boot with "
                                           r"lsm=\.\.\.,bpf"):
        shareguard.load(**where)
    assert bpftool.calls == []


def test_no_securityfs_is_named(where: dict[str, Path], bpftool: Bpftool) -> None:
    where["lsm_list"].unlink()
    with pytest.raises(RuntimeError, match="securityfs not mounted"):
        shareguard.load(**where)


def test_an_image_without_the_object_is_named(where: dict[str, Path],
                                              bpftool: Bpftool) -> None:
    where["obj"].unlink()
    with pytest.raises(RuntimeError, match="share-guard.bpf.o is missing from the image"):
        shareguard.load(**where)
    assert bpftool.calls == []


def test_a_load_the_verifier_refuses_is_an_error(where: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    where["pin_dir"].parent.mkdir()
    monkeypatch.setattr(shareguard.system, "run",
                        Bpftool(fail="libbpf: failed to load object"))
    with pytest.raises(RuntimeError, match="exited 255: libbpf: failed to load object"):
        shareguard.load(**where)


def test_one_hook_attached_is_not_enough(where: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    where["pin_dir"].parent.mkdir()
    monkeypatch.setattr(shareguard.system, "run", Bpftool(attach=("cove_share_chmod",)))
    with pytest.raises(RuntimeError, match=r"bpftool attached \['cove_share_chmod'\], not"):
        shareguard.load(**where)
