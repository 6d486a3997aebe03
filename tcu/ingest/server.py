"""Composition root of the cloud ingest: sink, hub, servicers, health and reflection on one gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2 as health_pb
from grpc_health.v1 import health_pb2_grpc as health_grpc

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.errors import ClosedResourceError, IngestError
from tcu.ingest.commands import CommandPath, CommandRouter
from tcu.ingest.config import IngestConfig
from tcu.ingest.fleet import Caller, FleetService, peer_address, peer_host
from tcu.ingest.fleet import add_to_server as add_fleet_to_server
from tcu.ingest.hub import UpdateHub
from tcu.ingest.reflection import V1_SERVICE, V1ALPHA_SERVICE, enable_reflection
from tcu.ingest.servicer import Identity, IngestService, add_to_server, no_identity
from tcu.ingest.store import Sink, SqliteSink
from tcu.ingest.streams import StreamLimiter
from tcu.ingest.validate import Limits
from tcu.pki import INGEST_POLICY, MtlsInterceptor, RevocationChecker, peer_identity, server_credentials
from tcu.sdnotify import Notifier

if TYPE_CHECKING:
    from tcu.ingest.jetstream import JetStreamSink

__all__ = ["SERVICE_NAMES", "IngestServer", "serve"]

log = logging.getLogger(__name__)

INGEST_SERVICE: str = ingest_pb.DESCRIPTOR.services_by_name["Ingest"].full_name
FLEET_SERVICE: str = fleet_pb.DESCRIPTOR.services_by_name["Fleet"].full_name
HEALTH_SERVICE: str = health_pb.DESCRIPTOR.services_by_name["Health"].full_name
SERVICE_NAMES: tuple[str, ...] = (INGEST_SERVICE, FLEET_SERVICE, HEALTH_SERVICE, V1_SERVICE, V1ALPHA_SERVICE)
"""Every service the server registers (all of them are listed by reflection)."""

_CELLULAR_OPTIONS: tuple[tuple[str, int], ...] = (
    # Vehicles on cellular links send keepalive pings, also when idle; allow them.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
)


class IngestServer:
    """The ``tcu ingest`` server. ``port = await server.start()``; ``await server.stop(grace_s)``.

    Without ``sink`` it opens the embedded :class:`~tcu.ingest.store.SqliteSink`
    at ``config.db_path`` (and closes it on stop). With ``config.tls`` the port
    is mTLS: a client certificate from ``client_ca`` is required, revoked or
    expired ones are refused (:class:`~tcu.pki.MtlsInterceptor`), vehicles may
    only call ``Ingest`` and backends only ``Fleet``, and every upload is bound
    to the vehicle id in the certificate. ``server_credentials`` and
    ``identity`` override that (tests). ``commands`` is the command router: by default the
    in-process :class:`~tcu.ingest.commands.CommandRouter`; a
    :class:`~tcu.ingest.command_bus.JetStreamCommandRouter` makes commands durable across
    replicas (the server starts and closes it).
    """

    def __init__(
        self,
        config: IngestConfig,
        *,
        server_credentials: grpc.ServerCredentials | None = None,
        identity: Identity = no_identity,
        sink: Sink | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
        store_check_s: float = 1.0,
        worker: int | None = None,
        write_turn: contextlib.AbstractContextManager[object] | None = None,
        commands: CommandPath | None = None,
    ) -> None:
        self._config = config
        self._worker = worker
        self._write_turn = write_turn
        self._revocation: RevocationChecker | None = None
        self._crl_watch: asyncio.Task[None] | None = None
        self._interceptors: list[grpc.aio.ServerInterceptor] = list(interceptors)  # type: ignore[type-arg]
        self._store_check_s = store_check_s
        self._store_task: asyncio.Task[None] | None = None
        if config.tls is not None and server_credentials is None:
            server_credentials = make_server_credentials(config)
            revocation = (
                RevocationChecker(
                    config.tls.crl, ca_path=config.tls.client_ca, check_interval_s=config.crl_check_interval_s
                )
                if config.tls.crl
                else None
            )
            self._revocation = revocation
            self._interceptors.append(MtlsInterceptor(revocation, require=INGEST_POLICY))
            if identity is no_identity:
                identity = certificate_vehicle_id
        self._credentials = server_credentials
        self._identity = identity
        self._given_sink = sink
        self._sink: Sink | None = None
        self._server: grpc.aio.Server | None = None
        self._hub = UpdateHub(config.subscriber_queue, config.subscriber_max_bytes)
        self._ingest: IngestService | None = None
        self._commands: CommandPath = (
            commands if commands is not None else CommandRouter(max_pending=config.max_pending_commands)
        )
        self.streams = StreamLimiter(
            max_streams=config.max_streams, max_per_identity=config.max_streams_per_identity
        )
        self._caller: Caller = certificate_caller if config.tls is not None else peer_address
        self._health: _AsyncHealth | None = None
        self._port: int | None = None
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def bound_port(self) -> int:
        """The port the server listens on (after :meth:`start`)."""
        if self._port is None:
            raise IngestError("the ingest server has not been started")
        return self._port

    @property
    def hub(self) -> UpdateHub:
        return self._hub

    @property
    def implausible_times(self) -> dict[str, int]:
        """Samples per vehicle dated before 2000 or in the future (stored but flagged)."""
        return dict(self._ingest.implausible_times) if self._ingest is not None else {}

    @property
    def commands(self) -> CommandPath:
        """Connected vehicles and pending commands."""
        return self._commands

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            raise IngestError("the ingest server has not been started")
        return self._sink

    async def start(self) -> int:
        """Open the sink, bind, start serving; return the bound port."""
        if self._stop_task is not None:
            raise ClosedResourceError("the ingest server was stopped; make a new one")
        if self._server is not None:
            raise IngestError("the ingest server is already started")
        config = self._config
        await self._commands.start()
        try:
            sink: Sink = (
                self._given_sink
                if self._given_sink is not None
                else await _open_sink(config, write_turn=self._write_turn)
            )
        except BaseException:
            await self._commands.aclose()
            raise
        self._sink = sink
        stream_sink = _jetstream(sink)
        from_stream = stream_sink is not None
        if stream_sink is not None:  # Subscribe is fed from the shared stream, not from this process
            try:
                await stream_sink.feed(self._hub)
            except BaseException:
                if self._given_sink is None:
                    await sink.aclose()
                await self._commands.aclose()
                raise
        options: list[tuple[str, int]] = [
            *_CELLULAR_OPTIONS,
            ("grpc.max_receive_message_length", config.max_message_bytes),
            # gRPC sets SO_REUSEPORT by default: a second ingest on the port would start normally.
            ("grpc.so_reuseport", int(config.reuse_port)),
        ]
        if config.max_connection_age_s is not None:
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)))
            options.append(
                ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000))
            )
        server = grpc.aio.server(interceptors=self._interceptors or None, options=options)
        self._ingest = IngestService(
            sink,
            self._hub,
            Limits.from_config(config),
            pipeline_depth=config.pipeline_depth,
            identity=self._identity,
            max_batches_per_s=config.max_batches_per_s,
            batch_burst=config.batch_burst,
            throttle_max_wait_s=config.throttle_max_wait_s,
            commands=self._commands,
            streams=self.streams,
            hello_timeout_s=config.hello_timeout_s,
            worker=self._worker,
            publish_live=not from_stream,
        )
        add_to_server(self._ingest, server)  # Upload keeps each batch's bytes as received
        add_fleet_to_server(
            FleetService(
                sink,
                self._hub,
                default_chunk=config.query_chunk_samples,
                max_chunk=config.query_chunk_samples_max,
                commands=self._commands,
                caller=self._caller,
                command_timeout_s=config.command_timeout_s,
                command_timeout_max_s=config.command_timeout_max_s,
                max_command_bytes=config.max_command_bytes,
                max_string_bytes=config.max_string_bytes,
                streams=self.streams,
                identity=certificate_identity if config.tls is not None else peer_host,
                workers=config.workers,
            ),
            server,
        )
        self._health = _AsyncHealth()
        health_grpc.add_HealthServicer_to_server(self._health.servicer, server)
        enable_reflection(SERVICE_NAMES, server)  # v1 and v1alpha
        problem = None if config.reuse_port else _bind_problem(config.listen)
        try:
            if problem is not None:  # said before gRPC tries (it would log its own lines first)
                raise RuntimeError(problem)
            if self._credentials is None:
                port = server.add_insecure_port(config.listen)
            else:
                port = server.add_secure_port(config.listen, self._credentials)
        except RuntimeError as exc:
            if self._given_sink is None:
                await sink.aclose()
            await self._commands.aclose()
            why = problem or _bind_problem(config.listen) or exc
            raise IngestError(f"ingest.listen: cannot listen on {config.listen}: {why}") from exc
        await server.start()
        self._server = server
        self._port = port
        if self._revocation is not None:  # a CRL change ends the revoked certificates' open streams
            self._crl_watch = asyncio.create_task(self._revocation.watch(), name="tcu-ingest-crl-watch")
        for name in ("", INGEST_SERVICE, FLEET_SERVICE):
            await self._health.set(name, health_pb.HealthCheckResponse.SERVING)
        self._store_task = asyncio.create_task(self._watch_store(), name="tcu.ingest.store-health")
        log.info(
            "ingest listening on %s (port %d), %s",
            config.listen,
            port,
            f"JetStream sink, history from {config.db_path}" if from_stream else f"database {config.db_path}",
        )
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let streams ack what is in flight, close the sink. Idempotent."""
        if self._stop_task is None:
            grace = self._config.grace_s if grace_s is None else grace_s
            self._stop_task = asyncio.create_task(self._stop(grace), name="tcu-ingest-stop")
        await asyncio.shield(self._stop_task)

    async def _watch_store(self) -> None:
        """gRPC health follows the store: NOT_SERVING while it cannot commit (logged on each change)."""
        from tcu.ingest.metrics import ingest_health

        serving = True
        while True:
            await asyncio.sleep(self._store_check_s)
            health = ingest_health(self)
            if health["healthy"] == serving or self._health is None:
                continue
            serving = bool(health["healthy"])
            status = (
                health_pb.HealthCheckResponse.SERVING
                if serving
                else health_pb.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", INGEST_SERVICE):
                await self._health.set(name, status)
            if serving:
                log.warning("ingest: the store commits again: health SERVING")
            else:
                log.error("ingest: the store cannot commit (%s): health NOT_SERVING", health["store"])

    async def _stop(self, grace_s: float) -> None:
        if self._crl_watch is not None:
            self._crl_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._crl_watch
        if self._store_task is not None:
            self._store_task.cancel()
        if self._health is not None:
            await self._health.shutdown()
        if self._ingest is not None:
            self._ingest.drain()
        self._commands.close()
        self._hub.close()
        if self._server is not None:
            await self._server.stop(grace_s)
        await self._commands.aclose()
        if self._sink is not None and self._given_sink is None:
            await self._sink.aclose()
        log.info("ingest stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def _open_sink(
    config: IngestConfig, *, write_turn: contextlib.AbstractContextManager[object] | None = None
) -> Sink:
    if config.sink == "jetstream":
        from tcu.ingest.jetstream import JetStreamSink

        return await JetStreamSink.open(config)
    return await SqliteSink.open(config, write_turn=write_turn)


def _jetstream(sink: Sink) -> JetStreamSink | None:
    module = sys.modules.get("tcu.ingest.jetstream")  # not imported: not a JetStream sink (no nats import)
    if module is None:
        return None
    found: JetStreamSink | None = sink if isinstance(sink, module.JetStreamSink) else None
    return found


def _bind_problem(listen: str) -> str | None:
    """Why ``listen`` cannot be bound, or None: bind it ourselves (gRPC only says "Failed to bind")."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if port == "0":
        return None
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as lookup:
        return f"cannot resolve {host!r}: {lookup.strerror or lookup}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as bind:
                if bind.errno == errno.EADDRINUSE:
                    return (
                        "address in use (another process listens there; --reuse-port shares the port"
                        " on purpose)"
                    )
                return bind.strerror or str(bind)
    return None


def make_server_credentials(config: IngestConfig) -> grpc.ServerCredentials:
    assert config.tls is not None
    return server_credentials(config.tls.cert, config.tls.key, config.tls.client_ca, require_client_auth=True)


def certificate_vehicle_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The identity hook of an mTLS ingest: the VIN of the caller's vehicle certificate."""
    ident = peer_identity(context)
    if ident is None or ident.kind != "vehicle":
        return ""  # no vehicle identity: matches no vehicle id, so every upload is refused
    return ident.name


def certificate_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who calls, for stream caps on an mTLS ingest: ``backend:<name>`` from the certificate."""
    ident = peer_identity(context)
    return f"{ident.kind}:{ident.name}" if ident is not None else "unidentified"


def certificate_caller(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who calls, for the log of an mTLS ingest: ``backend:<name>`` from the certificate, and the peer."""
    ident = peer_identity(context)
    name = f"{ident.kind}:{ident.name}" if ident is not None else "unidentified"
    return f"{name} ({context.peer()})"


class _AsyncHealth:
    """grpc_health's asyncio servicer (its stubs only describe the threaded one)."""

    def __init__(self) -> None:
        from grpc_health.v1 import health as health_module

        # The stubs lack ``health.aio``; the runtime module has it (grpcio-health-checking >= 1.5x).
        self.servicer: Any = health_module.aio.HealthServicer()  # type: ignore[attr-defined]

    async def set(self, service: str, status: health_pb.HealthCheckResponse.ServingStatus) -> None:
        await self.servicer.set(service, status)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()


async def serve(
    config: IngestConfig,
    *,
    on_listening: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    notifier: Notifier | None = None,
    metrics_listen: str | None = None,
    worker: int | None = None,
    write_turn: contextlib.AbstractContextManager[object] | None = None,
    commands: CommandPath | None = None,
) -> None:
    """Run the ingest until SIGTERM or SIGINT (or ``stop`` is set), then stop cleanly.

    ``on_listening(port)`` runs once the server listens (the CLI writes its port file there).
    With ``notifier`` (systemd), READY=1 follows, the watchdog follows the database writer
    and STOPPING=1 precedes the stop (:mod:`tcu.ingest.notify`). With ``metrics_listen``,
    Prometheus ``/metrics`` and ``/healthz`` are served there (:mod:`tcu.ingest.metrics`).
    ``worker`` is this process's index under ``tcu ingest --workers N`` (:mod:`tcu.ingest.workers`),
    ``write_turn`` the workers' shared FIFO turn for writing the database.
    ``commands`` replaces the in-process command router (see :class:`IngestServer`).
    """
    from tcu.ingest.metrics import RpcCounter

    rpcs = RpcCounter()
    server = IngestServer(
        config,
        interceptors=[rpcs] if metrics_listen else (),
        worker=worker,
        write_turn=write_turn,
        commands=commands,
    )
    metrics: Any = None
    stop_event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop_event.set)
            installed.append(signum)
    notify_task: asyncio.Task[None] | None = None
    try:
        port = await server.start()
        if metrics_listen is not None:
            from tcu.ingest.metrics import ingest_health, ingest_snapshot
            from tcu.metrics import MetricsServer

            metrics = MetricsServer(
                metrics_listen,
                key="--metrics-listen",
                loop=asyncio.get_running_loop(),
                snapshot=lambda: ingest_snapshot(server, rpcs),
                health=lambda: ingest_health(server),
            ).start()
        if on_listening is not None:
            on_listening(port)
        if notifier is not None:
            from tcu.ingest.notify import IngestNotify, status_line

            notifier.ready(status_line(server, 0.0))
            notify_task = asyncio.create_task(IngestNotify(server, notifier).run(), name="tcu.ingest.notify")
        await stop_event.wait()
        log.info("stopping the ingest (grace %.1f s)", config.grace_s)
        if notifier is not None:
            notifier.stopping(f"stopping (grace {config.grace_s:.1f} s)")
    finally:
        if notify_task is not None:
            notify_task.cancel()
        if metrics is not None:
            metrics.stop()
        for signum in installed:
            loop.remove_signal_handler(signum)
        await server.stop(config.grace_s)
