"""ISD-R session: ES10 requests as STORE DATA APDUs over an :class:`ApduTransport`.

The transport is **async** (decision): the AT transport in :mod:`tcu.modem.apdu` already
lives on the event loop (it waits for modem lines with ``loop.add_reader``), and the
in-process simulator adapter answers immediately, so nothing here blocks the loop.
A transport for a blocking reader (PC/SC, QMI) would wrap its calls in
``asyncio.to_thread`` inside its own methods.

Framing (STORE DATA as lpac frames it): ``CLA=80`` (the transport patches the
logical-channel bits), ``INS=E2``, ``P1=11`` for more blocks / ``91`` for the last, ``P2``
the block number from 0, ``Lc``, at most ``segment_size`` (120) bytes of DER, no ``Le``.
``61xx`` is followed by ``GET RESPONSE 80 C0 00 00 xx`` until the data is complete. Any
``9xxx`` is success; ``91xx`` additionally means a proactive command (REFRESH) is pending
and is recorded in :attr:`IsdrSession.proactive_pending`. Other status words raise
:class:`ApduStatusError` naming the step and the SW.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable
from types import TracebackType
from typing import Protocol, Self, TypeVar

from tcu.errors import ClosedResourceError, EsimError, TcuError
from tcu.esim import es10, es10b

__all__ = [
    "ECASD_AID",
    "ISDR_AID",
    "ApduStatusError",
    "ApduTransport",
    "ApduTransportError",
    "Es10ResultError",
    "IsdrSession",
]

log = logging.getLogger(__name__)

ISDR_AID = bytes.fromhex("A0000005591010FFFFFFFF8900000100")
ECASD_AID = bytes.fromhex("A0000005591010FFFFFFFF8900000200")

_INS_STORE_DATA = 0xE2
_INS_GET_RESPONSE = 0xC0
_P1_MORE = 0x11
_P1_LAST = 0x91


class ApduTransport(Protocol):
    """Where APDUs go: a logical channel to an applet, addressed by an opaque handle.

    ``open_channel`` opens a logical channel and selects ``aid`` on it; ``transmit`` sends
    one command APDU (channel bits of CLA zero: the transport patches them) and returns
    the response data followed by SW1 SW2. Errors are :class:`~tcu.errors.TcuError`
    subclasses or ``TimeoutError``/``OSError``; the session translates them.
    """

    async def open_channel(self, aid: bytes) -> int: ...

    async def transmit(self, handle: int, apdu: bytes) -> bytes: ...

    async def close_channel(self, handle: int) -> None: ...


class ApduTransportError(EsimError):
    """The transport under the session failed (the cause is in ``__cause__``)."""


class ApduStatusError(EsimError):
    """The card answered a status word that is not success (``sw`` as an int)."""

    def __init__(self, step: str, sw: int) -> None:
        super().__init__(f"{step}: card answered SW {sw:04X}")
        self.step = step
        self.sw = sw


class Es10ResultError(EsimError):
    """An ES10 function returned a result code other than ok; ``result`` is the named enum."""

    def __init__(self, step: str, result: enum.IntEnum) -> None:
        super().__init__(f"{step}: {result.name} ({int(result)})")
        self.step = step
        self.result = result


_R = TypeVar("_R", bound="es10._ResultResponse")
_T = TypeVar("_T")


class IsdrSession:
    """An open logical channel to the ISD-R. Use ``async with IsdrSession(transport):``."""

    def __init__(
        self,
        transport: ApduTransport,
        *,
        aid: bytes = ISDR_AID,
        segment_size: int = 120,
        max_get_responses: int = 64,
    ) -> None:
        if not 1 <= segment_size <= 255:
            raise ValueError(f"segment_size {segment_size} must be 1..255")
        self._transport = transport
        self._aid = aid
        self._segment_size = segment_size
        self._max_get_responses = max_get_responses
        self._handle: int | None = None
        self._closed = False
        self.proactive_pending = False
        self.last_sw = 0

    async def open(self) -> None:
        if self._closed:
            raise ClosedResourceError("ISD-R session was closed")
        if self._handle is None:
            self._handle = await self._call("open ISD-R channel", self._transport.open_channel(self._aid))
            log.debug("ISD-R channel open, handle %s", self._handle)

    async def aclose(self) -> None:
        """Close the channel; idempotent. A failing close is logged, not raised."""
        self._closed = True
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                await self._transport.close_channel(handle)
            except (TcuError, TimeoutError, OSError) as exc:
                log.warning("closing ISD-R channel %s failed: %s", handle, exc)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, step: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except (TcuError, TimeoutError, OSError) as exc:
            if isinstance(exc, EsimError):
                raise
            raise ApduTransportError(f"{step}: transport failed: {exc}") from exc

    async def _transmit(self, step: str, apdu: bytes) -> tuple[bytes, int]:
        if self._handle is None:
            await self.open()
        assert self._handle is not None
        raw: bytes = await self._call(step, self._transport.transmit(self._handle, apdu))
        if len(raw) < 2:
            raise ApduTransportError(f"{step}: truncated response {raw.hex().upper()!r} (no status word)")
        return raw[:-2], int.from_bytes(raw[-2:], "big")

    async def store_data(self, der: bytes, *, step: str = "STORE DATA") -> bytes:
        """Send one ES10 request (segmented) and return the complete response DER."""
        segments = [der[i : i + self._segment_size] for i in range(0, len(der), self._segment_size)] or [b""]
        data = b""
        sw = 0
        for block, segment in enumerate(segments):
            last = block == len(segments) - 1
            apdu = (
                bytes([0x80, _INS_STORE_DATA, _P1_LAST if last else _P1_MORE, block, len(segment)]) + segment
            )
            data, sw = await self._transmit(f"{step} block {block}", apdu)
            if not last and sw >> 8 not in (0x90, 0x91):
                raise ApduStatusError(f"{step} block {block}", sw)
        chunks = [data]
        for _ in range(self._max_get_responses):
            if sw >> 8 != 0x61:
                break
            more, sw = await self._transmit(
                f"{step} GET RESPONSE", bytes([0x80, _INS_GET_RESPONSE, 0, 0, sw & 0xFF])
            )
            chunks.append(more)
        else:
            raise ApduTransportError(f"{step}: more than {self._max_get_responses} GET RESPONSE rounds")
        self.last_sw = sw
        if sw >> 12 != 0x9:
            raise ApduStatusError(step, sw)
        if sw >> 8 == 0x91:
            self.proactive_pending = True
            log.info("%s: proactive command pending (SW %04X)", step, sw)
        return b"".join(chunks)

    # --- typed ES10 functions ---------------------------------------------------------

    async def _result(self, request: es10.Request, kind: type[_R], step: str) -> _R:
        response = kind.decode(await self.store_data(request.encode(), step=step))
        if not response.ok:
            raise Es10ResultError(step, response.result)
        return response

    async def get_eid(self) -> str:
        raw = await self.store_data(es10.GetEidRequest().encode(), step="GetEID")
        return es10.GetEidResponse.decode(raw).eid_hex

    async def get_euicc_info2(self) -> es10.EuiccInfo2:
        raw = await self.store_data(es10.GetEuiccInfo2Request().encode(), step="GetEuiccInfo2")
        return es10.EuiccInfo2.decode(raw)

    async def list_profiles(self, search: es10.ProfileRef | None = None) -> tuple[es10.ProfileInfo, ...]:
        raw = await self.store_data(
            es10.GetProfilesInfoRequest(search=search).encode(), step="GetProfilesInfo"
        )
        response = es10.GetProfilesInfoResponse.decode(raw)
        if response.error is not None:
            raise Es10ResultError("GetProfilesInfo", response.error)
        return response.profiles

    async def enable_profile(self, ref: es10.ProfileRef, *, refresh: bool = True) -> None:
        await self._result(
            es10.EnableProfileRequest(ref, refresh), es10.EnableProfileResponse, f"EnableProfile {ref}"
        )

    async def disable_profile(self, ref: es10.ProfileRef, *, refresh: bool = True) -> None:
        await self._result(
            es10.DisableProfileRequest(ref, refresh), es10.DisableProfileResponse, f"DisableProfile {ref}"
        )

    async def delete_profile(self, ref: es10.ProfileRef) -> None:
        await self._result(es10.DeleteProfileRequest(ref), es10.DeleteProfileResponse, f"DeleteProfile {ref}")

    async def set_nickname(self, iccid: str, nickname: str) -> None:
        await self._result(
            es10.SetNicknameRequest(iccid, nickname), es10.SetNicknameResponse, f"SetNickname {iccid}"
        )

    async def list_notifications(self) -> tuple[es10.NotificationMetadata, ...]:
        raw = await self.store_data(es10.ListNotificationRequest().encode(), step="ListNotification")
        response = es10.ListNotificationResponse.decode(raw)
        if response.error is not None:
            raise Es10ResultError("ListNotification", response.error)
        return response.notifications

    async def notification_sent(self, seq: int) -> None:
        await self._result(
            es10.NotificationSentRequest(seq), es10.NotificationSentResponse, f"NotificationSent {seq}"
        )

    async def get_euicc_info1(self) -> es10.EuiccInfo1:
        raw = await self.store_data(es10.GetEuiccInfo1Request().encode(), step="GetEuiccInfo1")
        return es10.EuiccInfo1.decode(raw)

    async def get_euicc_challenge(self) -> bytes:
        raw = await self.store_data(es10.GetEuiccChallengeRequest().encode(), step="GetEuiccChallenge")
        return es10.GetEuiccChallengeResponse.decode(raw).challenge

    async def configured_addresses(self) -> es10.EuiccConfiguredAddressesResponse:
        raw = await self.store_data(
            es10.EuiccConfiguredAddressesRequest().encode(), step="EuiccConfiguredAddresses"
        )
        return es10.EuiccConfiguredAddressesResponse.decode(raw)

    async def set_default_dp_address(self, address: str) -> None:
        await self._result(
            es10.SetDefaultDpAddressRequest(address),
            es10.SetDefaultDpAddressResponse,
            f"SetDefaultDpAddress {address}",
        )

    async def get_rat(self) -> tuple[es10.PprRule, ...]:
        raw = await self.store_data(es10.GetRatRequest().encode(), step="GetRAT")
        return es10.GetRatResponse.decode(raw).rules

    async def retrieve_notifications(self, seq: int | None = None) -> es10.RetrieveNotificationsListResponse:
        """The pending notifications, signed by the card (all, or the one numbered ``seq``)."""
        step = "RetrieveNotificationsList" if seq is None else f"RetrieveNotificationsList seq {seq}"
        raw = await self.store_data(es10.RetrieveNotificationsListRequest(seq=seq).encode(), step=step)
        response = es10.RetrieveNotificationsListResponse.decode(raw)
        if response.error is not None:
            raise Es10ResultError(step, response.error)
        return response

    async def memory_reset(self, request: es10.EuiccMemoryResetRequest) -> None:
        await self._result(request, es10.EuiccMemoryResetResponse, "eUICCMemoryReset")

    # --- ES10b download family (the LPA relays the server's pieces; see tcu.esim.es10b) -------

    async def get_euicc_info1_der(self) -> bytes:
        """EUICCInfo1 exactly as the card encoded it (the LPA forwards it to the SM-DP+)."""
        raw = await self.store_data(es10.GetEuiccInfo1Request().encode(), step="GetEuiccInfo1")
        es10.EuiccInfo1.decode(raw)
        return raw

    async def authenticate_server(
        self, request: es10b.AuthenticateServerRequest
    ) -> es10b.AuthenticateServerResponse:
        raw = await self.store_data(request.encode(), step="AuthenticateServer")
        return es10b.AuthenticateServerResponse.decode(raw)

    async def prepare_download(self, request: es10b.PrepareDownloadRequest) -> es10b.PrepareDownloadResponse:
        raw = await self.store_data(request.encode(), step="PrepareDownload")
        return es10b.PrepareDownloadResponse.decode(raw)

    async def load_bpp_piece(self, piece: bytes, index: int) -> es10b.ProfileInstallationResult | None:
        """One piece of LoadBoundProfilePackage; the card's result if it answered one (last or failed)."""
        raw = await self.store_data(piece, step=f"LoadBoundProfilePackage piece {index}")
        return es10b.ProfileInstallationResult.decode(raw) if raw else None

    async def cancel_session(
        self, transaction_id: bytes, reason: es10b.CancelSessionReason
    ) -> es10b.CancelSessionResponse:
        raw = await self.store_data(
            es10b.CancelSessionRequest(transaction_id, reason).encode(), step="CancelSession"
        )
        return es10b.CancelSessionResponse.decode(raw)
