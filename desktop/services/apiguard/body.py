"""The JSON bodies the docker.sock guard checks, read as the engine's Go decoder reads them.

Go's encoding/json matches an object's keys to struct fields without regard to case (its
folding also takes "ſ" for "s" and "K" for "k"), lets a later duplicate key override or
merge into an earlier one, and, decoding a list into one decoded before, reuses its
elements. So a body is parsed keeping every key and every duplicate (`Object`), and the
guard considers each value the engine could end up with: every member whose key folds to
a field's name, and for the entries of ``Mounts`` lists every entry at the same index.
That may look at more than the engine uses, never at less.

A body must be UTF-8 and JSON (`parse` raises `BodyError`): Go would replace invalid
UTF-8 and carry on, the guard refuses it. `dumps` writes a parsed body back, numbers as
they were written, for the bodies the Windows rules rewrite.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from desktop.services.apiguard.routes import CONTAINER, SERVICE, VOLUME

# Go's folding, ToUpper(ToLower(r)), takes these to ASCII letters; no other rune beyond
# ASCII folds to one, so no other can spell a field's name.
_FOLD = {"\u017f": "S", "\u212a": "K", "\u0131": "I", "\u0130": "I"}


class BodyError(ValueError):
    """A body the guard cannot read; the message says what is wrong with it."""


class Object(list):
    """A JSON object as its [key, value] pairs, in order, duplicate keys kept."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__([k, v] for k, v in pairs)


class Number(str):
    """A JSON number as it was written."""


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python would read NaN and Infinity; Go does not


def parse(body: bytes) -> Any:
    """The JSON value of `body`; BodyError if it is not UTF-8 or not JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(f"is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset "
                        f"{e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=Object, parse_int=Number,
                          parse_float=Number, parse_constant=_constant)
    except RecursionError:
        raise BodyError("is not JSON Cove can read: it is nested too deeply") from None
    except ValueError as e:
        raise BodyError(f"is not valid JSON ({e})") from None


def dumps(value: Any) -> str:
    """`value` (as `parse` returns it, or plain Python) as JSON."""
    if isinstance(value, Object | dict):
        items = value if isinstance(value, Object) else value.items()
        return "{" + ",".join(json.dumps(k) + ":" + dumps(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, Number):
        return str.__str__(value)
    return json.dumps(value)


def fold(key: str) -> str:
    """`key` as Go's decoder compares it with a field's name (in upper case)."""
    return "".join(c.upper() if c < "\x80" else _FOLD.get(c, c) for c in key)


Setter = Callable[[Any], None]


def members(obj: Any, name: str) -> list[tuple[Any, Setter]]:
    """Every value of `obj` (an object) under a key that folds to `name`, each with a
    setter that replaces it; none when `obj` is not an object."""
    want = name.upper()
    if isinstance(obj, Object):
        return [(pair[1], partial(pair.__setitem__, 1)) for pair in obj
                if fold(pair[0]) == want]
    if isinstance(obj, dict):
        return [(v, partial(obj.__setitem__, k)) for k, v in obj.items()
                if isinstance(k, str) and fold(k) == want]
    return []


def objects(obj: Any, name: str) -> list[Any]:
    return [v for v, _ in members(obj, name) if isinstance(v, Object | dict)]


def _lists(obj: Any, name: str) -> list[list]:
    return [v for v, _ in members(obj, name) if isinstance(v, list) and not isinstance(v, Object)]


def _strings(obj: Any, name: str) -> list[tuple[str, Setter]]:
    return [(v, s) for v, s in members(obj, name) if isinstance(v, str)]


@dataclass
class Slot:
    """A string of a body that names a host path the engine would bind-mount: a ``Binds``
    entry ("src:dst[:opts]", `form` "bind"), a bind mount's Source ("source") or a bind
    volume's device ("device"). `set` replaces the string in the body."""

    value: str
    form: str
    set: Setter


def slots(kind: str, doc: Any) -> list[Slot]:
    """The strings of `doc` (the parsed body of a request of `kind`, see
    `desktop.services.apiguard.routes`) that may name a host path to bind-mount."""
    if kind == CONTAINER:
        # The engine also reads HostConfig's fields from the top level of the body (a
        # deprecated form it still takes when HostConfig is absent).
        hosts = [doc, *objects(doc, "HostConfig")]
        found = [Slot(b, "bind", partial(binds.__setitem__, i))
                 for hc in hosts for binds in _lists(hc, "Binds")
                 for i, b in enumerate(binds) if isinstance(b, str)]
        return found + _mount_slots([m for hc in hosts for m in _lists(hc, "Mounts")])
    if kind == SERVICE:
        specs = [cs for tt in objects(doc, "TaskTemplate") for cs in objects(tt, "ContainerSpec")]
        return _mount_slots([m for cs in specs for m in _lists(cs, "Mounts")])
    if kind == VOLUME:
        return _bind_devices(objects(doc, "DriverOpts"))
    return []


def _mount_slots(lists: list[list]) -> list[Slot]:
    """The sources of bind mounts, and the devices of bind volumes, in `lists` (each a
    ``Mounts``): entries at the same index count as one (Go may merge them)."""
    found: list[Slot] = []
    for i in range(max((len(m) for m in lists), default=0)):
        entries = [m[i] for m in lists if i < len(m) and isinstance(m[i], Object | dict)]
        if any(t.lower() == "bind" for e in entries for t, _ in _strings(e, "Type")):
            found += [Slot(s, "source", set_) for e in entries for s, set_ in _strings(e, "Source")]
        options = [o for e in entries for vo in objects(e, "VolumeOptions")
                   for dc in objects(vo, "DriverConfig") for o in objects(dc, "Options")]
        found += _bind_devices(options)
    return found


def _bind_devices(options: list[Any]) -> list[Slot]:
    """The devices in `options` (the local volume driver's: type, o, device) when they
    make a bind mount ("o" holds bind or rbind): a bind mount in a volume's clothes."""
    if not any("bind" in o for opts in options for o, _ in _strings(opts, "o")):
        return []
    return [Slot(d, "device", set_) for opts in options for d, set_ in _strings(opts, "device")]

