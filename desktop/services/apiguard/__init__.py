"""The guard on Cove's docker.sock: a relay that refuses bind mounts the VM cannot see.

Host folders are shared into the VM at the same path (the *shares*). A bind mount of a
host path outside every share would silently mount a folder of the VM instead (empty,
or the VM's own), so requests that would make one are answered here, on the host, with
a 400 whose message names the path and the fix; the docker CLI prints it as "Error
response from daemon: ...". Everything else passes as it was sent.

The guard is a convenience, not a security boundary: whoever can reach docker.sock is
root in the VM anyway (``docker run --privileged`` can mount anything the VM has). It
must still not be bypassed by a spelling the engine reads differently than the guard,
and it must never break normal docker traffic. So:

* HTTP/1.1 is parsed with h11 (`relay`), and each request reaches the engine written
  anew from what h11 read; the connection becomes raw bytes only when the engine says
  so (a 101, or the raw stream of an attach or exec). What h11 cannot read is answered
  with an error and the connection closed.
* Requests are recognised on the path the engine routes (`routes`: percent-decoded,
  cleaned, any ``/v<version>`` prefix) and their JSON bodies are read as Go reads them
  (`body`: keys of any case, every duplicate, UTF-8 only).
* Checked are container creations (``HostConfig.Binds``, ``HostConfig.Mounts`` and the
  same fields at the top level), services (``TaskTemplate.ContainerSpec.Mounts``) and
  volume creations: a local volume with ``o=bind`` is a bind mount of its ``device``,
  in ``DriverOpts`` or in a mount's ``VolumeOptions.DriverConfig.Options``.
* A checked body over 32 MiB is refused (413), one that is not UTF-8 JSON too (400),
  and a check that fails refuses its request (500): nothing checked passes unchecked.

On Windows, shared folders appear in the VM under /mnt/host (`desktop.platform.paths`),
so a request whose binds name Windows paths (``C:\\Users\\me\\src:/src``,
``c:/Users/me/src:/src``, ``//c/Users/me/src:/src``, a bind mount's Source, a bind
volume's device) is rewritten to the VM's paths before the engine sees it, and one that
names a path outside every share is refused as above. Which rules apply is decided by
the path style passed to `make_check`, not by the platform.

The policy is a set of pure functions (`bind_sources`, `outside_shares`, `refusal`,
`windows_binds`) that `make_check` puts together.
"""

from desktop.services.apiguard.policy import (
    VM_PATHS,
    Check,
    bind_sources,
    make_check,
    outside_shares,
    refusal,
    suggested_share,
    windows_binds,
)
from desktop.services.apiguard.relay import guarded_pipe

__all__ = ["VM_PATHS", "Check", "bind_sources", "guarded_pipe", "make_check",
           "outside_shares", "refusal", "suggested_share", "windows_binds"]
