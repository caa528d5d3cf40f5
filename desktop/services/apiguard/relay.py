"""The docker.sock guard's relay: HTTP/1.1 between a docker client and the engine, parsed
with h11, handing the bodies of the requests `routes.checked_kind` names to a `Check`
(`desktop.services.apiguard.policy`).

The client->engine direction (`_Requests`, on the calling thread) reads the client's
requests with an h11 server connection and sends each to the engine written anew from
what h11 read: the request line and header fields as they came, framed by one
Content-Length or by chunks of its own (the engine never sees framing that h11 read
otherwise). Checked requests are read whole (at most `CHECK_CAP`) and checked before
anything of them is sent; other bodies stream through as they arrive.

The engine->client direction (`_Responses`, on a helper thread) copies the engine's
bytes to the client as they come and follows them with an h11 client connection, to
know where each response ends: the next request is read only then (h11 holds pipelined
requests back until the response before them is over), so a refusal never overtakes a
response. The connection becomes the engine's raw stream only when the engine says so:
a 101 (attach and exec with ``Upgrade: tcp``, BuildKit's h2c sessions), or a 200 with a
raw-stream or multiplexed-stream content type to an attach or an exec start (the
engine's hijack without an upgrade). Should the engine send what h11 cannot follow, its
bytes are copied raw from then on and requests are still read and checked, without
waiting for responses.

What the guard cannot read as HTTP/1.1 is answered with h11's status (400, 431, 501, or
505 for other versions) and a message, and the connection is closed; nothing of it
reaches the engine. HTTP/1.0 connections end after one exchange (h11 does not keep them
alive, so their keep-alive is not passed on).
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import NoReturn

import h11

from desktop.platform.endpoints import Stream
from desktop.services.apiguard.policy import Check, reported_folders
from desktop.services.apiguard.routes import checked_kind, may_hijack
from guest_engine import relay

log = logging.getLogger(__name__)

HEAD_CAP = 1024 * 1024  # a request's or response's head; Go's default limit, the engine's
CHECK_CAP = 32 * 1024 * 1024  # a checked body; a larger one is refused (413)
# After an answer that ends the connection, the client's input is read away for this long
# (at most), so that closing does not reset the connection before it read the answer.
LINGER = 1.0

_RAW_STREAMS = (b"application/vnd.docker.raw-stream",
                b"application/vnd.docker.multiplexed-stream")
_FRAMING = (b"content-length", b"transfer-encoding")

# What the engine side tells the client side, once per request sent: ("done", status)
# when the response is over, ("switch",) when the connection is the engine's raw stream
# from there on; and once ("lost",) when its responses are not followed any more, and
# ("ended",) when the engine's side is gone.
_Outcome = tuple


class _Switch(Exception):
    """The connection is the engine's raw stream from here on: copy the client's bytes."""

    def __init__(self, initial: bytes) -> None:
        super().__init__()
        self.initial = initial


class _End(Exception):
    """The connection ends here: send the engine no more."""


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _message(message: str) -> bytes:
    """An error's body, ``{"message": ...}``: the docker CLI prints it as "Error response
    from daemon: ..."."""
    return json.dumps({"message": message}).encode() + b"\n"


def _closing_answer(status: int, message: str) -> bytes:
    """A whole response with `message`, after which the connection closes."""
    body = _message(message)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, _reason(status), len(body)) + body)


class _Link:
    """What both directions share: the streams, the engine side's h11 connection (the
    client side sends on it, the engine side receives on it, under `lock`) and the
    outcomes of the requests sent."""

    def __init__(self, client: Stream, engine: Stream) -> None:
        self.client = client
        self.engine = engine
        self.engine_conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_CAP)
        self.lock = threading.Lock()  # engine_conn, hijack, lost
        self.client_lock = threading.Lock()  # writes to the client
        self.outcomes: queue.SimpleQueue[_Outcome] = queue.SimpleQueue()
        self.hijack = False  # the request in flight is an attach or an exec start
        self.lost = False  # the engine's responses are not followed any more

    def to_client(self, data: bytes) -> None:
        with self.client_lock:
            self.client.sendall(data)

    def cycle(self) -> None:
        """Start the engine side's next exchange once request and response are over (under
        `lock`)."""
        conn = self.engine_conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()

    def lose(self, why: object) -> None:
        """Stop following the engine's responses (under `lock`)."""
        if not self.lost:
            log.warning("docker.sock: cannot follow the engine's responses (%s); relaying "
                        "them unparsed", why)
            self.outcomes.put(("lost",))
        self.lost = True


def _shutdown(*streams: Stream, how: int = socket.SHUT_RDWR) -> None:
    for s in streams:
        try:
            s.shutdown(how)
        except OSError:
            pass


class _Responses:
    """The engine->client direction: copies the engine's bytes, following their framing."""

    def __init__(self, link: _Link, on_end: Callable[[], None] | None = None) -> None:
        self.link = link
        self.on_end = on_end
        self.status = 0  # of the response being read

    def run(self) -> None:
        link = self.link
        try:
            self._copy()
        except OSError:
            _shutdown(link.engine, link.client)
        except Exception:
            log.exception("docker.sock: relaying the engine's responses failed")
            _shutdown(link.engine, link.client)
        finally:
            link.outcomes.put(("ended",))

    def _copy(self) -> None:
        link = self.link
        buf = bytearray(relay.BUFSIZE)
        view = memoryview(buf)
        while True:
            n = link.engine.recv_into(buf)
            data = bytes(view[:n])
            if data:
                link.to_client(data)
            if self._follow(data):
                # relay.copy forwards the rest, and the half-close or a reset, as pipe() does.
                relay.copy(link.engine, link.client, b"", link.client_lock)
                return
            if not data:
                break
        with link.client_lock:
            _shutdown(link.client, how=socket.SHUT_WR)

    def _follow(self, data: bytes) -> bool:
        """Feed `data` (b"": the engine's EOF) to the engine side's h11 connection; True
        when the rest of the stream is to be copied raw."""
        link = self.link
        with link.lock:
            if link.lost:
                return True
            conn = link.engine_conn
            conn.receive_data(data)
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    if not data:
                        return False  # the engine closed inside a response, or before one
                    link.lose(e)
                    return True
                verdict = self._event(event)
                if verdict is not None:
                    return verdict

    def _event(self, event: object) -> bool | None:
        """What to do after `event`: None to read on, True to copy raw, False to wait for
        more bytes (under the link's lock)."""
        link = self.link
        conn = link.engine_conn
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return False
        if event is h11.PAUSED:
            if conn.their_state is h11.SWITCHED_PROTOCOL:  # a 101
                link.outcomes.put(("switch",))
                return True
            link.lose("the engine sent bytes after its response")
            return True
        if isinstance(event, h11.Response):
            if conn.our_state is h11.IDLE:
                link.lose("a response to no request")
                return True
            if link.hijack and event.status_code == 200 and _raw_stream(event):
                link.outcomes.put(("switch",))
                return True
            self.status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            link.cycle()
            link.outcomes.put(("done", self.status))
            if self.on_end is not None:
                self.on_end()
        return None


def _raw_stream(response: h11.Response) -> bool:
    types = [v.split(b";", 1)[0].strip().lower()
             for k, v in response.headers if k == b"content-type"]
    return any(t in _RAW_STREAMS for t in types)


def _framing_fields(framing: int | bytes | None) -> list[tuple[bytes, bytes]]:
    if framing is None:
        return []
    if framing == b"chunked":
        return [(b"Transfer-Encoding", b"chunked")]
    assert isinstance(framing, int)
    return [(b"Content-Length", b"%d" % framing)]


def _field(req: h11.Request, name: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    """A header field of `req` as sent on to the engine, or None to leave it out: an empty
    Upgrade (h11 reads no upgrade in it, the engine would), and in HTTP/1.0 a keep-alive
    (h11 ends HTTP/1.0 connections after one exchange)."""
    lower = name.lower()
    if lower == b"upgrade" and not value.strip():
        return None
    if lower == b"connection" and req.http_version == b"1.0":
        value = b", ".join(t for t in (v.strip() for v in value.split(b","))
                           if t and t.lower() != b"keep-alive")
        if not value:
            return None
    return name, value


def _fields(req: h11.Request, framing: int | bytes | None,
            drop: tuple[bytes, ...] = ()) -> list[tuple[bytes, bytes]]:
    """`req`'s header fields for the engine, in order and as written, framed by `framing`
    (a Content-Length, b"chunked", or None: no body) where the client's framing was."""
    out: list[tuple[bytes, bytes]] = []
    framed = False
    for name, value in req.headers.raw_items():
        if name.lower() in _FRAMING:
            if not framed:
                out += _framing_fields(framing)
                framed = True
        elif name.lower() not in drop and (field := _field(req, name, value)) is not None:
            out.append(field)
    return out if framed else out + _framing_fields(framing)


def _content_length(req: h11.Request) -> int | None:
    values = [v for k, v in req.headers if k == b"content-length"]
    return int(values[0]) if values else None  # h11 checked it is one number


def _chunked(req: h11.Request) -> bool:
    return any(k == b"transfer-encoding" for k, _ in req.headers)  # h11 takes only chunked


class _Requests:
    """The client->engine direction: reads requests with h11, checks the checked ones,
    and sends each to the engine written anew."""

    def __init__(self, link: _Link, check: Check,
                 on_binds: Callable[[list[str]], None] | None,
                 on_request: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
                 on_answered: Callable[[], None] | None = None) -> None:
        self.link = link
        self.check = check
        self.on_binds = on_binds
        self.on_request = on_request
        self.on_answered = on_answered  # the guard answered a request itself
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_CAP)
        self.pending: list[bytes] = []  # for the engine, sent before the next read or wait
        self.chunked = False  # the request being sent is sent in chunks
        self.sending = False  # part of a request was sent, not all of it
        self.linger = False  # the guard answered last, and ends the connection

    def run(self) -> None:
        link = self.link
        try:
            self._serve()
        except _Switch as switch:
            # relay.copy forwards the rest (and the half-close, or a reset) as pipe() does.
            relay.copy(link.client, link.engine, switch.initial)
            return
        except _End:
            if self.linger:
                self._linger()
        except OSError:
            _shutdown(link.client, link.engine)
            return
        except Exception:
            log.exception("docker.sock: relaying a client's requests failed")
            _shutdown(link.client, link.engine)
            return
        try:
            self._flush()
        except OSError:
            pass
        _shutdown(link.engine, how=socket.SHUT_WR)

    def _linger(self) -> None:
        """Let the client read the answer before the connection closes: a socket closed
        with input unread resets the connection, which may lose what it had not read."""
        client = self.link.client
        with self.link.client_lock:
            _shutdown(client, how=socket.SHUT_WR)
        deadline = time.monotonic() + LINGER
        try:
            while (left := deadline - time.monotonic()) > 0:
                client.settimeout(left)
                if not client.recv(relay.BUFSIZE):
                    return
        except OSError:  # includes the timeout
            pass

    def _serve(self) -> None:
        while True:
            event = self._next()
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                if self.on_request is not None:
                    self.on_request(list(event.headers))
                self._request(event)
                if self.conn.their_state is h11.MUST_CLOSE:
                    # The client ends the connection after this exchange (Connection:
                    # close, HTTP/1.0), so h11 holds nothing back: what it sent after is
                    # not read, and the engine's answer is awaited here.
                    self._flush()
                    self._answered(self._await())

    # -- reading, waiting ----------------------------------------------------------------

    def _next(self) -> object:
        """The next event of the client's side, reading from it and waiting for the
        engine's response as needed."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self._unreadable(e)
            if event is h11.NEED_DATA:
                self._flush()
                self.conn.receive_data(self.link.client.recv(relay.BUFSIZE))
            elif event is h11.PAUSED:
                self._flush()
                self._answered(self._await())
            else:
                return event

    def _await(self) -> _Outcome:
        """The outcome of the request just sent. Meanwhile the client is read only to see
        its end, whose half-close goes to the engine at once."""
        link = self.link
        while True:
            try:
                return link.outcomes.get_nowait()
            except queue.Empty:
                pass
            if link.lost:
                return ("lost",)
            data, closed = self.conn.trailing_data
            if data or closed:
                return link.outcomes.get()
            self.conn.receive_data(link.client.recv(relay.BUFSIZE))
            if self.conn.trailing_data[1]:
                _shutdown(link.engine, how=socket.SHUT_WR)

    def _answered(self, outcome: _Outcome) -> None:
        """Tell the client side's h11 connection that the engine answered its request (the
        answer itself went to the client as the engine sent it)."""
        if outcome[0] == "switch":
            raise _Switch(bytes(self.conn.trailing_data[0]))
        if outcome[0] == "ended":
            raise _End
        status = outcome[1] if outcome[0] == "done" else 200
        with self.link.lock:
            keep = self.link.lost or self.link.engine_conn.our_state is h11.IDLE
        fields = [(b"content-length", b"0")] + ([] if keep else [(b"connection", b"close")])
        self.conn.send(h11.Response(status_code=status, headers=fields))
        self.conn.send(h11.EndOfMessage())
        self._next_cycle()

    def _next_cycle(self) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            raise _End  # either side ends the connection after this exchange

    def _unreadable(self, e: h11.RemoteProtocolError) -> NoReturn:
        """The client sent what h11 cannot read: answer it (unless it is gone, or the
        engine has part of the request and answers it) and end the connection."""
        if not self.conn.trailing_data[1] and not self.sending:
            log.info("docker.sock: unreadable request: %s", e)
            self.linger = True
            self.link.to_client(_closing_answer(
                e.error_status_hint,
                f"Cove's docker.sock could not read the request as HTTP/1.1 ({e}), so it "
                "did not pass it to the engine"))
        raise _End

    # -- requests ------------------------------------------------------------------------

    def _request(self, req: h11.Request) -> None:
        method, target = req.method.decode("latin-1"), req.target.decode("latin-1")
        if req.http_version not in (b"1.0", b"1.1"):
            self._refuse_and_close(505, "Cove's docker.sock takes HTTP/1.1 (and 1.0), not "
                                        f"HTTP/{req.http_version.decode('latin-1')}")
        if req.http_version == b"1.0" and _chunked(req):
            self._refuse_and_close(400, "Cove's docker.sock passes no HTTP/1.0 request with "
                                        "a chunked body (the engine would not read it as "
                                        "one): send it with HTTP/1.1 or a Content-Length")
        if checked_kind(method, target) is not None:
            self._checked(req, method, target)
            return
        self._send_head(req, method, target, b"chunked" if _chunked(req)
                        else _content_length(req))
        while True:
            event = self._next()
            if isinstance(event, h11.Data):
                self._send_data(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._send_end(list(event.headers.raw_items()))
                return

    def _checked(self, req: h11.Request, method: str, target: str) -> None:
        """Read the whole body, check it, then refuse the request or send it (with a
        Content-Length, and without Expect: the client had its 100 Continue from here)."""
        length = _content_length(req)
        if length is not None and length > CHECK_CAP:
            self._too_large(method, target)
        if self.conn.they_are_waiting_for_100_continue:
            self.link.to_client(self.conn.send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        body = bytearray()
        while True:
            event = self._next()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > CHECK_CAP:
                    self._too_large(method, target)
            elif isinstance(event, h11.EndOfMessage):
                break
        verdict = self._verdict(method, target, bytes(body))
        if isinstance(verdict, tuple):
            self._refuse(*verdict)
            return
        framed = length is not None or _chunked(req) or verdict
        self._send_head(req, method, target, len(verdict) if framed else None, (b"expect",))
        self._send_data(verdict)
        self._send_end([])
        self._report(method, target, verdict)

    def _verdict(self, method: str, target: str, body: bytes) -> bytes | tuple[int, str]:
        """The body to send, or the (status, message) to refuse the request with."""
        try:
            verdict = self.check(method, target, body)
        except Exception as e:
            log.exception("docker.sock: checking %s %s failed; refusing it", method, target)
            return (500, f"Cove's docker.sock failed to check {method} {target} "
                         f"({type(e).__name__}: {e}), so it did not pass it to the engine. "
                         "This is a bug in Cove: `cove logs` shows the details; report it "
                         "with them, and retry once Cove is updated")
        if isinstance(verdict, str):
            return (400, verdict)
        return body if verdict is None else verdict

    def _report(self, method: str, target: str, body: bytes) -> None:
        if self.on_binds is None:
            return
        try:
            folders = reported_folders(method, target, body)
            if folders:
                self.on_binds(folders)
        except Exception:
            log.exception("on_binds failed")

    def _refuse(self, status: int, message: str) -> None:
        """Answer the request (read whole, sent nowhere) with `status` and `message`."""
        body = _message(message)
        fields = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        out = self.conn.send(h11.Response(status_code=status, headers=fields,
                                          reason=_reason(status)))
        out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        self.link.to_client(out)
        if self.on_answered is not None:
            self.on_answered()
        self._next_cycle()

    def _refuse_and_close(self, status: int, message: str) -> NoReturn:
        """Answer the request before its body was read, and end the connection."""
        log.info("docker.sock: refused a request: %s", message)
        self.linger = True
        self.link.to_client(_closing_answer(status, message))
        raise _End

    def _too_large(self, method: str, target: str) -> NoReturn:
        self._refuse_and_close(413, (
            f"the body of {method} {target} is over {CHECK_CAP // 2**20} MiB: Cove reads "
            f"the bind mounts of each {checked_kind(method, target)} before the engine "
            f"gets it, and reads at most {CHECK_CAP // 2**20} MiB of one. Send a smaller "
            "body"))

    # -- sending to the engine -----------------------------------------------------------

    def _send_head(self, req: h11.Request, method: str, target: str,
                   framing: int | bytes | None, drop: tuple[bytes, ...] = ()) -> None:
        fields = _fields(req, framing, drop)
        self.pending.append(
            b"%s %s HTTP/%s\r\n" % (req.method, req.target, req.http_version)
            + b"".join(b"%s: %s\r\n" % f for f in fields) + b"\r\n")
        self.chunked = framing == b"chunked"
        self.sending = True
        # The engine side's h11 connection follows the exchange as HTTP/1.1 (h11 writes
        # no other version); an HTTP/1.0 request is one that closes.
        seen = [f for f in fields if f[0].lower() != b"host"]
        host = [f for f in fields if f[0].lower() == b"host"] or [(b"Host", b"")]
        if req.http_version == b"1.0":
            seen.append((b"Connection", b"close"))
        self._register(h11.Request(method=req.method, target=req.target,
                                   headers=host + seen), may_hijack(method, target))

    def _send_data(self, data: bytes | bytearray) -> None:
        if not data:
            return  # an empty chunk would end the body
        data = bytes(data)
        self._register(h11.Data(data=data))
        self.pending.append(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def _send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if not self.chunked:
            trailers = []
        self._register(h11.EndOfMessage(headers=trailers))
        if self.chunked:
            self.pending.append(b"0\r\n" + b"".join(b"%s: %s\r\n" % f for f in trailers)
                                + b"\r\n")
        self.sending = False

    def _register(self, event: h11.Request | h11.Data | h11.EndOfMessage,
                  hijack: bool | None = None) -> None:
        """Tell the engine side's h11 connection what is sent, before it is sent."""
        link = self.link
        with link.lock:
            if hijack is not None:
                link.hijack = hijack
            if link.lost:
                return
            try:
                link.engine_conn.send(event)
            except h11.LocalProtocolError as e:
                link.lose(e)
                return
            if isinstance(event, h11.EndOfMessage):
                link.cycle()

    def _flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.link.engine.sendall(data)


def guarded_pipe(client: Stream, engine: Stream, check: Check,
                 on_binds: Callable[[list[str]], None] | None = None,
                 on_request: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
                 on_response_end: Callable[[], None] | None = None) -> None:
    """Relay between a docker client and the engine until both directions end, then close
    both, as `guest_engine.relay.pipe` does; the requests `routes.checked_kind` names
    pass `check` first.

    `check(method, target, body)` gets each such request's whole body (at most
    `CHECK_CAP`; a larger one is answered with a 413). A message it returns is answered
    to the client as a 400 with ``{"message": ...}`` and the request is never sent to
    the engine; bytes it returns are sent as the request's body instead. An exception in
    `check` refuses the request with a 500. `on_binds`, if given, gets the host folders
    each checked request sent to the engine binds (normalized, the VM's docker.sock left
    out), as `make_check`'s does; pass it to one of them only. `on_request`, if given,
    gets each request's headers (lower-case names) as it is read; `on_response_end`, if
    given, is called when one of the engine's responses has ended (not for a stream that
    went raw: an attach, an exec, an upgrade), and when the guard answered one itself.
    Blocks the calling thread; the engine->client direction runs on a helper thread.
    """
    link = _Link(client, engine)
    t = threading.Thread(target=_Responses(link, on_response_end).run, daemon=True,
                         name="apiguard")
    t.start()
    try:
        _Requests(link, check, on_binds, on_request, on_response_end).run()
        t.join()
    finally:
        client.close()
        engine.close()
