"""`make run`'s last step: start Cove and show a container running through the host's CLI.

No image can come from a public registry here, so the demo builds one locally: `FROM
scratch` with Debian's static busybox (`busybox-static`), tagged ``cove-hello``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from desktop.instance import Instance

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
HELLO_IMAGE = "cove-hello"


def static_busybox() -> Path:
    for p in BUSYBOX_CANDIDATES:
        path = Path(p)
        # A dynamic busybox names its loader (/lib/ld-linux..., /lib64/ld-linux...).
        if path.exists() and b"/ld-linux" not in path.read_bytes():
            return path
    raise SystemExit("a static busybox is needed for the demo image: "
                     "apt-get install busybox-static")


def build_hello_image(docker: list[str], tag: str = HELLO_IMAGE,
                      env: dict[str, str] | None = None) -> None:
    """Build `tag` (FROM scratch + static busybox) with the given docker command."""
    with tempfile.TemporaryDirectory() as d:
        shutil.copy2(static_busybox(), Path(d) / "busybox")
        (Path(d) / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && '
            'mkdir -p /tmp /root /etc && chmod 1777 /tmp"]\n'
            'CMD ["/bin/sh"]\n'
        )
        subprocess.run([*docker, "build", "-q", "-t", tag, d], check=True,
                       stdout=subprocess.DEVNULL, env=env)


def main() -> int:
    inst = Instance(os.environ.get("COVE_INSTANCE", "default"))
    cove = [sys.executable, "-m", "desktop"]
    if subprocess.run([*cove, "start", "--instance", inst.name]).returncode != 0:
        return 1
    docker = ["docker", "--context", inst.context_name]
    print("\n$ docker version --format '{{.Server.Version}}'")
    subprocess.run([*docker, "version", "--format", "{{.Server.Version}}"], check=True)
    print(f"\n$ docker build -t {HELLO_IMAGE} (FROM scratch + static busybox)")
    build_hello_image(docker)
    print(f"\n$ docker run --rm {HELLO_IMAGE} echo ...")
    subprocess.run([*docker, "run", "--rm", HELLO_IMAGE, "sh", "-c",
                    'echo "Hello from a container in Cove: $(uname -srm)"'], check=True)
    print(f"\nCove is running. Try: docker --context {inst.context_name} ps, "
          "or stop it with: .venv/bin/cove stop")
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        # A desktop session: the tray too (it finds the backend running; a second launch
        # only brings the first one's dashboard forward).
        log = inst.folder / "tray.log"
        with log.open("ab") as out:
            subprocess.Popen([*cove, "desktop", "--instance", inst.name],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True)
        print(f"The Cove tray is starting (its log: {log}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
