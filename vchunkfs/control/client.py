"""A client of a mount's control socket, used by the command line and the tests.

    with Client.for_mountpoint("/mnt/oisst") as c:
        c.set_virtual_ref("sst/c/0/0/0/0", "file:///data/a.nc", offset=4016, length=380848)
        snapshot = c.commit("one more day")

Every failed request raises a :class:`ControlError` (a ``VchunkfsError``) whose
``code`` and exit status are the server's.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from vchunkfs.control import protocol
from vchunkfs.errors import VchunkfsError


def _error_classes() -> dict[str, type[VchunkfsError]]:
    out: dict[str, type[VchunkfsError]] = {}
    todo: list[type[VchunkfsError]] = [VchunkfsError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return out


class ControlError(VchunkfsError):
    """An error reply; ``code`` is the server's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        known = _error_classes().get(code)
        self.exit_status = known.exit_status if known else 1


class Client:
    """One connection to a control socket. Not thread-safe; use one per thread."""

    def __init__(self, path: str, timeout: float | None = 3600.0,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.path = path
        # what the server warned about in successful replies (the requests did succeed)
        self.warnings: list[str] = []
        self._on_warning = on_warning
        self._timeout = timeout
        self._sock = self._connect()
        self._next_id = 1

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise VchunkfsError(f"cannot connect to control socket {self.path}: "
                                f"{e.strerror or e} (is the mount running?)") from e
        return sock

    def _reconnect_if_closed(self) -> None:
        """Reconnect if the daemon closed this idle connection (its idle timeout).

        Called with no request in flight: anything readable then is the daemon's
        parting ``timeout`` error or the end of the stream, so no request is lost.
        """
        readable, _, _ = select.select([self._sock], [], [], 0)
        if readable:
            self._sock.close()
            self._sock = self._connect()

    @classmethod
    def for_mountpoint(cls, mountpoint: str | os.PathLike[str], **kw: Any) -> Client:
        """Find the socket through the mount root's ``user.vchunkfs.control_socket`` xattr."""
        try:
            path = os.getxattr(mountpoint, protocol.XATTR_SOCKET).decode()
        except OSError as e:
            raise VchunkfsError(f"{mountpoint} is not a vchunkfs mount with a control socket "
                                f"({e.strerror or e})") from e
        return cls(path, **kw)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # -- requests -------------------------------------------------------------

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result, or raise :class:`ControlError`."""
        (result,) = self.pipeline([(op, args)])
        return result

    def pipeline(self, requests: Iterable[tuple[str, dict[str, Any]]], window: int = 8,
                 on_reply: Callable[[int], None] | None = None) -> list[Any]:
        """Send requests with up to ``window`` in flight; results in order.

        Stops at the first error: it is raised once the requests already in
        flight are answered (each of those either fully applied or refused).
        """
        self._reconnect_if_closed()
        results: list[Any] = []
        pending: list[int] = []
        failure: ControlError | None = None
        ops: list[str] = []  # the op of each pending request
        lost: OSError | None = None
        it: Iterator[tuple[str, dict[str, Any]]] = iter(requests)
        exhausted = False
        while True:
            while not exhausted and failure is None and lost is None and len(pending) < window:
                try:
                    op, args = next(it)
                except StopIteration:
                    exhausted = True
                    break
                rid = self._next_id
                self._next_id += 1
                try:
                    frame = protocol.encode(
                        {"v": protocol.VERSION, "id": rid, "op": op, "args": args})
                except protocol.ProtocolError as e:  # larger than any daemon takes
                    failure = failure or ControlError("too_large", f"{op}: {e}; split it")
                    break
                pending.append(rid)
                ops.append(op)
                try:
                    self._sock.sendall(frame)
                except OSError as e:
                    # the server may have refused and closed: its reply says why
                    lost = e
                    break
                del frame
            if not pending:
                break
            try:
                reply = protocol.recv_message(self._sock)
            except (EOFError, OSError) as e:
                raise self._lost(ops[0], lost or e) from None
            except protocol.ProtocolError as e:
                raise ControlError("protocol", f"bad reply from {self.path}: {e}") from None
            rid = pending.pop(0)
            ops.pop(0)
            for warning in reply.get("warnings") or ():
                self.warnings.append(str(warning))
                if self._on_warning:
                    self._on_warning(str(warning))
            if not reply.get("ok"):
                err = reply.get("error") or {}
                if failure is None:
                    failure = ControlError(str(err.get("code", "error")),
                                           str(err.get("message", "unknown error")))
                if reply.get("id") is None:  # a protocol error: the server hung up
                    raise failure
                continue
            if reply.get("id") != rid:
                raise ControlError("protocol", f"reply for request {reply.get('id')}, "
                                               f"expected {rid}")
            results.append(reply.get("result"))
            if on_reply:
                on_reply(len(results))
        if failure is not None:
            raise failure
        return results

    def _lost(self, op: str, e: BaseException) -> ControlError:
        """The connection failed while ``op`` waited for its reply: one clear error."""
        if isinstance(e, TimeoutError):
            what = f"no reply to {op} within {self._sock.gettimeout():g} s"
        else:
            why = e.strerror if isinstance(e, OSError) and e.strerror else "connection closed"
            what = (f"the daemon closed the control connection before answering {op} "
                    f"({why}; did the daemon exit? see its log)")
        if op not in _READ_ONLY_OPS:
            check = "log" if op == "commit" else "changes"
            what += (f"; whether {op} was applied is unknown: check with "
                     f"vchunkfs ctl MOUNTPOINT {check}")
        return ControlError("connection", what)

    # -- conveniences ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def set_metadata(self, path: str, document: dict[str, Any] | bytes,
                     branch: str | None = None) -> None:
        self.call("set_metadata", path=path, document=document, **_branch(branch))

    def set_virtual_ref(self, key: str, location: str, offset: int, length: int,
                        checksum: str | float | None = None, branch: str | None = None) -> None:
        self.call("set_virtual_ref", key=key, location=location, offset=offset, length=length,
                  checksum=checksum, **_branch(branch))

    def set_virtual_refs(self, refs: Iterable[dict[str, Any]], branch: str | None = None,
                         batch_refs: int = 50_000,
                         progress: Callable[[int], None] | None = None) -> int:
        """Refs by key (maps of key, location, offset, length[, checksum]), streamed:
        ``batch_refs`` a request, pipelined, never all held at once. Returns how many
        were staged; ``progress`` gets about how many so far. Each request is
        all-or-nothing; a failure leaves earlier ones staged (discard to drop them)."""
        def batches() -> Iterator[tuple[str, dict[str, Any]]]:
            batch: list[dict[str, Any]] = []
            for ref in refs:
                batch.append(ref)
                if len(batch) >= batch_refs:
                    yield "set_virtual_refs_keys", {"refs": batch, **_branch(branch)}
                    batch = []
            if batch:
                yield "set_virtual_refs_keys", {"refs": batch, **_branch(branch)}

        results = self.pipeline(batches(), window=2, on_reply=(
            (lambda done: progress(done * batch_refs)) if progress else None))
        return sum(int(r["count"]) for r in results)

    def set_virtual_refs_grid(self, array: str, grid_shape: tuple[int, ...],
                              locations: list[str] | np.ndarray[Any, Any],
                              offsets: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any],
                              checksum: str | float | None = None, branch: str | None = None,
                              batch_refs: int = 200_000,
                              progress: Callable[[int], None] | None = None) -> int:
        """Refs for a whole chunk grid (row-major; "" = no chunk), streamed in blocks of rows.

        Returns the number of refs set. Each block is one request, so a failure
        leaves earlier blocks staged (discard to drop them).
        """
        n = int(np.prod(grid_shape))
        locs = locations.tolist() if isinstance(locations, np.ndarray) else list(locations)
        offsets = np.ascontiguousarray(offsets, dtype="<u8")
        lengths = np.ascontiguousarray(lengths, dtype="<u8")
        if not (len(locs) == len(offsets) == len(lengths) == n):
            raise VchunkfsError(f"locations, offsets and lengths must each hold {n} values")
        row = int(np.prod(grid_shape[1:])) if len(grid_shape) > 1 else 1
        rows_per_block = max(1, batch_refs // max(row, 1))
        done = 0

        def blocks() -> Iterator[tuple[str, dict[str, Any]]]:
            for r0 in range(0, grid_shape[0] if grid_shape else 1, rows_per_block):
                r1 = min(grid_shape[0], r0 + rows_per_block) if grid_shape else 1
                sl = slice(r0 * row, r1 * row)
                table, index = _factorize(locs[sl])
                yield "set_virtual_refs_block", {
                    "array": array, "arr_offset": [r0] + [0] * (len(grid_shape) - 1),
                    "shape": [r1 - r0, *grid_shape[1:]], "location_table": table,
                    "location_index": index.tobytes(), "offsets": offsets[sl].tobytes(),
                    "lengths": lengths[sl].tobytes(), "checksum": checksum, **_branch(branch)}

        def counted(_: int) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done)

        results = self.pipeline(blocks(), on_reply=counted)
        return sum(int(r["count"]) for r in results)

    def set_chunk(self, key: str, data: bytes, branch: str | None = None) -> None:
        self.call("set_chunk", key=key, data=data, **_branch(branch))

    def delete(self, key: str, branch: str | None = None) -> None:
        self.call("delete", key=key, **_branch(branch))

    def commit(self, message: str, metadata: dict[str, Any] | None = None,
               branch: str | None = None) -> str:
        """Commit the branch's staged changes; return the new snapshot id.

        A commit that landed although its reply from the store was lost is a success.
        :class:`ControlError` with code ``commit_unknown`` (exit status 9) means the
        daemon could not tell whether it landed: the message names the commit's
        ``vchunkfs:commit_token``; look for it in :meth:`call` ``("history", ...)``
        before committing again (docs/control-protocol.md)."""
        result = self.call("commit", message=message, metadata=metadata or {}, **_branch(branch))
        return str(result["snapshot"])

    def discard(self, branch: str | None = None) -> bool:
        return bool(self.call("discard", **_branch(branch))["discarded"])


_READ_ONLY_OPS = frozenset({"status", "changes", "branches", "tags", "history", "diff",
                            "containers"})


def _factorize(locations: list[str]) -> tuple[list[str], np.ndarray[Any, np.dtype[np.uint32]]]:
    """The distinct locations (in order of first use) and each one's index in them.

    "" (no chunk) gets ``NO_LOCATION``. A dict lookup per ref: sorting the strings
    (``np.unique`` on an object array) costs about 7x as much on a 200,000-ref block.
    """
    codes: dict[str, int] = {"": protocol.NO_LOCATION}
    table: list[str] = []

    def code(location: str) -> int:
        c = codes.get(location)
        if c is None:
            c = codes[location] = len(table)
            table.append(location)
        return c

    index = np.fromiter(map(code, locations), dtype="<u4", count=len(locations))
    return table, index


def _branch(branch: str | None) -> dict[str, str]:
    return {"branch": branch} if branch else {}
