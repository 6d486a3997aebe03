"""mTLS on a real grpc.aio server on 127.0.0.1: handshake refusals, identity, revocation, policy."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tcu.pki import (
    INGEST_POLICY,
    CertificateRejected,
    CertificateRejectReason,
    MtlsInterceptor,
    RevocationChecker,
    bound_vehicle_id,
    channel_credentials,
    identity_from_certificate,
    load_certificate,
    peer_identity,
    server_credentials,
)
from tcu.pki.grpc_tls import HEALTH_SERVICE_PREFIX

Pkis = Any  # the conftest fixture type (conftest modules are not importable by name)
GOOD_VIN = "WDD2050461A000001"
REVOKED_VIN = "WDD2050461A000002"
EXPIRED_VIN = "WDD2050461A000003"
OTHER_VIN = "WDD2050461A000004"
BACKEND = "acme-backend"
UPLOAD = "/tcu.api.v1.Ingest/Upload"
LIST_VEHICLES = "/tcu.api.v1.Fleet/ListVehicles"


def _raw(b: bytes) -> bytes:
    return b


async def _upload(request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """Stands in for Ingest.Upload: the first message is the claimed VIN; answers with the bound one."""
    async for claimed in request_iterator:
        try:
            vin = bound_vehicle_id(context, claimed.decode())
        except CertificateRejected as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        yield vin.encode()


async def _list_vehicles(request: bytes, context: Any) -> bytes:
    ident = peer_identity(context)
    assert ident is not None
    return f"{ident.kind}:{ident.name}".encode()


def _app_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "tcu.api.v1.Ingest",
        {"Upload": grpc.stream_stream_rpc_method_handler(_upload, _raw, _raw)},
    )


def _fleet_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "tcu.api.v1.Fleet",
        {"ListVehicles": grpc.unary_unary_rpc_method_handler(_list_vehicles, _raw, _raw)},
    )


async def _start(pkis: Pkis, *, require_client_auth: bool = True, anonymous: tuple[str, ...] = ()) -> Any:
    pki = pkis.main
    revocation = RevocationChecker(pki.crl, ca_path=pki.ca_cert, check_interval_s=0.0)
    server = grpc.aio.server(
        interceptors=[MtlsInterceptor(revocation, require=INGEST_POLICY, anonymous=anonymous)]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_generic_rpc_handlers([_app_handler(), _fleet_handler()])
    port = server.add_secure_port(
        "127.0.0.1:0",
        server_credentials(
            pki.server_cert, pki.server_key, pki.ca_cert, require_client_auth=require_client_auth
        ),
    )
    await server.start()
    return server, port


@pytest.fixture
async def mtls_port(pkis: Pkis) -> AsyncIterator[int]:
    server, port = await _start(pkis)
    try:
        yield port
    finally:
        await server.stop(None)


def _channel(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(ca, cert, key))


async def _check(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> Any:
    async with _channel(port, ca, cert, key) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)


async def _refused_code(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _check(port, ca, cert, key)
    return info.value.code()


async def test_valid_vehicle_is_accepted_and_bound_to_its_vin(pkis: Pkis, mtls_port: int) -> None:
    cert, key = pkis.main.vehicle(GOOD_VIN)
    response = await _check(mtls_port, pkis.main.ca_cert, cert, key)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    async with _channel(mtls_port, pkis.main.ca_cert, cert, key) as channel:
        upload = channel.stream_stream(UPLOAD, request_serializer=_raw, response_deserializer=_raw)
        call = upload()
        await call.write(GOOD_VIN.encode())
        assert await call.read() == GOOD_VIN.encode()
        await call.write(b"")  # no claim: the certificate's VIN is used
        assert await call.read() == GOOD_VIN.encode()
        await call.done_writing()


async def test_vehicle_claiming_another_vin_is_denied(pkis: Pkis, mtls_port: int) -> None:
    cert, key = pkis.main.vehicle(GOOD_VIN)
    async with _channel(mtls_port, pkis.main.ca_cert, cert, key) as channel:
        upload = channel.stream_stream(UPLOAD, request_serializer=_raw, response_deserializer=_raw)
        call = upload()
        await call.write(OTHER_VIN.encode())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "identity_mismatch" in (info.value.details() or "")


async def test_client_without_certificate_is_refused_in_handshake(pkis: Pkis, mtls_port: int) -> None:
    assert await _refused_code(mtls_port, pkis.main.ca_cert) == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(pkis: Pkis, mtls_port: int) -> None:
    cert, key = pkis.other.vehicle(GOOD_VIN)
    assert await _refused_code(mtls_port, pkis.main.ca_cert, cert, key) == grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_is_refused(pkis: Pkis, mtls_port: int) -> None:
    cert, key = pkis.main.vehicle(EXPIRED_VIN)
    assert await _refused_code(mtls_port, pkis.main.ca_cert, cert, key) == grpc.StatusCode.UNAVAILABLE


def test_interceptor_refuses_expired_identity_defensively(pkis: Pkis) -> None:
    ident = identity_from_certificate(load_certificate(pkis.main.vehicle(EXPIRED_VIN)[0]))
    interceptor = MtlsInterceptor(None)
    with pytest.raises(CertificateRejected) as info:
        interceptor.check(ident, UPLOAD, has_certificate=True)
    assert info.value.reason is CertificateRejectReason.EXPIRED
    good = identity_from_certificate(load_certificate(pkis.main.vehicle(GOOD_VIN)[0]))
    interceptor.check(good, UPLOAD, has_certificate=True)  # does not raise
    future = MtlsInterceptor(None, clock=lambda: dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(CertificateRejected) as info:
        future.check(good, UPLOAD, has_certificate=True)
    assert info.value.reason is CertificateRejectReason.NOT_YET_VALID


async def test_revoked_certificate_is_refused_after_crl_update(
    pkis: Pkis, mtls_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = pkis.main.vehicle(REVOKED_VIN)
    key_text = key.read_text()
    # accepted before revocation, refused after: the checker reloads the changed CRL file
    assert (
        await _check(mtls_port, pkis.main.ca_cert, cert, key)
    ).status == health_pb2.HealthCheckResponse.SERVING
    serial = pkis.main.revoke_vehicle(REVOKED_VIN)
    with caplog.at_level(logging.WARNING, logger="tcu.pki.grpc_tls"):
        code = await _refused_code(mtls_port, pkis.main.ca_cert, cert, key)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("security:")]
    assert len(lines) == 1
    assert "reason=revoked" in lines[0] and f"vehicle:{REVOKED_VIN}" in lines[0] and f"{serial:x}" in lines[0]
    assert "PRIVATE KEY" not in lines[0] and key_text.splitlines()[1] not in caplog.text
    # other vehicles keep working
    good_cert, good_key = pkis.main.vehicle(GOOD_VIN)
    assert (await _check(mtls_port, pkis.main.ca_cert, good_cert, good_key)).status == 1


async def test_method_policy_separates_vehicles_and_backends(pkis: Pkis, mtls_port: int) -> None:
    vcert, vkey = pkis.main.vehicle(GOOD_VIN)
    bcert, bkey = pkis.main.backend(BACKEND)
    async with _channel(mtls_port, pkis.main.ca_cert, bcert, bkey) as channel:
        listing = channel.unary_unary(LIST_VEHICLES, request_serializer=_raw, response_deserializer=_raw)
        assert await listing(b"", timeout=10) == f"backend:{BACKEND}".encode()
    async with _channel(mtls_port, pkis.main.ca_cert, vcert, vkey) as channel:
        listing = channel.unary_unary(LIST_VEHICLES, request_serializer=_raw, response_deserializer=_raw)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await listing(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with _channel(mtls_port, pkis.main.ca_cert, bcert, bkey) as channel:
        upload = channel.stream_stream(UPLOAD, request_serializer=_raw, response_deserializer=_raw)
        call = upload()  # refused before the handler reads anything
        assert await call.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_interceptor_refuses_missing_certificate_when_tls_allows_it(pkis: Pkis) -> None:
    server, port = await _start(pkis, require_client_auth=False, anonymous=(HEALTH_SERVICE_PREFIX,))
    try:
        # health is anonymous: answered without a certificate
        assert (await _check(port, pkis.main.ca_cert)).status == health_pb2.HealthCheckResponse.SERVING
        async with _channel(port, pkis.main.ca_cert) as channel:
            upload = channel.stream_stream(UPLOAD, request_serializer=_raw, response_deserializer=_raw)
            call = upload()  # refused before the handler reads anything
            assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await call.details() == "client certificate refused: missing"
    finally:
        await server.stop(None)


async def test_health_watch_stream_passes_through_interceptor(pkis: Pkis, mtls_port: int) -> None:
    cert, key = pkis.main.vehicle(GOOD_VIN)
    async with _channel(mtls_port, pkis.main.ca_cert, cert, key) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        first = await call.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()


def test_names_match_the_fixture(pkis: Pkis) -> None:
    assert (pkis.good_vin, pkis.revoked_vin, pkis.expired_vin, pkis.other_vin, pkis.backend) == (
        GOOD_VIN,
        REVOKED_VIN,
        EXPIRED_VIN,
        OTHER_VIN,
        BACKEND,
    )
