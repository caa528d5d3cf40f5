"""`cove backend --instance NAME`: the backend's process, its log (JSON lines in
``backend.log``) and its exit status."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time

from desktop.backend.core import Backend
from desktop.instance import Instance
from desktop.platform.limits import raise_fd_limit
from desktop.platform.sockets import NotASocketError
from desktop.settings import SettingsError

log = logging.getLogger(__name__)

LOG_BYTES = 10 * 2**20
LOG_KEPT = 2


def main(instance: str) -> int:
    inst = Instance(instance)
    inst.ensure_folder()
    # Bounded: a guest that says too much fills at most LOG_BYTES * (LOG_KEPT + 1).
    handler = logging.handlers.RotatingFileHandler(inst.backend_log, maxBytes=LOG_BYTES,
                                                   backupCount=LOG_KEPT)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    limit = raise_fd_limit()
    log.info("open-file limit %d", limit)
    try:
        backend = Backend(inst)
        code = backend.run()
    except (SettingsError, NotASocketError) as e:
        log.error("%s", e)
        return 2
    if backend.restart_requested and _may_restart():
        log.warning("the guest's agent died and the VM stopped itself; starting it again")
        for h in logging.getLogger().handlers:
            h.flush()
        os.environ[RESTARTED_ENV] = str(time.time())
        os.execv(sys.executable, [sys.executable, "-m", "desktop", "backend", "--instance",
                                  inst.name])
    return code


RESTARTED_ENV = "COVE_BACKEND_RESTARTED"  # when this process last booted its VM again
RESTART_WINDOW = 600.0


def _may_restart() -> bool:
    """Once: not again within RESTART_WINDOW of the last restart (a VM that keeps
    stopping itself is an error to show, not to loop on)."""
    try:
        last = float(os.environ.get(RESTARTED_ENV, "0"))
    except ValueError:
        last = 0.0
    return time.time() - last > RESTART_WINDOW


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
