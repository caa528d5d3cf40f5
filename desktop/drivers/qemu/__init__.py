"""The QEMU driver, one module per concern:

* `command`: the pure command line (`build_command`, `Endpoint`, `Forwards`);
* `accel`: the accelerator, chosen by a trial boot and remembered;
* `disk`: the qcow2 data disk (`ensure_disk`);
* `shares`: which transport each shared folder takes (virtiofs, 9p, the guest link);
* `virtiofsd`: the virtiofs helpers, found, started and stopped;
* `driver`: `QemuDriver`, the lifecycle, registered with `desktop.drivers`.
"""

from desktop.drivers.qemu.driver import QemuDriver

__all__ = ["QemuDriver"]
