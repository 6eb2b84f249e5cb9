"""S3-compatible object storage: streaming uploads, conditional publishing and presigned links.

Everything goes through boto3's transfer manager, fed from a bounded queue, so a file or an
archive of any size streams to a multipart upload without being held in memory or on disk.
A multipart upload is invisible until it completes, so an aborted stream publishes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress

from portability.resources.config import StorageSettings

MIN_PART_BYTES = 5 * 1024 * 1024      # S3's smallest part, except an upload's last
PART_BYTES = MIN_PART_BYTES           # staged pieces are bounded, so 10,000 parts suffice
ARCHIVE_PART_BYTES = 16 * 1024 * 1024  # archives up to 160 GB within S3's 10,000 parts
_CHUNK_BYTES = 1024 * 1024
_QUEUE_CHUNKS = 4
_EOF = object()
_ABORT = object()


class StorageError(RuntimeError):
    """Object storage refused or failed an operation."""


class AlreadyPublished(StorageError):
    """The archive key already holds an object: another run of this export published it first."""


class UploadAborted(IOError):
    pass


def make_client(settings: StorageSettings, *, create_only: bool = False):
    """A boto3 S3 client from Airflow's S3Hook on connection portability_s3, so that its extras (endpoint_url,
    region_name, role_arn, profile_name, config_kwargs, service_config, verify...) work as everywhere in
    Airflow. With `create_only`, object writes carry `If-None-Match: *`.

    Clients are cheap: the hook and its boto3 session are made once per process and connection
    (`_S3Clients`); only the client is new each time."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = _S3Clients.of(settings.connection).client()
    except (BotoCoreError, ClientError) as exc:  # a profile not found, a role that cannot be assumed
        raise StorageError(f"cannot connect to object storage: {explain(exc)}") from exc
    if create_only:
        def refuse_overwrite(params, **_):
            params["IfNoneMatch"] = "*"

        for operation in ("PutObject", "CompleteMultipartUpload"):
            client.meta.events.register(f"provide-client-params.s3.{operation}", refuse_overwrite)
    return client


def client_config(endpoint_url: str | None, given=None):
    """Our client settings as defaults under the connection's `config_kwargs` (`given`, a botocore Config).

    Airflow's own rule would drop the connection's `config_kwargs` altogether once code passes a config to the
    hook, so ours are merged here instead: a setting the connection gives wins, key by key, also inside the
    `s3` and `retries` dicts (a connection giving `{"retries": {"max_attempts": 10}}` keeps the standard mode).
    """
    from botocore.config import Config

    ours = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path" if endpoint_url else "auto"},
        "retries": {"mode": "standard", "max_attempts": 5},
        # CRC32 request checksums by default have broken S3-compatible servers; send them only when needed.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    config = Config(**ours)
    if given is None:
        return config
    config = config.merge(given)
    nested = {name: {**ours[name], **getattr(given, name)} for name in ("s3", "retries")
              if isinstance(getattr(given, name, None), dict)}
    return config.merge(Config(**nested)) if nested else config


class _S3Clients:
    """One S3Hook and one boto3 session per process and connection, from which S3 clients are made.

    The hook gives what Airflow reads from the connection: the session (credentials, `role_arn`,
    `profile_name`, region) and `conn_config` (the endpoint from `endpoint_url` or `service_config`,
    `verify`, `config_kwargs`); the client is made from them as the hook's `get_client_type` makes it,
    with our settings under the connection's. The session is made once, since it costs file reads or,
    with `role_arn`, an STS call; boto3 sessions are not thread-safe, so clients are made under a lock
    (the clients themselves are). A changed connection (a rotated secret, a test's) gets its own hook;
    the last `_KEEP` are kept.
    """

    _KEEP = 4
    _made: dict[str, _S3Clients] = {}
    _made_lock = threading.Lock()

    def __init__(self, connection):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        class Hook(S3Hook):
            def get_connection(self, conn_id):  # the connection already looked up, as config.connection does
                return connection  # (the hook's own lookup would fall back to boto3's defaults if it were missing)

        self._session = None
        self._lock = threading.Lock()
        self._hook = Hook(aws_conn_id=connection.conn_id)
        wrapper = self._hook.conn_config
        self._endpoint_url = wrapper.get_service_endpoint_url("s3")
        self._config = client_config(self._endpoint_url, wrapper.botocore_config)

    @classmethod
    def of(cls, connection) -> _S3Clients:
        if connection is None:
            from portability.resources.config import STORAGE_CONN_ID, ConfigurationError

            raise ConfigurationError(f"no Airflow connection {STORAGE_CONN_ID!r} was read for object storage")
        fingerprint = _fingerprint(connection)
        with cls._made_lock:
            made = cls._made.get(fingerprint)
            if made is None:
                made = cls._made[fingerprint] = cls(connection)
                while len(cls._made) > cls._KEEP:
                    del cls._made[next(iter(cls._made))]
            return made

    def client(self):
        with self._lock:
            if self._session is None:
                self._session = self._hook.get_session()
            return self._session.client("s3", endpoint_url=self._endpoint_url, config=self._config,
                                        verify=self._hook.verify)


def _fingerprint(connection) -> str:
    """Which connection this is, as a digest (the secrets it holds stay out of any key or repr)."""
    parts = [connection.conn_id, connection.conn_type, connection.host, connection.schema, connection.port,
             connection.login, connection.password, connection.extra_dejson]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _transfer_config(part_bytes: int):
    from boto3.s3.transfer import TransferConfig

    # A stream is read part by part into memory; cap the parts held so that the several uploads
    # an export runs at once stay within its memory budget (each holds at most ~3 parts).
    config = TransferConfig(
        multipart_threshold=part_bytes, multipart_chunksize=part_bytes,
        max_concurrency=2, max_io_queue=4, use_threads=True,
    )
    config.max_in_memory_upload_chunks = 2  # s3transfer's setting; boto3's constructor does not take it
    return config


class _QueueReader(io.RawIOBase):
    """The upload side of a stream: blocks until `size` bytes or the end, as s3transfer expects."""

    def __init__(self, chunks: queue.Queue):
        self._chunks = chunks
        self._buffer = bytearray()
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            chunk = self._chunks.get()
            if chunk is _ABORT:
                raise UploadAborted("the writer failed; the upload is abandoned")
            if chunk is _EOF:
                self._done = True
            else:
                self._buffer += chunk
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        data = bytes(memoryview(self._buffer)[:size])
        del self._buffer[:size]
        return data


class UploadStream(io.RawIOBase):
    """A writable stream whose bytes become one object, counted and hashed on the way."""

    def __init__(self, client, bucket: str, key: str, extra_args: dict, part_bytes: int = PART_BYTES,
                 timed: Callable[[], AbstractContextManager] = nullcontext):
        self._timed = timed  # charges the writer's waits for the upload (see `pipeline.progress`)
        self._chunks: queue.Queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._pending = bytearray()
        self._error: BaseException | None = None
        self.bytes_written = 0
        self._sha256 = hashlib.sha256()
        self._thread = threading.Thread(
            target=self._upload, args=(client, bucket, key, extra_args, part_bytes), name=f"upload:{key}", daemon=True
        )
        self._thread.start()

    def _upload(self, client, bucket, key, extra_args, part_bytes):
        try:
            client.upload_fileobj(
                _QueueReader(self._chunks), bucket, key, ExtraArgs=extra_args, Config=_transfer_config(part_bytes)
            )
        except BaseException as exc:  # handed to the writer thread, which raises it
            self._error = exc
            _drain(self._chunks)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.bytes_written  # Parquet and ZIP writers ask where they are; they never seek

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._sha256.update(view)
        self._pending += view
        self.bytes_written += len(view)
        if len(self._pending) >= _CHUNK_BYTES:
            self._put(bytes(self._pending))
            self._pending.clear()
        return len(view)

    def _put(self, item) -> None:
        with self._timed():
            self._put_waiting(item)

    def _put_waiting(self, item) -> None:
        while True:
            if self._error is not None:
                raise StorageError(f"upload failed: {explain(self._error)}") from self._error
            try:
                self._chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Send the rest and wait until the object exists."""
        if self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()
        self._put(_EOF)
        with self._timed():
            self._thread.join()
        if isinstance(self._error, Exception) and _is_precondition_failure(self._error):
            raise AlreadyPublished("the object already exists") from self._error
        if self._error is not None:
            raise StorageError(f"upload failed: {explain(self._error)}") from self._error

    def abort(self) -> None:
        """Abandon the upload: nothing becomes visible."""
        with suppress(queue.Full):
            self._chunks.put(_ABORT, timeout=5)
        self._thread.join(timeout=60)


class PartUpload:
    """A multipart upload whose parts are sent by number, in any order, by several writers.

    The transfer manager numbers parts in the order it reads them; an archive written while its
    files are still being produced needs each part at a number it chose. Parts go out on two
    threads with at most `_IN_FLIGHT` held at once; botocore retries each one (a part is bytes,
    so it can be resent). Nothing is visible until `complete`, and `abort` leaves nothing behind.
    """

    _IN_FLIGHT = 2

    def __init__(self, client, bucket: str, key: str, extra_args: dict,
                 timed: Callable[[], AbstractContextManager] = nullcontext):
        from concurrent.futures import ThreadPoolExecutor

        self._client, self._bucket, self._key = client, bucket, key
        self._timed = timed  # charges each part's request (see `pipeline.progress`)
        try:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **extra_args)["UploadId"]
        except Exception as exc:
            raise StorageError(f"upload failed: {explain(exc)}") from exc
        self._senders = ThreadPoolExecutor(2, thread_name_prefix="part")
        self._slots = threading.BoundedSemaphore(self._IN_FLIGHT)
        self._lock = threading.Lock()
        self._sent: dict[int, tuple[str, int]] = {}  # number -> (ETag, bytes)
        self._pending: list = []
        self._error: BaseException | None = None

    def send(self, number: int, data: bytes | bytearray, sent: Callable[[], None] | None = None) -> None:
        """Queue part `number`; blocks while `_IN_FLIGHT` parts are on their way.

        `sent` is called once the part is done with (sent, failed or dropped), so that its buffer
        can be used again; until then `data` must not change.
        """
        self._raise_if_failed()
        self._slots.acquire()
        try:
            self._pending.append(self._senders.submit(self._send, number, data, sent))
        except BaseException:
            self._slots.release()
            raise

    def _send(self, number: int, data: bytes | bytearray, sent: Callable[[], None] | None) -> None:
        try:
            if self._error is None:
                with self._timed():
                    answer = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                                      PartNumber=number, Body=data)
                with self._lock:
                    self._sent[number] = (answer["ETag"], len(data))
        except BaseException as exc:
            self._error = self._error or exc
        finally:
            self._slots.release()
            if sent is not None:
                sent()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise StorageError(f"upload failed: {explain(self._error)}") from self._error

    def complete(self) -> int:
        """Wait for every part and make the object; returns its size."""
        for future in self._pending:  # each part's request is charged on its sender's thread
            future.result()
        self._senders.shutdown()
        self._raise_if_failed()
        parts = [{"PartNumber": n, "ETag": etag} for n, (etag, _) in sorted(self._sent.items())]
        try:
            with self._timed():
                self._client.complete_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                                       MultipartUpload={"Parts": parts})
        except Exception as exc:
            if _is_precondition_failure(exc):
                self.abort()
                raise AlreadyPublished("the object already exists") from exc
            raise StorageError(f"upload failed: {explain(exc)}") from exc
        return sum(size for _, size in self._sent.values())

    def abort(self) -> None:
        """Drop every part sent so far: nothing becomes visible."""
        self._error = self._error or UploadAborted("the upload is abandoned")
        self._senders.shutdown(wait=True, cancel_futures=True)
        with suppress(Exception):
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)


def _drain(chunks: queue.Queue) -> None:
    try:
        while True:
            chunks.get_nowait()
    except queue.Empty:
        pass


def _is_precondition_failure(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"PreconditionFailed", "412"} or status == 412


def _brief(exc: BaseException) -> str:
    """An error's gist without request details (URLs of presigned or signed requests stay out)."""
    response = getattr(exc, "response", None)
    if response:
        error = response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return type(exc).__name__ + (f": {exc}" if not getattr(exc, "request", None) else "")


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
                     "InvalidClientTokenId", "AuthorizationHeaderMalformed", "InvalidSecurity"}


def explain(exc: BaseException) -> str:
    """What an S3 failure means for whoever runs the export, and what to check; no URL, key or secret."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    from portability.resources.config import STORAGE_CONN_ID

    where = f"Airflow connection {STORAGE_CONN_ID!r}"
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _CREDENTIAL_CODES or status == 403:  # a HEAD's refusal has no body, only its status
            return (f"object storage refused the credentials of {where} ({_brief(exc)}): check its login "
                    "(access key id) and password (secret key), or the role_arn or profile_name of its extra")
        if code == "NoSuchBucket":
            bucket = exc.response.get("Error", {}).get("BucketName", "")
            return (f"object storage has no bucket {bucket!r} ({where}): create it, or correct PORTABILITY_BUCKETS"
                    if bucket else "object storage has no such bucket: create it, or correct PORTABILITY_BUCKETS")
        return f"object storage failed ({_brief(exc)}); check {where} and the server"
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return (f"cannot reach object storage ({type(exc).__name__}): check the endpoint_url of {where} "
                "and that the server is up")
    if isinstance(exc, NoCredentialsError):
        return f"no credentials for object storage: give {where} a login and password, or the worker an IAM role"
    if isinstance(exc, ProfileNotFound | PartialCredentialsError):
        return f"object storage credentials are incomplete ({type(exc).__name__}): check the profile_name of {where}"
    return f"object storage failed ({_brief(exc)}); check {where} and the server"


class ObjectStore:
    """The pipeline's view of one S3-compatible service."""

    def __init__(self, settings: StorageSettings, timed_upload: Callable[[], AbstractContextManager] = nullcontext):
        self.settings = settings
        self._client = None
        # What uploads and their waits are charged to: a step's `Progress.timed("uploading")`, or nothing.
        self.timed_upload = timed_upload

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    @contextmanager
    def upload(self, bucket: str, key: str, *, content_type: str = "application/octet-stream",
               create_only: bool = False, part_bytes: int = PART_BYTES) -> Iterator[UploadStream]:
        """Stream bytes into `bucket/key`; the object appears only if the block completes."""
        client = make_client(self.settings, create_only=True) if create_only else self.client
        stream = UploadStream(client, bucket, key, {"ContentType": content_type, "ServerSideEncryption": "AES256"},
                              part_bytes=part_bytes, timed=self.timed_upload)
        try:
            yield stream
        except BaseException:
            stream.abort()
            raise
        stream.finish()

    def part_upload(self, bucket: str, key: str, *, content_type: str, create_only: bool = False) -> PartUpload:
        """A multipart upload to `bucket/key` filled by part number; see `PartUpload`."""
        client = make_client(self.settings, create_only=True) if create_only else self.client
        return PartUpload(client, bucket, key, {"ContentType": content_type, "ServerSideEncryption": "AES256"},
                          timed=self.timed_upload)

    def open(self, bucket: str, key: str):
        """A readable stream of an object's bytes."""
        return self.client.get_object(Bucket=bucket, Key=key)["Body"]

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str) -> None:
        with self.timed_upload():
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type,
                                   ServerSideEncryption="AES256")

    def read_bytes(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise StorageError(f"object storage did not answer whether {key.rsplit('/', 1)[-1]} exists in {bucket}: "
                               f"{explain(exc)}") from exc

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        deleted = 0
        batch: list[dict] = []
        for key in self.keys(bucket, prefix):
            batch.append({"Key": key})
            if len(batch) == 1000:
                deleted += self._delete(bucket, batch)
                batch = []
        if batch:
            deleted += self._delete(bucket, batch)
        return deleted

    def _delete(self, bucket: str, objects: list[dict]) -> int:
        self.client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        return len(objects)

    def set_expiry_rules(self, bucket: str, days_by_prefix: dict[str, int]) -> list[dict]:
        """Lifecycle rules that delete objects under each prefix after so many days; returns the rules set.

        Uploads left incomplete (a killed export's parts hold personal data too) are dropped after a day.
        """
        rules = [{"ID": f"portability-expire-{prefix.strip('/')}", "Filter": {"Prefix": prefix}, "Status": "Enabled",
                  "Expiration": {"Days": days}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
                 for prefix, days in sorted(days_by_prefix.items())]
        self.client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
        return self.client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]

    def presigned_get(self, bucket: str, key: str, *, expires_in_seconds: int, filename: str) -> str:
        """A bearer link to download one object. Never log or store the result."""
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'},
            ExpiresIn=expires_in_seconds,
        )
        if not url:
            raise StorageError(f"could not sign a link for export archive {filename}")
        return url
