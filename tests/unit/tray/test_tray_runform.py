"""The Dashboard's Run form: its text as the engine's create options, and each mistake
named with its fix (desktop.tray.runform)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.tray.runform import RunDialog, RunFormError, parse_run  # noqa: E402

SHARES = ["/home/me", "/tmp"]


def test_a_whole_form_becomes_the_run_options() -> None:
    spec = parse_run(" nginx:1.27 ", "web", "8080:80, 127.0.0.1:8443:443\n5353:53/udp",
                     "/home/me/site:/usr/share/nginx/html:ro\n/tmp/x/:/data",
                     "MODE=dev\nEMPTY=\n", "unless-stopped", SHARES,
                     command="sh -c 'exec httpd -f -p 80'")
    assert spec.create_kwargs() == {
        "detach": True, "name": "web",
        "ports": {"80/tcp": 8080, "443/tcp": ("127.0.0.1", 8443), "53/udp": 5353},
        "volumes": {"/home/me/site": {"bind": "/usr/share/nginx/html", "mode": "ro"},
                    "/tmp/x": {"bind": "/data", "mode": "rw"}},
        "environment": ["MODE=dev", "EMPTY="],
        "restart_policy": {"Name": "unless-stopped"},
        "command": ["sh", "-c", "exec httpd -f -p 80"]}
    assert parse_run("busybox", "", "", "", "", "no", []).create_kwargs() == {"detach": True}


@pytest.mark.parametrize(("field", "value", "says"), [
    ("ports", "80", "Ports: '80' is not HOST:CONTAINER (e.g. 8080:80"),
    ("ports", "8080:99999", "Ports: '8080:99999' is not HOST:CONTAINER"),
    ("ports", "8080:80/sctp", "Ports: '8080:80/sctp' is not HOST:CONTAINER"),
    ("binds", "/srv/data:/data", "Folders: /srv/data is not in a folder Cove shares with the "
                                 "VM (shared: /home/me, /tmp); share it in Settings > Shared "
                                 "folders (or `cove shares add /srv/data`), which restarts"),
    ("binds", "/home/meat:/x", "Folders: /home/meat is not in a folder Cove shares"),
    ("binds", "site:/x", "Folders: 'site' is not a full path on this computer"),
    ("binds", "/home/me:relative", "Folders: '/home/me:relative' is not HOST_FOLDER:"),
    ("env", "JUST_A_NAME", "Environment: 'JUST_A_NAME' is not NAME=VALUE"),
    ("name", "-web", "Name: '-web' may hold letters, digits, _ . and - only"),
    ("name", "we b", "Name: 'we b' may hold"),
    ("image", " ", "Image: name the image to run"),
    ("command", "sh -c 'unclosed", "Command: No closing quotation (quote as a shell does)"),
])
def test_each_mistake_names_its_field_and_fix(field: str, value: str, says: str) -> None:
    form = {"image": "nginx", "name": "", "ports": "", "binds": "", "env": "",
            "restart": "no", "command": "", field: value}
    with pytest.raises(RunFormError) as e:
        parse_run(form["image"], form["name"], form["ports"], form["binds"], form["env"],
                  form["restart"], SHARES, form["command"])
    assert str(e.value).startswith(says)


def test_the_dialog_keeps_a_bad_form_open_with_the_reason(qtbot: QtBot) -> None:
    dlg = RunDialog("nginx:1.27", SHARES)
    qtbot.addWidget(dlg)
    dlg.open()
    dlg.ports.setText("eighty")
    dlg.run_button.click()
    assert dlg.isVisible() and dlg.result_spec is None
    assert dlg.error.text().startswith("Ports: 'eighty' is not HOST:CONTAINER")
    dlg.ports.setText("8080:80")
    with qtbot.waitSignal(dlg.accepted, timeout=2000):
        dlg.run_button.click()
    assert dlg.result_spec is not None and dlg.result_spec.ports == {"80/tcp": 8080}
