"""Mutual TLS for tcu's gRPC services: credentials, peer identity, revocation, an auth interceptor.

The ingest (a ``grpc.aio`` server) and the agent (a ``grpc.aio`` client) use these::

    # ingest
    revocation = RevocationChecker(pki.crl, ca_path=pki.ca_cert)
    server = grpc.aio.server(interceptors=[MtlsInterceptor(revocation, require=INGEST_POLICY)])
    server.add_secure_port("0.0.0.0:50051", server_credentials(pki.server_cert, pki.server_key, pki.ca_cert))
    ...
    vin = bound_vehicle_id(context, hello.vehicle_id)   # inside Upload: the certificate names the vehicle

    # agent
    cert, key = pki.vehicle(vin)
    channel = grpc.aio.secure_channel("ingest:50051", channel_credentials(pki.ca_cert, cert, key))

gRPC checks the certificate chain and the validity period during the
handshake, so clients without a certificate, with a certificate from another CA or
an expired one never reach a handler. gRPC Python cannot check a CRL, so
:class:`MtlsInterceptor` does: it refuses a revoked (and, defensively, an expired
or identity-less) certificate with ``UNAUTHENTICATED`` before the handler runs, and
a certificate of the wrong kind for the method with ``PERMISSION_DENIED``.

Secrets are passed as file paths and never logged; refusal log lines carry the
reason, peer address, identity, certificate serial and method, all public.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from tcu.logutil import RateLimitedLog
from tcu.pki._errors import CertificateRejected, CertificateRejectReason, PkiError
from tcu.pki.ca import load_certificate, load_crl
from tcu.pki.identity import PeerIdentity, PeerKind, identity_from_certificate

__all__ = [
    "FLEET_SERVICE_PREFIX",
    "HEALTH_SERVICE_PREFIX",
    "INGEST_POLICY",
    "INGEST_SERVICE_PREFIX",
    "REFLECTION_SERVICE_PREFIX",
    "MtlsInterceptor",
    "RevocationChecker",
    "bound_vehicle_id",
    "channel_credentials",
    "identity_from_pem",
    "peer_identity",
    "server_credentials",
]

log = logging.getLogger(__name__)

INGEST_SERVICE_PREFIX = "/tcu.api.v1.Ingest/"
FLEET_SERVICE_PREFIX = "/tcu.api.v1.Fleet/"
HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_SERVICE_PREFIX = "/grpc.reflection."

_VEHICLE_ONLY: tuple[PeerKind, ...] = ("vehicle",)
_BACKEND_ONLY: tuple[PeerKind, ...] = ("backend",)
INGEST_POLICY: Mapping[str, Collection[PeerKind]] = {
    INGEST_SERVICE_PREFIX: _VEHICLE_ONLY,
    FLEET_SERVICE_PREFIX: _BACKEND_ONLY,
}
"""Vehicles may only upload; OEM backends may only use the fleet API. Other methods
(health, reflection) accept any valid tcu identity."""


def _read_file(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {what}: {exc.strerror}", path=os.fspath(path)) from exc


def server_credentials(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    client_ca_path: str | os.PathLike[str],
    *,
    require_client_auth: bool = True,
) -> grpc.ServerCredentials:
    """TLS server credentials that verify client certificates against ``client_ca_path``.

    With ``require_client_auth=False`` a client without a certificate completes the
    handshake (a presented certificate is still verified); :class:`MtlsInterceptor`
    then refuses it on every method that is not listed as anonymous.
    """
    return grpc.ssl_server_credentials(
        [(_read_file(key_path, "server key"), _read_file(cert_path, "server certificate"))],
        root_certificates=_read_file(client_ca_path, "client CA certificate"),
        require_client_auth=require_client_auth,
    )


def channel_credentials(
    ca_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str] | None = None,
    key_path: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials trusting ``ca_path``, presenting ``cert_path``/``key_path`` if given.

    The server certificate must name the host of the target (``localhost`` and
    ``127.0.0.1`` for :meth:`tcu.pki.DevPki.init` defaults); use the channel option
    ``grpc.ssl_target_name_override`` only in tests.
    """
    if (cert_path is None) != (key_path is None):
        raise PkiError("a client certificate and its key must be given together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(ca_path, "CA certificate"),
        private_key=_read_file(key_path, "client key") if key_path is not None else None,
        certificate_chain=_read_file(cert_path, "client certificate") if cert_path is not None else None,
    )


@functools.lru_cache(maxsize=4096)
def identity_from_pem(pem: bytes) -> PeerIdentity | None:
    """The tcu identity of a PEM certificate, or ``None`` (cached: one parse per certificate)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return identity_from_certificate(cert)


def _peer_pem(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    values = list(context.auth_context().get("x509_pem_cert", ()))
    return values[0] if values else None


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> PeerIdentity | None:
    """The identity of the verified client certificate of this call, or ``None``.

    ``None`` means no certificate was presented or it carries no tcu identity.
    This does not check revocation; :class:`MtlsInterceptor` does that first.
    """
    pem = _peer_pem(context)
    return identity_from_pem(pem) if pem is not None else None


def bound_vehicle_id(context: grpc.aio.ServicerContext[Any, Any], claimed_vehicle_id: str | None) -> str:
    """The VIN of the calling vehicle's certificate, checked against what the peer claims.

    Use it on the first message of a vehicle stream (``Hello.vehicle_id``) so that data
    is always stored under the certificate's identity. Raises
    :class:`CertificateRejected` (``UNKNOWN_IDENTITY``, ``WRONG_KIND`` or
    ``IDENTITY_MISMATCH``); an empty or ``None`` claim takes the certificate's VIN.
    """
    ident = peer_identity(context)
    if ident is None:
        raise CertificateRejected(CertificateRejectReason.UNKNOWN_IDENTITY, "no vehicle certificate")
    if ident.kind != "vehicle":
        raise CertificateRejected(
            CertificateRejectReason.WRONG_KIND, f"{ident.kind} {ident.name} is no vehicle"
        )
    if claimed_vehicle_id and claimed_vehicle_id != ident.name:
        raise CertificateRejected(
            CertificateRejectReason.IDENTITY_MISMATCH,
            f"certificate of vehicle {ident.name} claims vehicle {claimed_vehicle_id!r}",
        )
    return ident.name


class RevocationChecker:
    """Revoked serial numbers from a PEM CRL file, reloaded when the file changes.

    The CRL is loaded (and, with ``ca_path``, its signature checked) in the
    constructor, which raises :class:`PkiError` if that fails. Afterwards
    :meth:`refresh` looks at the file at most every ``check_interval_s`` seconds,
    in a worker thread; a CRL that fails to load or verify later is logged and the
    previous one stays in force (the last good list is never dropped).

    :meth:`watch` (a task of the server) re-reads the file every ``check_interval_s``
    also when no call starts, and every newly loaded list is passed to the callbacks
    given to :meth:`on_change` (on the event loop): :class:`MtlsInterceptor` ends the
    open streams of newly revoked certificates there.
    """

    def __init__(
        self,
        crl_path: str | os.PathLike[str],
        *,
        ca_path: str | os.PathLike[str] | None = None,
        check_interval_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.crl_path = Path(crl_path)
        self._ca_public_key = load_certificate(ca_path).public_key() if ca_path is not None else None
        self._check_interval_s = check_interval_s
        self._monotonic = monotonic
        self._revoked: frozenset[int] = frozenset()
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._refreshing = False
        self._listeners: list[Callable[[frozenset[int]], None]] = []
        self._problems = RateLimitedLog(log, burst=1, interval_s=300.0)
        self._load(self._stat())

    @property
    def revoked_serials(self) -> frozenset[int]:
        return self._revoked

    def is_revoked(self, serial: int) -> bool:
        return serial in self._revoked

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self.crl_path.stat()
        except OSError as exc:
            raise PkiError(f"cannot stat CRL: {exc.strerror}", path=str(self.crl_path)) from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, stamp: tuple[int, int, int]) -> None:
        crl = load_crl(self.crl_path)
        if self._ca_public_key is not None and not crl.is_signature_valid(self._ca_public_key):  # type: ignore[arg-type]
            raise PkiError("CRL signature does not verify with the CA certificate", path=str(self.crl_path))
        next_update = crl.next_update_utc
        if next_update is not None and next_update < dt.datetime.now(dt.UTC):
            log.warning("CRL %s is past its next update (%s); still using it", self.crl_path, next_update)
        self._revoked = frozenset(entry.serial_number for entry in crl)
        self._stamp = stamp
        log.info("loaded CRL %s: %d revoked certificates", self.crl_path, len(self._revoked))

    def reload_if_changed(self) -> bool:
        """Reload the CRL if the file changed (blocking). Returns whether a new list is in force."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            self._load(stamp)
        except PkiError as exc:  # rate-limited: the watcher looks every check_interval_s
            self._problems.log(
                str(exc),
                logging.WARNING,
                "keeping the previous CRL (%d revoked): %s",
                len(self._revoked),
                exc,
            )
            return False
        return True

    @property
    def check_interval_s(self) -> float:
        return self._check_interval_s

    def on_change(self, callback: Callable[[frozenset[int]], None]) -> None:
        """Call ``callback(revoked_serials)`` on the event loop whenever a new CRL is in force."""
        self._listeners.append(callback)

    async def refresh(self) -> None:
        """Reload in a worker thread if ``check_interval_s`` passed and the file changed."""
        now = self._monotonic()
        if self._refreshing or now < self._next_check:
            return
        self._refreshing = True
        self._next_check = now + self._check_interval_s
        try:
            changed = await asyncio.to_thread(self.reload_if_changed)
        finally:
            self._refreshing = False
        if changed:
            for callback in list(self._listeners):
                callback(self._revoked)

    async def watch(self) -> None:
        """Re-read the CRL every ``check_interval_s`` until cancelled (run it as a task)."""
        while True:
            await asyncio.sleep(self._check_interval_s)
            try:
                await self.refresh()
            except Exception:  # never let the watcher die; the last good list stays in force
                log.exception("checking the CRL %s failed", self.crl_path)


_Behavior = Callable[..., Any]


class MtlsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls whose client certificate is missing, revoked, expired or of the wrong kind.

    ``require`` maps method-name prefixes (``"/tcu.api.v1.Fleet/"``) to the identity
    kinds allowed there; the first matching prefix wins and other methods accept
    ``default_kinds``. Methods starting with a prefix in ``anonymous`` (for example
    :data:`HEALTH_SERVICE_PREFIX` for load balancers) need no certificate, but a
    presented one is still checked for revocation and validity.

    The check runs inside the wrapped handler, before it, on every call: missing,
    unknown, revoked, expired or not-yet-valid certificates get ``UNAUTHENTICATED``,
    a kind not allowed on the method gets ``PERMISSION_DENIED``. Each refusal logs
    one WARNING line starting with ``security:``.

    Open streams (server-streaming and bidirectional calls) are tracked by certificate
    serial: when the revocation checker loads a CRL that revokes one, the stream's
    handler task is cancelled and the call ends with ``UNAUTHENTICATED`` ("revoked while
    the stream was open"), within the checker's ``check_interval_s`` of the file change
    (:meth:`RevocationChecker.watch` must run). A handler cancelled while gRPC is
    sending one of its messages ends as CANCELLED instead; either way the stream ends.
    """

    def __init__(
        self,
        revocation: RevocationChecker | None,
        *,
        require: Mapping[str, Collection[PeerKind]] | None = None,
        default_kinds: Collection[PeerKind] = ("vehicle", "backend"),
        anonymous: Sequence[str] = (),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._revocation = revocation
        self._require = tuple((prefix, frozenset(kinds)) for prefix, kinds in (require or {}).items())
        self._default_kinds = frozenset(default_kinds)
        self._anonymous = tuple(anonymous)
        self._clock = clock
        self._refusals = RateLimitedLog(log)  # a client retrying a refused certificate cannot flood the log
        self._open: dict[int, set[asyncio.Task[Any]]] = {}  # serial -> handler tasks of its open streams
        self._revoked_tasks: set[asyncio.Task[Any]] = set()
        if revocation is not None:
            revocation.on_change(self._end_revoked_streams)

    @property
    def open_streams(self) -> int:
        """Streams being served now whose certificate is tracked for revocation."""
        return sum(len(tasks) for tasks in self._open.values())

    def _end_revoked_streams(self, revoked: frozenset[int]) -> None:
        for serial in revoked & self._open.keys():
            for task in self._open[serial]:
                if task not in self._revoked_tasks:
                    self._revoked_tasks.add(task)
                    task.cancel("client certificate revoked")

    def _kinds_for(self, method: str) -> frozenset[PeerKind]:
        for prefix, kinds in self._require:
            if method.startswith(prefix):
                return kinds
        return self._default_kinds

    def check(self, ident: PeerIdentity | None, method: str, *, has_certificate: bool) -> None:
        """Raise :class:`CertificateRejected` if ``ident`` may not call ``method`` (no I/O)."""
        anonymous = method.startswith(self._anonymous) if self._anonymous else False
        if not has_certificate:
            if anonymous:
                return
            raise CertificateRejected(CertificateRejectReason.MISSING, "no client certificate")
        if ident is None:
            if anonymous:
                return
            raise CertificateRejected(CertificateRejectReason.UNKNOWN_IDENTITY, "no tcu identity")
        now = self._clock()
        if now > ident.not_after:
            raise CertificateRejected(CertificateRejectReason.EXPIRED, f"expired at {ident.not_after}")
        if now < ident.not_before:
            raise CertificateRejected(CertificateRejectReason.NOT_YET_VALID, f"valid from {ident.not_before}")
        if self._revocation is not None and self._revocation.is_revoked(ident.serial):
            raise CertificateRejected(CertificateRejectReason.REVOKED, "certificate is revoked")
        if not anonymous and ident.kind not in self._kinds_for(method):
            raise CertificateRejected(
                CertificateRejectReason.WRONG_KIND, f"{ident.kind} may not call {method}"
            )

    async def _authorize(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> PeerIdentity | None:
        """Refuse the call (abort) or return the caller's identity (None for an anonymous one)."""
        if self._revocation is not None:
            await self._revocation.refresh()
        pem = _peer_pem(context)
        ident = identity_from_pem(pem) if pem is not None else None
        try:
            self.check(ident, method, has_certificate=pem is not None)
        except CertificateRejected as exc:
            self._refusals.log(
                (exc.reason, ident.serial if ident is not None else context.peer()),
                logging.WARNING,
                "security: refused %s from %s: reason=%s identity=%s serial=%s",
                method,
                context.peer(),
                exc.reason.value,
                f"{ident.kind}:{ident.name}" if ident is not None else "-",
                f"{ident.serial:x}" if ident is not None else "-",
            )
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.reason is CertificateRejectReason.WRONG_KIND
                else grpc.StatusCode.UNAUTHENTICATED
            )
            await context.abort(code, f"client certificate refused: {exc.reason.value}")
        return ident

    @contextlib.contextmanager
    def _tracked(self, ident: PeerIdentity | None) -> Iterator[asyncio.Task[Any] | None]:
        """Register the current handler task under the certificate's serial while the stream is open."""
        task = asyncio.current_task()
        if ident is None or task is None or self._revocation is None:
            yield None
            return
        tasks = self._open.setdefault(ident.serial, set())
        tasks.add(task)
        try:
            yield task
        finally:
            tasks.discard(task)
            if not tasks:
                self._open.pop(ident.serial, None)
            self._revoked_tasks.discard(task)

    async def _end_revoked(
        self, task: asyncio.Task[Any] | None, ident: PeerIdentity | None, context: Any, method: str
    ) -> None:
        """After a CancelledError in a stream handler: abort UNAUTHENTICATED if it was a revocation."""
        if task is None or ident is None or task not in self._revoked_tasks:
            return
        task.uncancel()
        self._refusals.log(
            (CertificateRejectReason.REVOKED, ident.serial),
            logging.WARNING,
            "security: ended %s from %s: reason=revoked while the stream was open identity=%s serial=%x",
            method,
            context.peer(),
            f"{ident.kind}:{ident.name}",
            ident.serial,
        )
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"client certificate refused: {CertificateRejectReason.REVOKED.value} while the stream was open",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return handler
        method: str = handler_call_details.method
        h: Any = handler
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(h.unary_unary, method), h.request_deserializer, h.response_serializer
            )
        if h.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(h.stream_unary, method), h.request_deserializer, h.response_serializer
            )
        if h.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(h.unary_stream, method), h.request_deserializer, h.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(h.stream_stream, method), h.request_deserializer, h.response_serializer
        )

    def _wrap_unary(self, inner: _Behavior, method: str) -> _Behavior:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self._authorize(context, method)
            result = inner(request, context)
            if inspect.isawaitable(result):
                return await result
            return result

        return behavior

    def _wrap_stream(self, inner: _Behavior, method: str) -> _Behavior:
        if inspect.isasyncgenfunction(inner):

            async def generator(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                ident = await self._authorize(context, method)
                with self._tracked(ident) as task:
                    try:
                        async for response in inner(request, context):
                            yield response
                    except asyncio.CancelledError:
                        await self._end_revoked(task, ident, context, method)
                        raise

            return generator

        async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            ident = await self._authorize(context, method)
            with self._tracked(ident) as task:
                try:
                    result = inner(request, context)
                    if inspect.isawaitable(result):  # a coroutine that answers with context.write()
                        await result
                    elif result is not None:  # a plain iterator of responses
                        for response in result:
                            await context.write(response)
                except asyncio.CancelledError:
                    await self._end_revoked(task, ident, context, method)
                    raise

        return writer
