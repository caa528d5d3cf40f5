"""SSH into the VM: the per-instance key, an ssh_config entry, and `cove shell`.

The VM runs dropbear (key login only) on port 22, forwarded to a localhost port the
backend picks at each boot. The instance's key pair lives in its folder (``ssh_key``,
0600); the public half reaches the guest in the boot config. ``ssh_config`` in the
instance folder is kept current for other tools (IDEs, `ssh -F`).
"""

from __future__ import annotations

import io
import logging
import os
import select
import shutil
import socket
import sys
import threading
from pathlib import Path

import paramiko

from desktop import home
from desktop.platform.files import atomic_write

log = logging.getLogger(__name__)

USER = "root"


def ensure_key(folder: Path) -> str:
    """Create the instance's key pair once; return the public key line.

    Each file is written atomically, the private key first; a public key that is missing
    (a crash between the two) is derived again from the private one. A private key that
    cannot be read is moved aside (ssh_key.broken, never overwritten) and a new pair
    made: it only ever opened this instance's VM, whose next boot gets the new public
    key."""
    key_path, pub_path = folder / home.SSH_KEY, folder / home.SSH_KEY_PUB
    key: paramiko.ECDSAKey | None = None
    if key_path.exists():
        try:
            key = paramiko.ECDSAKey.from_private_key_file(str(key_path))
        except (OSError, paramiko.SSHException, ValueError) as e:
            aside = key_path.with_name(key_path.name + ".broken")
            log.warning("the instance's SSH key %s cannot be read (%s); kept as %s, and a "
                        "new one made", key_path, e, aside)
            os.replace(key_path, aside)
    if key is None:
        key = paramiko.ECDSAKey.generate(bits=256)
        text = io.StringIO()
        key.write_private_key(text)
        atomic_write(key_path, text.getvalue(), 0o600)
        pub_path.unlink(missing_ok=True)
    line = f"{key.get_name()} {key.get_base64()} cove"
    try:
        if pub_path.read_text().strip() == line:
            return line
    except OSError:
        pass
    atomic_write(pub_path, line + "\n", 0o644)
    return line


def write_config(folder: Path, host_alias: str, port: int) -> Path:
    path = folder / home.SSH_CONFIG
    atomic_write(path, (
        f"Host {host_alias}\n"
        f"  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        f"  User {USER}\n"
        f"  IdentityFile {folder / home.SSH_KEY}\n"
        "  IdentitiesOnly yes\n"
        # The host key is made anew at each boot, on a port only this user's backend
        # forwards: there is nothing for known_hosts to pin.
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
    ), 0o600)
    return path


def connect(folder: Path, port: int, timeout: float = 10) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    key = paramiko.ECDSAKey.from_private_key_file(str(folder / home.SSH_KEY))
    client.connect("127.0.0.1", port=port, username=USER, pkey=key, timeout=timeout,
                   allow_agent=False, look_for_keys=False)
    transport = client.get_transport()
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):  # TCP_NODELAY: 44 ms less per round trip
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def run(folder: Path, port: int, command: str, feed_stdin: bool = False) -> int:
    """Run `command` in the VM, streaming its output (and our stdin, if asked);
    returns its exit status."""
    client = connect(folder, port)
    try:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command(command)
        if feed_stdin:
            def pump() -> None:
                try:
                    while data := os.read(sys.stdin.fileno(), 65536):
                        chan.sendall(data)
                finally:
                    chan.shutdown_write()

            threading.Thread(target=pump, daemon=True).start()
        else:
            chan.shutdown_write()
        while True:
            if chan.recv_ready():
                sys.stdout.buffer.write(chan.recv(65536))
                sys.stdout.flush()
            if chan.recv_stderr_ready():
                sys.stderr.buffer.write(chan.recv_stderr(65536))
                sys.stderr.flush()
            if chan.exit_status_ready() and not chan.recv_ready() \
                    and not chan.recv_stderr_ready():
                break
            select.select([chan], [], [], 0.1)
        return chan.recv_exit_status()
    finally:
        client.close()


def interactive(folder: Path, port: int) -> int:
    """An interactive login shell on this terminal (raw mode while it runs)."""
    import termios
    import tty

    client = connect(folder, port)
    try:
        cols, rows = shutil.get_terminal_size()
        chan = client.invoke_shell(term=os.environ.get("TERM", "xterm"), width=cols,
                                   height=rows)
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        try:
            tty.setraw(fd)
            while True:
                r, _, _ = select.select([chan, fd], [], [])
                if chan in r:
                    data = chan.recv(65536)
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                if fd in r:
                    data = os.read(fd, 1024)
                    if not data:
                        break
                    chan.sendall(data)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        return chan.recv_exit_status() if chan.exit_status_ready() else 0
    finally:
        client.close()
