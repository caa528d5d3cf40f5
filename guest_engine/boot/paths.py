"""The VM's fixed places that several boot steps, the engine and the agent use."""

from __future__ import annotations

from pathlib import Path

DATA_MOUNT = Path("/mnt/data")  # the data disk (`disk.setup_data_disk`)
LOG_DIR = DATA_MOUNT / "log"  # the engine's logs
RUN_DIR = Path("/run/cove")  # the agent's own files: its log, pid file, DHCP script
VM_ROOT_HOME = RUN_DIR / "root"  # root's home, out of /root (`shares.relocate_root_home`)
