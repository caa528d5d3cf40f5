"""The Hyper-V driver (Windows), one module per concern:

* `powershell`: runs one PowerShell script and returns its JSON answer (and `Recorded`,
  the fake that answers from transcripts in tests);
* `scripts`: the pure script builders and the readers of their answers;
* `driver`: `HyperVDriver`, the lifecycle, registered with `desktop.drivers`; `setup`
  registers the guest link's hvsock service (`cove setup hyperv`).

It imports on any host (the registry imports it everywhere); only running it needs
Windows.
"""

from desktop.drivers.hyperv.driver import HyperVDriver, main, setup

__all__ = ["HyperVDriver", "main", "setup"]
