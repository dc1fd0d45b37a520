"""Services on 127.0.0.1 for tests and benchmarks: a free port and a real S3 server (moto)."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
import urllib.request

MOTO_START_TIMEOUT_S = 60.0


# Ports handed out are below the kernel's ephemeral range and above Ray's default worker ports
# (10002-19999). A port the kernel picks (bind to port 0) is ephemeral: between this check and
# the server's own bind, any outgoing connection may take it, and Ray's processes open many
# (seen: Serve's proxy failed to bind the README test's port while Ray was starting).
_PORTS_FROM = 20000
_handed_out: set[int] = set()


def free_port() -> int:
    """A port of 127.0.0.1 free now, never one this process handed out before."""
    upper = _ephemeral_start() - 256  # room for a range of worker ports above a chosen one
    for candidate in random.sample(range(_PORTS_FROM, upper), 500):
        if candidate in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        _handed_out.add(candidate)
        return candidate
    with socket.socket() as sock:  # all 500 taken: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return max(_PORTS_FROM + 1024, int(handle.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def start_moto(timeout_s: float = MOTO_START_TIMEOUT_S) -> tuple[subprocess.Popen, str]:
    """A moto S3 server from this interpreter on a free loopback port: (process, endpoint URL).

    Returns once the server answers; the caller stops it with `stop_process`."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start within {timeout_s:.0f} s") from None
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Terminate, then kill if it does not exit in `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


# ------------------------------------------------------------------ moto in this process
# A benchmark that needs hundreds of thousands of objects on the store cannot PUT them one
# HTTP request at a time (300,000 PUTs took well over 30 minutes on 2 cores). With moto in the
# benchmark's own process, the seeding writes straight into moto's in-memory S3 backend while
# every measured process still talks to the server over real HTTP.


class InProcessMoto:
    """A moto S3 server on a free loopback port, served from a thread of this process, whose
    backend this process can write into directly (`put_objects`). Stop it with `stop()`."""

    def __init__(self, timeout_s: float = MOTO_START_TIMEOUT_S, *, paged_listing: bool = False):
        import logging

        from moto.server import ThreadedMotoServer

        if paged_listing:
            use_paged_listing()

        # werkzeug logs a line per request; at 100,000s of requests that is the benchmark's output
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer("127.0.0.1", self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    self._server.stop()
                    raise RuntimeError(
                        f"moto server did not start within {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)

    @staticmethod
    def backend():
        """moto's S3 backend: the same object the server thread answers requests from."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def put_objects(self, objects: dict[str, bytes], *, like: str) -> None:
        """Write `objects` ({"bucket/key": body}) into the backend as moto's PUT handler would
        for an HTTP PUT like the existing object `like` ("bucket/key", written over HTTP by
        the client the measured code uses): same body, storage class, ETag (moto's md5 of
        the body), ACL and the same checksum algorithm with the checksum of this body, so a
        listing or HEAD shows what it would after an HTTP PUT (only the time differs)."""
        from moto.s3.utils import compute_checksum

        backend = self.backend()
        ref_bucket, _, ref_key = like.partition("/")
        reference = backend.get_object(ref_bucket, ref_key)
        if reference is None:
            raise KeyError(f"reference object {like} is not on the store")
        algorithm = reference.checksum_algorithm
        for path, body in objects.items():
            bucket_name, _, key_name = path.partition("/")
            checksum = None
            if algorithm:
                checksum = compute_checksum(body, algorithm=algorithm)
                if isinstance(checksum, bytes):
                    checksum = checksum.decode("utf-8")
            key = backend.put_object(
                bucket_name,
                key_name,
                body,
                storage=reference.storage_class,
                checksum_value=checksum,
                disable_notification=True,
            )
            key.set_metadata(dict(reference.metadata))
            key.set_acl(backend.get_bucket(bucket_name).acl)
            if algorithm:
                key.checksum_algorithm = algorithm

    def stop(self) -> None:
        self._server.stop()


_STOCK_LIST_V2 = None


def use_paged_listing() -> None:
    """Make this process's moto answer ListObjectsV2 in time per page, as S3 does.

    moto 5 builds every page from a scan and sort of every key of the bucket (its
    `list_objects`), so listing a prefix of N keys costs N/1000 pages x the bucket's size:
    quadratic, 0.3 s a page at 30,000 keys, and at 300,000 keys that is moto's time, not the
    lister's. `paged_list_objects_v2` gives the same pages (same keys, folders, order, tokens)
    from the sorted names of the prefix alone. Unversioned buckets only; others, and every
    other request, are moto's own."""
    global _STOCK_LIST_V2
    from moto.s3.models import S3Backend

    if _STOCK_LIST_V2 is None:
        _STOCK_LIST_V2 = S3Backend.list_objects_v2
        S3Backend.list_objects_v2 = paged_list_objects_v2


def use_stock_listing() -> None:
    """Undo `use_paged_listing` in this process."""
    global _STOCK_LIST_V2
    from moto.s3.models import S3Backend

    if _STOCK_LIST_V2 is not None:
        S3Backend.list_objects_v2 = _STOCK_LIST_V2
        _STOCK_LIST_V2 = None


def stock_list_objects_v2(backend, *args, **kwargs):
    """moto's own ListObjectsV2 (to compare against, and to time)."""
    from moto.s3.models import S3Backend

    return (_STOCK_LIST_V2 or S3Backend.list_objects_v2)(backend, *args, **kwargs)


def paged_list_objects_v2(
    self, bucket, prefix, delimiter, continuation_token, start_after, max_keys
):
    """moto's `S3Backend.list_objects_v2` (same arguments, same results) without the whole
    bucket sorted per page: the names under `prefix` are sorted (a C-level scan of the key
    dict, no per-key objects), the page starts by bisection after the token's key and only its
    own keys are fetched."""
    from bisect import bisect_right

    from moto.s3.models import FakeDeleteMarker, FakeTableStorageBucket
    from moto.utilities.utils import md5_hash

    if isinstance(bucket, FakeTableStorageBucket) or bucket.is_versioned:
        return stock_list_objects_v2(
            self, bucket, prefix, delimiter, continuation_token, start_after, max_keys
        )
    store = bucket.keys
    prefix = prefix or ""
    # list() copies the names in one C call (the GIL held): PUTs served meanwhile by other
    # threads cannot change the dict under the scan, as iterating it directly would allow
    names = sorted(n for n in list(dict.keys(store)) if n.startswith(prefix))
    limit = None
    if continuation_token or start_after:
        limit = (
            self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        )
    start = bisect_right(names, limit) if limit else 0
    if max_keys == 0:
        return [], False, None
    page: list = []
    truncated = False
    last_folder = None
    for name in names[start:]:
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            folder = prefix + rest.split(delimiter)[0] + delimiter
            if folder == last_folder or (limit and folder <= limit):
                continue
            last_folder = folder
            entry = folder
        else:
            key = store[name]
            if isinstance(key, FakeDeleteMarker):
                continue
            entry = key
        if len(page) == max_keys:
            truncated = True
            break
        page.append(entry)
    token = None
    if truncated:
        last = page[-1]
        last_name = last if isinstance(last, str) else last.name
        token = md5_hash(last_name.encode("utf-8")).hexdigest()
        self._pagination_tokens[token] = last_name
    return page, truncated, token
