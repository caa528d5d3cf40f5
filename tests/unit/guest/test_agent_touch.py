"""The agent's "touch" op (guest_engine.agent.Agent.touch): host-side changes replayed as
chmods inside mounted shares, and nowhere else. Shares are plain folders under tmp_path."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from guest_engine import agent, boot


class Tree:
    def __init__(self, root: Path) -> None:
        self.share = root / "share"
        self.sibling = root / "share2"  # shares a prefix with the share, is not in it
        self.outside = root / "outside"
        self.broken = root / "broken"  # a share whose mount failed
        for d in (self.share, self.share / "sub", self.sibling, self.outside, self.broken):
            d.mkdir()
        self.file = self.share / "f.txt"
        self.deep = self.share / "sub" / "g.sh"
        self.secret = self.outside / "secret"
        self.sibling_file = self.sibling / "f"
        self.broken_file = self.broken / "f"
        for f in (self.file, self.deep, self.secret, self.sibling_file, self.broken_file):
            f.write_text("x")
            f.chmod(0o644)
        # A folder inside the share that leads out of it, and a file link that does.
        (self.share / "link").symlink_to(self.outside, target_is_directory=True)
        (self.share / "flink").symlink_to(self.secret)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


@pytest.fixture
def ag(tree: Tree) -> agent.Agent:
    info = boot.BootInfo()
    info.shares = [
        {"path": str(tree.share), "tag": "cove0", "transport": "9p", "error": ""},
        {"path": str(tree.broken), "tag": "cove1", "transport": "virtiofs",
         "error": "mount -t virtiofs cove1 ... exited 32"},
    ]
    return agent.Agent(info)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_touch_applies_the_mode(ag: agent.Agent, tree: Tree) -> None:
    n = ag.touch([[str(tree.file), 0o600], [str(tree.deep), stat.S_IFREG | 0o755]])
    assert n == 2
    assert _mode(tree.file) == 0o600
    assert _mode(tree.deep) == 0o755  # the file-type bits of st_mode are dropped


def test_touch_keeps_special_bits_but_nothing_above(ag: agent.Agent, tree: Tree) -> None:
    assert ag.touch([[str(tree.file), 0o1_000_000 | 0o2750]]) == 1
    assert _mode(tree.file) == 0o2750


def test_touch_a_folder_in_the_share(ag: agent.Agent, tree: Tree) -> None:
    assert ag.touch([[str(tree.share / "sub"), 0o750]]) == 1
    assert _mode(tree.share / "sub") == 0o750


@pytest.mark.parametrize("which", ["secret", "sibling", "broken", "dotdot", "via-link",
                                   "file-link", "relative", "double-slash"])
def test_touch_refuses_what_is_outside_a_share(ag: agent.Agent, tree: Tree, which: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path, target = {
        "secret": (str(tree.secret), tree.secret),
        "sibling": (str(tree.sibling_file), tree.sibling_file),  # /x/share2 is not /x/share
        "broken": (str(tree.broken_file), tree.broken_file),  # its mount failed
        "dotdot": (f"{tree.share}/../outside/secret", tree.secret),
        "via-link": (str(tree.share / "link" / "secret"), tree.secret),
        "file-link": (str(tree.share / "flink"), tree.secret),
        "relative": ("f.txt", tree.file),
        "double-slash": ("/" + str(tree.file), tree.file),
    }[which]
    monkeypatch.chdir(tree.share)  # so that a relative path would resolve into the share
    assert ag.touch([[path, 0o600]]) == 0
    assert _mode(target) == 0o644


def test_touch_ignores_bad_items_and_counts_the_rest(ag: agent.Agent, tree: Tree) -> None:
    good = str(tree.file)
    changes = [None, 5, [], [good], [good, "rw"], [good, None], (good,), "ab",
               {"path": good, "mode": 0o600},  # not [path, mode]: KeyError, ignored
               [good, 0o600, "extra"],  # counts: what follows [path, mode] is ignored
               [str(tree.share / "gone"), 0o600],  # removed again since: not counted
               [str(tree.deep), "493"]]  # 0o755 as a decimal string still counts
    assert ag.touch(changes) == 2
    assert _mode(tree.file) == 0o600
    assert _mode(tree.deep) == 0o755


def test_touch_with_no_shares(tree: Tree) -> None:
    a = agent.Agent(boot.BootInfo())
    assert a.touch([[str(tree.file), 0o600]]) == 0
    assert _mode(tree.file) == 0o644


def test_touch_op(ag: agent.Agent, tree: Tree) -> None:
    assert ag.handle({"op": "touch", "changes": [[str(tree.file), 0o640],
                                                 [str(tree.secret), 0o600]]}) == {
        "ok": True, "result": 1}
    assert _mode(tree.file) == 0o640 and _mode(tree.secret) == 0o644
    assert ag.handle({"op": "touch"}) == {"ok": True, "result": 0}
    assert ag.handle({"op": "touch", "changes": None}) == {"ok": True, "result": 0}


def test_a_shares_own_top_folder_can_be_touched(ag: agent.Agent, tree: Tree) -> None:
    """A file created at the top of a share is reported on the share itself."""
    tree.share.chmod(0o755)
    assert ag.touch([[str(tree.share), 0o750]]) == 1
    assert _mode(tree.share) == 0o750
    assert ag.touch([[str(tree.broken), 0o700]]) == 0  # its mount failed: not a share


def test_a_folder_swapped_for_a_symlink_meanwhile_never_leads_the_chmod_out(
        ag: agent.Agent, tree: Tree) -> None:
    """A container flips share/d between a folder and a symlink to outside while the host
    reports changes in it: VM root must never chmod the file outside."""
    import os
    import threading

    d, real = tree.share / "d", tree.share / "d.real"
    real.mkdir()
    (real / "secret").write_text("x")
    (tree.outside / "secret").chmod(0o644)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            for target in (real, tree.outside):
                tmp = tree.share / "d.tmp"
                tmp.symlink_to(target, target_is_directory=True)
                os.replace(tmp, d)

    (tree.share / "d").symlink_to(real, target_is_directory=True)
    t = threading.Thread(target=flip, daemon=True)
    t.start()
    try:
        for _ in range(3000):
            ag.touch([[str(d / "secret"), 0o600]])
    finally:
        stop.set()
        t.join()
    assert _mode(tree.outside / "secret") == 0o644


def test_a_path_changed_after_the_hosts_reading_is_left_alone(ag: agent.Agent,
                                                              tree: Tree) -> None:
    """The host read 0644 and its change time; then a container made the file
    executable. The host's older mode must not undo that (it raced a `chmod +x`)."""
    read = tree.file.stat()
    time.sleep(0.01)
    tree.file.chmod(0o755)  # the container's chmod, after the host's reading
    assert ag.touch([[str(tree.file), stat.S_IMODE(read.st_mode), read.st_ctime_ns]]) == 0
    assert _mode(tree.file) == 0o755
    now = tree.file.stat()  # a reading after the chmod: applied (the same mode here)
    assert ag.touch([[str(tree.file), 0o700, now.st_ctime_ns]]) == 1
    assert _mode(tree.file) == 0o700
