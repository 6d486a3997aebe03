"""ES9+ client: the LPA's HTTPS/JSON calls to an SM-DP+ (SGP.22 v2.2.2 §5.6, §6.5).

Five functions, each a ``POST https://<SM-DP+ address>/gsma/rsp2/es9plus/<function>`` with a JSON body
whose binary fields are base64, the headers ``Content-Type: application/json;charset=UTF-8`` and
``X-Admin-Protocol: gsma/rsp/v2.2.0``, and a JSON answer whose ``header.functionExecutionStatus``
says whether the server executed it (``handleNotification`` answers ``204`` with no body)::

    initiateAuthentication  euiccChallenge, euiccInfo1            -> transactionId, serverSigned1, ...
    authenticateClient      transactionId, authenticateServerResp -> profileMetadata, smdpSigned2, ...
    getBoundProfilePackage  transactionId, prepareDownloadResp    -> boundProfilePackage
    handleNotification      pendingNotification                   -> (204)
    cancelSession           transactionId, cancelSessionResponse  -> (executed)

TLS is always on and verified: the server's certificate must chain to the configured CA file (the
GSMA CI, or the CA of the SM-DP+'s TLS certificate) and name the SM-DP+ address of the activation
code. :attr:`Es9Config.connect_to` connects somewhere else (tests: ``127.0.0.1`` and a free port)
while still verifying that name, so nothing resolves the (fictitious) address.

Decision: the standard library's ``http.client`` and ``ssl`` in a worker thread
(``asyncio.to_thread``), not an HTTP library. The calls are five small request/answer pairs over a
fresh connection each; what matters is exact control of the TLS peer name (``server_hostname``
differs from the address connected to) and of the error translation, which both take a few lines
here, and the project gains no dependency.

Errors (all :class:`~tcu.errors.EsimError`)::

    Es9Error
    ├── Es9LinkError         the link failed (refused, reset, timeout): nothing or not all arrived
    ├── Es9CertificateError  the server's TLS certificate does not verify (chain or name)
    ├── Es9ProtocolError     the answer is not what ES9+ says (HTTP status, JSON, base64, fields)
    └── Es9StatusError       the SM-DP+ refused: ``subject_code``, ``reason_code``, ``message``
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.client
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcu.errors import EsimError, InputError

__all__ = [
    "ADMIN_PROTOCOL",
    "ActivationCode",
    "AuthenticateClientResult",
    "Es9CertificateError",
    "Es9Client",
    "Es9Config",
    "Es9Error",
    "Es9LinkError",
    "Es9ProtocolError",
    "Es9StatusError",
    "InitiateAuthenticationResult",
    "parse_activation_code",
]

log = logging.getLogger(__name__)

ADMIN_PROTOCOL = "gsma/rsp/v2.2.0"
_PATH = "/gsma/rsp2/es9plus/"


class Es9Error(EsimError):
    """An ES9+ call failed; ``function`` names it."""

    def __init__(self, function: str, message: str) -> None:
        super().__init__(f"ES9+ {function}: {message}")
        self.function = function


class Es9LinkError(Es9Error):
    """The link to the SM-DP+ failed (cause in ``__cause__``): the call may not have reached it."""


class Es9CertificateError(Es9Error):
    """The SM-DP+'s TLS certificate does not chain to the configured CA or does not name the server."""


class Es9ProtocolError(Es9Error):
    """The SM-DP+ answered something ES9+ does not define (HTTP status, JSON, base64, missing field)."""


class Es9StatusError(Es9Error):
    """The SM-DP+ answered ``Failed`` (or ``Expired``) with its status code data."""

    def __init__(
        self, function: str, status: str, subject_code: str, reason_code: str, message: str | None
    ) -> None:
        text = f"{status}: subject {subject_code} reason {reason_code}" + (f" ({message})" if message else "")
        super().__init__(function, text)
        self.status = status
        self.subject_code = subject_code
        self.reason_code = reason_code
        self.server_message = message


@dataclass(frozen=True, slots=True)
class ActivationCode:
    """``LPA:1$<SM-DP+ address>$<matching id>[$<SM-DP+ OID>[$<confirmation code required flag>]]``."""

    smdp_address: str
    matching_id: str
    smdp_oid: str | None = None
    cc_required: bool = False

    def __str__(self) -> str:
        return f"LPA:1${self.smdp_address}${self.matching_id}"


def parse_activation_code(text: str) -> ActivationCode:
    """Parse an activation code (SGP.22 §4.1); :class:`InputError` names what is wrong."""
    body = text.strip()
    if body[:4].upper() == "LPA:":
        body = body[4:]
    parts = body.split("$")
    if len(parts) < 3 or parts[0] != "1":
        raise InputError(f"activation code {text!r}: expected LPA:1$<SM-DP+ address>$<matching id>")
    address, matching_id = parts[1], parts[2]
    host, _, port = address.partition(":")
    if not host or any(c.isspace() or c in "/?#@" for c in address) or (port and not port.isdigit()):
        raise InputError(f"activation code {text!r}: {address!r} is not an SM-DP+ address (FQDN)")
    if any(ord(c) < 0x20 for c in matching_id) or len(matching_id) > 255:
        raise InputError(f"activation code {text!r}: matching id is not printable or too long")
    oid = parts[3] if len(parts) > 3 and parts[3] else None
    cc = len(parts) > 4 and parts[4] == "1"
    return ActivationCode(address, matching_id, oid, cc)


@dataclass(frozen=True, slots=True)
class Es9Config:
    """How the LPA reaches SM-DP+ servers.

    ``ca_file``: PEM file of the CA(s) the server's TLS certificate must chain to (a path, never the
    certificate's content). ``connect_to``: ``(host, port)`` to connect to instead of the address of
    the activation code, which the certificate must still name (tests: ``("127.0.0.1", port)``).
    ``port``: the SM-DP+'s port when the address names none (443).
    """

    ca_file: Path
    connect_to: tuple[str, int] | None = None
    timeout_s: float = 30.0
    port: int = 443
    tac: bytes = bytes.fromhex("35290611")
    """The device's TAC (first 8 IMEI digits, BCD) sent in AuthenticateServer's deviceInfo."""


@dataclass(frozen=True, slots=True)
class InitiateAuthenticationResult:
    transaction_id: str
    server_signed1: bytes
    server_signature1: bytes
    euicc_ci_pkid_to_be_used: bytes
    server_certificate: bytes


@dataclass(frozen=True, slots=True)
class AuthenticateClientResult:
    transaction_id: str
    profile_metadata: bytes
    smdp_signed2: bytes
    smdp_signature2: bytes
    smdp_certificate: bytes


class _Connection(http.client.HTTPSConnection):
    """HTTPS to ``connect_to`` while TLS verifies ``server_name`` (SNI and certificate name)."""

    def __init__(
        self, server_name: str, address: tuple[str, int], context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(server_name, address[1], timeout=timeout, context=context)
        self._address = address
        self._server_name = server_name
        self._ctx = context

    def connect(self) -> None:
        raw = socket.create_connection(self._address, self.timeout)
        try:
            self.sock = self._ctx.wrap_socket(raw, server_hostname=self._server_name)
        except BaseException:
            raw.close()
            raise


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Es9Client:
    """ES9+ calls to the SM-DP+ at ``smdp_address`` (``host`` or ``host:port``)."""

    def __init__(self, smdp_address: str, config: Es9Config) -> None:
        host, _, port = smdp_address.partition(":")
        self.smdp_address = smdp_address
        self._host = host
        self._port = int(port) if port else config.port
        self._config = config
        try:
            context = ssl.create_default_context(cafile=str(config.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise EsimError(f"ES9+ CA file {config.ca_file}: cannot load: {exc}") from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context = context
        self.calls: list[str] = []
        """Every function called, in order (whether it succeeded or not)."""

    # --- the five functions -----------------------------------------------------------

    async def initiate_authentication(
        self, euicc_challenge: bytes, euicc_info1: bytes
    ) -> InitiateAuthenticationResult:
        answer = await self._call(
            "initiateAuthentication",
            {
                "smdpAddress": self.smdp_address,
                "euiccChallenge": _b64(euicc_challenge),
                "euiccInfo1": _b64(euicc_info1),
            },
        )
        f = "initiateAuthentication"
        return InitiateAuthenticationResult(
            _text(answer, "transactionId", f),
            _bin(answer, "serverSigned1", f),
            _bin(answer, "serverSignature1", f),
            _bin(answer, "euiccCiPKIdToBeUsed", f),
            _bin(answer, "serverCertificate", f),
        )

    async def authenticate_client(
        self, transaction_id: str, authenticate_server_response: bytes
    ) -> AuthenticateClientResult:
        f = "authenticateClient"
        answer = await self._call(
            f,
            {
                "transactionId": transaction_id,
                "authenticateServerResponse": _b64(authenticate_server_response),
            },
        )
        return AuthenticateClientResult(
            _text(answer, "transactionId", f) if "transactionId" in answer else transaction_id,
            _bin(answer, "profileMetadata", f),
            _bin(answer, "smdpSigned2", f),
            _bin(answer, "smdpSignature2", f),
            _bin(answer, "smdpCertificate", f),
        )

    async def get_bound_profile_package(self, transaction_id: str, prepare_download_response: bytes) -> bytes:
        f = "getBoundProfilePackage"
        answer = await self._call(
            f, {"transactionId": transaction_id, "prepareDownloadResponse": _b64(prepare_download_response)}
        )
        return _bin(answer, "boundProfilePackage", f)

    async def handle_notification(self, pending_notification: bytes) -> None:
        await self._call(
            "handleNotification", {"pendingNotification": _b64(pending_notification)}, no_content=True
        )

    async def cancel_session(self, transaction_id: str, cancel_session_response: bytes) -> None:
        await self._call(
            "cancelSession",
            {"transactionId": transaction_id, "cancelSessionResponse": _b64(cancel_session_response)},
        )

    # --- transport --------------------------------------------------------------------

    async def _call(self, function: str, body: dict[str, Any], *, no_content: bool = False) -> dict[str, Any]:
        self.calls.append(function)
        log.debug("ES9+ %s to %s", function, self.smdp_address)
        status, data = await asyncio.to_thread(self._post, function, json.dumps(body).encode())
        if status == 204 and no_content:
            return {}
        if status != 200:
            raise Es9ProtocolError(
                function, f"HTTP status {status} (expected 200{' or 204' if no_content else ''})"
            )
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise Es9ProtocolError(function, f"answer is not JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise Es9ProtocolError(function, "answer is not a JSON object")
        _check_status(function, answer)
        return answer

    def _post(self, function: str, body: bytes) -> tuple[int, bytes]:
        address = self._config.connect_to or (self._host, self._port)
        connection = _Connection(self._host, address, self._context, self._config.timeout_s)
        headers = {
            "Host": self.smdp_address,
            "User-Agent": "gsma-rsp-lpad",
            "X-Admin-Protocol": ADMIN_PROTOCOL,
            "Content-Type": "application/json;charset=UTF-8",
            "Accept": "application/json",
        }
        try:
            connection.request("POST", _PATH + function, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, data
        except ssl.SSLCertVerificationError as exc:
            raise Es9CertificateError(
                function,
                f"TLS certificate of {self._host} does not verify against {self._config.ca_file}: "
                f"{exc.verify_message or exc}",
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            where = f"{address[0]}:{address[1]}"
            raise Es9LinkError(function, f"link to {self.smdp_address} ({where}) failed: {exc!r}") from exc
        finally:
            connection.close()


def _check_status(function: str, answer: dict[str, Any]) -> None:
    header = answer.get("header")
    status_obj = header.get("functionExecutionStatus") if isinstance(header, dict) else None
    if not isinstance(status_obj, dict) or not isinstance(status_obj.get("status"), str):
        raise Es9ProtocolError(function, "answer has no header.functionExecutionStatus.status")
    status = status_obj["status"]
    if status in ("Executed-Success", "Executed-WithWarning"):
        return
    data = status_obj.get("statusCodeData")
    data = data if isinstance(data, dict) else {}
    raise Es9StatusError(
        function,
        status,
        str(data.get("subjectCode", "?")),
        str(data.get("reasonCode", "?")),
        str(data["message"]) if isinstance(data.get("message"), str) else None,
    )


def _text(answer: dict[str, Any], key: str, function: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str) or not value:
        raise Es9ProtocolError(function, f"answer lacks the string field {key!r}")
    return value


def _bin(answer: dict[str, Any], key: str, function: str) -> bytes:
    text = _text(answer, key, function)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Es9ProtocolError(function, f"field {key!r} is not base64: {exc}") from exc
