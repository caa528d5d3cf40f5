"""Resource Saver's decision to rest (desktop.backend.rest.ResourceSaver), alone: the
guest is asked to give its memory back before the pause, and a use that arrives while
it does so keeps the VM awake; the pause waits while the host's QEMU still gives memory
back (`wait_given_back`)."""

from __future__ import annotations

from collections.abc import Callable

from desktop.backend.rest import ResourceSaver, wait_given_back


class _VM:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.saver = ResourceSaver(lambda: self.log.append("pause"),
                                   lambda: self.log.append("resume"), lambda: 0,
                                   lambda m: self.log.append("rested"),
                                   lambda s, why: self.log.append("woke"),
                                   minutes=0.0001, prepare=self.prepare)
        self.use_while_preparing = False

    def prepare(self) -> None:
        self.log.append("release")
        if self.use_while_preparing:
            self.saver.wake("docker")


def _idle(vm: _VM) -> None:
    vm.saver._last_use = vm.saver._last_request = vm.saver._last_check = -1e9


def test_the_guest_releases_its_memory_then_the_vcpus_pause() -> None:
    vm = _VM()
    _idle(vm)
    assert vm.saver.tick() is True
    assert vm.log == ["release", "pause", "rested"] and vm.saver.resting


def test_a_use_while_the_guest_releases_memory_keeps_the_vm_awake() -> None:
    vm = _VM()
    _idle(vm)
    vm.use_while_preparing = True
    assert vm.saver.tick() is False
    assert vm.log == ["release"] and not vm.saver.resting


# -- waiting for the guest's reports to reach the host ---------------------------------

class _Clock:
    """A clock the waits advance: `sleep` moves it on, `rss` reads a script of it."""

    def __init__(self, falls: dict[float, int], start: int = 1000 << 20) -> None:
        self.now = 0.0
        self.falls = falls  # from this second on, the process holds this many MiB less
        self.start = start
        self.reads = 0

    def rss(self) -> int | None:
        self.reads += 1
        fell = max((mib for t, mib in self.falls.items() if t <= self.now), default=0)
        return self.start - (fell << 20)

    def sleep(self, s: float) -> None:
        self.now += s


def _wait(c: _Clock, go_on: Callable[[], bool] = lambda: True,
          rss: Callable[[], int | None] | None = None) -> tuple[int, float]:
    return wait_given_back(rss or c.rss, go_on, quiet=3.0, longest=30.0, every=0.5,
                           clock=lambda: c.now, sleep=c.sleep)


def test_the_wait_lasts_while_the_memory_falls_in_passes_then_ends_when_it_is_quiet() -> None:
    # Three of the kernel's passes, 2 s apart, as a large cache is reported.
    c = _Clock({2.0: 200, 4.0: 400, 6.0: 500})
    fell, waited = _wait(c)
    assert fell == 500 << 20
    assert waited == 9.0  # quiet for 3 s after the last fall, at 6 s


def test_memory_that_never_falls_is_waited_for_the_quiet_time_alone() -> None:
    c = _Clock({})
    assert _wait(c) == (0, 3.0)


def test_a_fall_smaller_than_noise_does_not_extend_the_wait() -> None:
    c = _Clock({1.0: 0})
    c.start += 1 << 19
    assert _wait(c, rss=lambda: c.start - (int(c.now >= 1.0) << 19))[1] == 3.0


def test_memory_that_keeps_falling_is_waited_for_at_most_the_longest() -> None:
    c = _Clock({t / 2: int(t) for t in range(1, 200)})
    fell, waited = _wait(c)
    assert waited == 30.0 and fell == 60 << 20


def test_a_use_ends_the_wait_at_once() -> None:
    c = _Clock({2.0: 200, 4.0: 400})
    used_at = 1.0
    fell, waited = _wait(c, go_on=lambda: c.now < used_at)
    assert waited == 1.0 and fell == 0


def test_a_process_that_cannot_be_read_is_not_waited_for() -> None:
    c = _Clock({})
    assert _wait(c, rss=lambda: None) == (0, 0.0)
    gone = iter([1 << 30, None])
    assert _wait(c, rss=lambda: next(gone)) == (0, 0.5)


def test_the_saver_is_no_longer_idle_once_a_use_comes() -> None:
    vm = _VM()
    _idle(vm)
    assert vm.saver.still_idle()
    vm.saver.touch()
    assert not vm.saver.still_idle()
