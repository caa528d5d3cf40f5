"""The Cove tray app: a tray icon that follows the backend's state, the Dashboard, the
Settings and Troubleshoot windows (PySide6).

`TrayController` (no widgets) is the model of one instance and the way to drive it;
`main` starts the app (`cove desktop`, `cove-desktop`).
"""

from desktop.tray.controller import TrayController
from desktop.tray.model import TrayState


def main(argv: list[str] | None = None) -> int:
    from desktop.tray.app import main as app_main

    return app_main(argv)


__all__ = ["TrayController", "TrayState", "main"]
