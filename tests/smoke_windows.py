"""A smoke test of Cove's Windows code on a real Windows host: `python -m tests.smoke_windows`.

What the unit tests can only fake on Linux, run against the real Win32 API:

* a named pipe made the way the backend makes its engine pipe (the current user's and
  SYSTEM's DACL, remote clients rejected), a client connecting to it, bytes both ways
  and the end-of-stream message;
* a second server on the same name refused (the squatter check);
* the Hyper-V driver's availability probe answering with a reason, not crashing;
* the engine switch's checks answering (`cove engine status`).

Exit status 0 when every step passed. Used by .github/workflows/platforms.yml.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading


def main() -> int:
    if sys.platform != "win32":
        print("tests.smoke_windows runs on Windows only", file=sys.stderr)
        return 2
    from desktop.platform import _windows, winpipe

    api, security = _windows._api_and_security()
    print("user SDDL:", winpipe.sddl_for(api.current_user_sid()))
    name = winpipe.PIPE_PREFIX + f"cove-smoke-{os.getpid()}"
    server = winpipe.PipeServer(api, name, security)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        got.append(data)
        conn.sendall(b"pong:" + data)
        conn.shutdown(1)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = winpipe.connect(api, name, 10)
    client.sendall(b"ping")
    client.shutdown(1)  # the end-of-stream message
    reply = b""
    while chunk := client.recv(65536):
        reply += chunk
    client.close()
    t.join(10)
    assert got == [b"ping"], got
    assert reply == b"pong:ping", reply
    print("named pipe: round trip and end of stream ok")
    try:
        winpipe.PipeServer(api, name, security)
    except winpipe.PipeTakenError as e:
        print("named pipe: a second server is refused:", e)
    else:
        raise AssertionError("a second server on the same pipe name was not refused")
    server.close()

    from desktop.drivers import hyperv

    ok, why = hyperv.HyperVDriver("amd64").available()
    print(f"hyper-v driver available: {ok} {why}")

    subprocess.run([sys.executable, "-m", "desktop", "engine", "status"], check=True)
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
