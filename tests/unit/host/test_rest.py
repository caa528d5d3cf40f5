"""Resource Saver's decision to rest (desktop.backend.rest.ResourceSaver), alone: the
guest is asked to give its memory back before the pause, and a use that arrives while
it does so keeps the VM awake."""

from __future__ import annotations

from desktop.backend.rest import ResourceSaver


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
