"""Fuzzing the settings parser (desktop.settings, desktop.instance.load_settings): any
JSON (and any file) gives Settings that pass their own checks, or a SettingsError whose
message names the problem; never another exception."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import example, given
from hypothesis import strategies as st

from desktop import settings
from desktop.instance import Instance
from desktop.platform.paths import WindowsPaths
from desktop.settings import Settings, SettingsError

FIELDS = ["cpus", "memory_mib", "disk_gib", "arch", "engine_config",
          "expose_ports_on_all_interfaces", "shares", "docker_engine_pipe"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10)
share_entries = st.one_of(
    st.sampled_from(["/home/me", "/home/me/src", "/", "//etc", "/home/me/", "relative",
                     "/var/lib/docker/x", "/tmp", "C:\\Users\\me", "c:/Users/me", "\\\\srv\\s",
                     "/home/me/../me", ""]),
    st.text(max_size=16),
    st.fixed_dictionaries({"path": st.one_of(st.sampled_from(["/home/x", "/opt/y"]),
                                             json_values)},
                          optional={"transport": st.one_of(
                              st.sampled_from(["auto", "virtiofs", "9p", "link", "nfs"]),
                              json_values), "extra": json_values}),
    json_values)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "cpus": st.one_of(st.integers(-2, 16), json_values),
    "memory_mib": st.one_of(st.integers(0, 20000), st.sampled_from([512, 2048, 1e3]),
                            json_values),
    "disk_gib": st.one_of(st.integers(0, 5000), json_values),
    "arch": st.one_of(st.sampled_from(["amd64", "arm64", "riscv64"]), json_values),
    "engine_config": json_values,
    "expose_ports_on_all_interfaces": json_values,
    "shares": st.one_of(st.lists(share_entries, max_size=18), json_values),
    "docker_engine_pipe": json_values,
}
settings_objects = st.one_of(
    st.fixed_dictionaries({}, optional={k: v for k, v in field_values.items()}),
    st.dictionaries(st.sampled_from([*FIELDS, "cpu", "memory", ""]), json_values, max_size=4),
    json_values)


def _fixed_host() -> Any:
    """A host of 8 CPUs and 16 GiB, as the unit tests' (the checks compare with it)."""
    return mock.patch.multiple(settings, host_cpus=lambda: 8,
                               host_memory=lambda: 16 * settings.GIB)


@given(settings_objects)
@example({"cpus": True})
@example({"shares": [{"path": "/home/x", "transport": ["9p"]}]})
@example({"memory_mib": float("nan")})
@example({"engine_config": {"": float("nan")}})
def test_any_json_gives_settings_or_a_settings_error(data: Any) -> None:
    with _fixed_host():
        try:
            s = Settings.from_json(data, "settings.json")
        except SettingsError as e:
            assert str(e)
            return
        s.validate()
        again = Settings.from_json(json.loads(json.dumps(s.to_json())))
        # As JSON: a NaN in engine_config is written and read back, and is not == itself.
        assert json.dumps(again.to_json(), sort_keys=True) == \
            json.dumps(s.to_json(), sort_keys=True)


@given(st.one_of(settings_objects.map(lambda d: json.dumps(d).encode()),
                 st.binary(max_size=64),
                 st.sampled_from([b"[" * 100_000, b'{"cpus": ' * 50_000, b"\xef\xbb\xbf{}",
                                  b"", b"{", b"NaN", b'{"cpus": 1e999}'])))
@example(b"[" * 100_000)
def test_any_settings_file_loads_or_names_itself_in_the_error(text: bytes) -> None:
    home = Path(tempfile.mkdtemp(prefix="cove-fuzz-settings-"))
    try:
        inst = Instance("t", home=home)
        inst.ensure_folder()
        inst.settings_file.write_bytes(text)
        with _fixed_host():
            try:
                inst.load_settings().validate()
            except SettingsError as e:
                assert str(inst.settings_file) in str(e)
    finally:
        shutil.rmtree(home)


@given(st.one_of(st.lists(share_entries, max_size=18), json_values))
def test_windows_shares_parse_or_are_refused(entries: Any) -> None:
    try:
        parsed = settings.parse_shares(entries, WindowsPaths())
    except SettingsError as e:
        assert str(e).startswith("shares:")
        return
    for path, transport in parsed:
        assert path == WindowsPaths().normalize(path)
        assert transport in settings.SHARE_TRANSPORTS
