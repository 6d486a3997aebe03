"""``python -m sim``: drive the simulated car and serve its CAN frames over socketcand.

stdout carries the JSON protocol, one object per line; diagnostics go to stderr::

    {"event": "ready", "host": "127.0.0.1", "port": P, "channel": "can0", "dbc": ..., "mapping": ...}
    {"event": "done", "frames": N, "ground_truth": PATH, "start_us": ..., "end_us": ..., "interrupted": false}

With ``--modem`` (the cross-border eSIM scenario, :mod:`sim.border`) the simulator also
runs a modem with an eUICC on a pseudo-terminal, named in the ready line as
``"modem": "/dev/pts/N"``; during the drive the modem follows the car (country, tunnel,
NMEA fixes with simulated time and position). Example::

    python -m sim --duration 2000 --speed 60 --modem --start-at "A31 Thionville" --ground-truth gt.npz

With ``--modem --data-proxy HOST:PORT`` the modem also has a cellular data path
(:mod:`sim.datalink`): a TCP proxy on a free 127.0.0.1 port, named in the ready line as
``"data_proxy": P``, that forwards to ``HOST:PORT`` (loopback only) while the modem is
registered, cuts every connection when it loses registration and refuses new ones
until it is registered again. ``done`` then carries the proxy's counters as
``"data_link": {"outages": N, "connections_cut": N, "refused": N, "bytes_up": N, ...}``
(read when the drive ends; the proxy keeps forwarding until the simulator exits).

After ``ready`` the simulator waits for a socketcand client to open the channel in
rawmode, then drives for ``--duration`` simulated seconds, writes the ground
truth, prints ``done`` and keeps the connection open (python-can's client spins
on a closed socket) until SIGTERM or SIGINT; then it exits 0. A signal during the
drive ends it early (``"interrupted": true``, exit 0). If the client goes away
during the drive, the ground truth of the frames produced so far (the last batch
may not have reached the client) is written, ``done`` says ``"interrupted": true``
and the exit status is 1.

With ``--reconnect`` the simulator survives its client: when the socketcand
client goes away the drive pauses (simulated time stops), frames that were due
but not written are dropped (traffic on a bus nobody listens to), and the drive
resumes when the next client has opened the channel. Each change is a line::

    {"event": "client", "state": "connected", "client": 1, "sim_us": T, "frames": N}
    {"event": "client", "state": "disconnected", "client": 1, "sim_us": T, "frames": N, "dropped": D}

``sim_us`` is the simulated time at the change: on ``disconnected`` the stamp of
the last frame produced, on ``connected`` the time from which frames go to the
new client (every later frame is stamped at or after it); ``frames`` counts the
frames written to clients so far (frames written into a dying connection
included), ``dropped`` the frames produced but written to nobody. ``done`` then
also carries ``"clients"``, ``"dropped"`` and ``"frames_last_client"`` (frames
written to the client connected at the end). Frames produced and not written
because of SIGTERM stay in the ground truth (at most one batch).

Example::

    python -m sim --duration 60 --speed max --seed 7 --ground-truth gt.npz
    python -m sim --duration 600 --speed 20 --reconnect --ground-truth gt.npz
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import can

from sim.border import BorderRadio, route_starting_at
from sim.canbus import DEFAULT_DBC_PATH, DEFAULT_MAPPING_PATH, Drive, DriveConfig
from sim.datalink import parse_loopback_target
from sim.socketcand import SocketcandConfig, SocketcandServer
from sim.vehicle import VehicleConfig
from tcu.errors import BusError, ConfigError, TcuError

log = logging.getLogger("sim")

_PROGRESS_EVERY_US = 60_000_000  # one progress line per simulated minute


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--speed must be 'max' or a positive number, got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--speed must be 'max' or a positive number, got {text!r}")
    return value


def _loopback_target(text: str) -> tuple[str, int]:
    try:
        return parse_loopback_target(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"--data-proxy: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim",
        description="Simulated electric car on Metz → Luxembourg → Trier, served as CAN over socketcand.",
        epilog="example: python -m sim --duration 60 --speed max --ground-truth gt.npz",
    )
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds to drive (default 60)")
    p.add_argument("--speed", type=_speed, default=1.0, help="'max' or a factor of real time (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the vehicle model (default 0)")
    p.add_argument("--socketcand-port", type=int, default=0, help="TCP port on 127.0.0.1 (default 0: any)")
    p.add_argument("--channel", default="can0", help="channel name the client must open (default can0)")
    p.add_argument(
        "--ground-truth", type=Path, default=None, help="where to write the .npz ground truth (default: none)"
    )
    p.add_argument(
        "--modem",
        action="store_true",
        help="also run a modem + eUICC on a pty that follows the car across borders (sim.border)",
    )
    p.add_argument(
        "--data-proxy",
        type=_loopback_target,
        default=None,
        metavar="HOST:PORT",
        help="with --modem: forward TCP from a 127.0.0.1 port to HOST:PORT while the modem is registered",
    )
    p.add_argument(
        "--euicc-credentials",
        metavar="DIR",
        default=None,
        help="with --modem: the card's eUICC certificate and key from this generate_smdpp_certs.py folder; "
        "it then starts without a German profile (downloaded from the SM-DP+ trusting that set)",
    )
    p.add_argument(
        "--notification-address",
        metavar="FQDN",
        default=None,
        help="with --euicc-credentials: the SM-DP+ the card's notifications go to",
    )
    p.add_argument("--start-epoch-us", type=int, default=None, help="simulated start time (default: now)")
    p.add_argument(
        "--start-at",
        metavar="WAYPOINT",
        help="start at this waypoint of the route instead of Metz (e.g. 'A31 Thionville')",
    )
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="serve successive clients; pause the drive while none is connected (JSON client events)",
    )
    p.add_argument(
        "--hard-brake-at",
        type=float,
        action="append",
        default=[],
        metavar="SECONDS",
        help="brake hard (7.5 m/s²) at this simulated time; repeatable",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging on stderr")
    return p


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _Relay:
    """``--reconnect``: paces the drive's frames, pausing simulated time while no client is there."""

    def __init__(self, drive: Drive, server: SocketcandServer, speed: float | None, stop: threading.Event):
        self.drive, self.server, self.speed, self.stop = drive, server, speed, stop
        self.frames_written = 0
        self.frames_at_connect = 0
        self.dropped = 0
        self.last_us = 0
        self._wall0 = 0.0
        self._sim0_us = 0
        self._client = 0

    def _connected(self, sim_us: int) -> None:
        self._client = self.server.clients
        self._wall0, self._sim0_us = time.monotonic(), sim_us
        self.frames_at_connect = self.frames_written
        _emit(
            {
                "event": "client",
                "state": "connected",
                "client": self._client,
                "sim_us": sim_us,
                "frames": self.frames_written,
            }
        )

    def _wait_client(self, dropped: int) -> bool:
        """The client went away: report, wait for the next one; False when stopped."""
        self.dropped += dropped
        _emit(
            {
                "event": "client",
                "state": "disconnected",
                "client": self._client,
                "sim_us": self.last_us,
                "frames": self.frames_written,
                "dropped": self.dropped,
            }
        )
        log.info("client %d gone at t=%d us: drive paused", self._client, self.last_us)
        while not self.stop.is_set():
            if self.server.wait_for_client(0.5):
                self._connected(self.last_us + 1)
                return True
        return False

    def _write(self, batch: list[can.Message]) -> bool:
        """Write a batch to the current client; on a gone client drop it and wait for the next."""
        if self.server.client_connected and self.server.clients == self._client:
            try:
                self.frames_written += self.server.send_frames(batch)
                return True
            except BusError as exc:
                log.info("%s", exc)
        return self._wait_client(len(batch))

    def run(self) -> None:
        """Drive to the end (or until ``stop``), writing to whichever client is connected."""
        frames = self.drive.frames()
        first = next(frames, None)  # starts the drive: simulated time zero is now
        if first is None:
            return
        assert self.drive.start_us is not None
        self._connected(self.drive.start_us)
        batch: list[can.Message] = []
        next_report_us = _PROGRESS_EVERY_US
        for msg in itertools.chain([first], frames):
            if self.stop.is_set():
                return
            t_us = round(msg.timestamp * 1e6)
            next_report_us = _log_progress(self.drive, t_us, next_report_us)
            if self.speed is not None:
                delay = self._wall0 + (t_us - self._sim0_us) / 1e6 / self.speed - time.monotonic()
                if delay > 0:
                    if batch and not self._write(batch):
                        return
                    batch = []
                    due = self._wall0 + (t_us - self._sim0_us) / 1e6 / self.speed
                    if self.stop.wait(max(0.0, due - time.monotonic())):
                        return
            self.last_us = t_us
            batch.append(msg)
            if len(batch) >= 512:
                if not self._write(batch):
                    return
                batch = []
        if batch:
            self._write(batch)


def _log_progress(drive: Drive, t_us: int, next_report_us: int) -> int:
    """One INFO line per simulated minute; returns the next report time (µs since the start)."""
    elapsed_us = t_us - (drive.start_us or 0)
    if elapsed_us >= next_report_us and drive.vehicle is not None:
        next_report_us += _PROGRESS_EVERY_US
        pose = drive.route.pose_at(drive.vehicle.distance_m)
        log.info(
            "t=%.0f s: %d frames, %.1f km/h, %.2f km along the route, in %s",
            elapsed_us / 1e6,
            drive.frames_sent,
            drive.vehicle.speed_mps * 3.6,
            drive.vehicle.distance_m / 1000.0,
            pose.country,
        )
    return next_report_us


def _drive_one_client(drive: Drive, server: SocketcandServer, stop: threading.Event) -> None:
    next_report_us = _PROGRESS_EVERY_US
    for batch in drive.batches(stop):
        server.send_frames(batch)
        next_report_us = _log_progress(drive, round(batch[-1].timestamp * 1e6), next_report_us)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.data_proxy is not None and not args.modem:
        parser.error("--data-proxy needs --modem")
    if args.euicc_credentials is not None and not args.modem:
        parser.error("--euicc-credentials needs --modem")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s sim %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    server = SocketcandServer(
        SocketcandConfig(port=args.socketcand_port, channel=args.channel, reconnect=args.reconnect)
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        server.close()  # unblocks a sendall to a client that stopped reading

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        drive = Drive(
            DriveConfig(
                duration_s=args.duration,
                seed=args.seed,
                speed=args.speed,
                start_epoch_us=args.start_epoch_us,
                channel=args.channel,
                route=route_starting_at(args.start_at) if args.start_at else None,
                vehicle=VehicleConfig(hard_brakes_s=tuple(args.hard_brake_at)),
            )
        )
        port = server.start()
    except TcuError as exc:
        log.error("%s", exc)
        return 2
    # A daemon thread; the modem and its card run in a child process that ends with us.
    radio = (
        BorderRadio(
            drive,
            separate_process=True,
            data_proxy=args.data_proxy,
            card_credentials=args.euicc_credentials,
            notification_address=args.notification_address,
        ).start()
        if args.modem
        else None
    )
    if radio is not None:
        atexit.register(radio.stop)
    _emit(
        {
            "event": "ready",
            "host": server.config.host,
            "port": port,
            "channel": args.channel,
            "dbc": str(DEFAULT_DBC_PATH),
            "mapping": str(DEFAULT_MAPPING_PATH),
            **({"modem": radio.port} if radio is not None else {}),
            **({"data_proxy": radio.data_proxy_port} if radio is not None and args.data_proxy else {}),
        }
    )
    if not server.wait_for_client():
        return 0  # stopped before a client came
    log.info("driving %.1f s at speed %s", args.duration, "max" if args.speed is None else args.speed)
    failed = False
    relay: _Relay | None = None
    try:
        if args.reconnect:
            relay = _Relay(drive, server, args.speed, stop)
            relay.run()
        else:
            _drive_one_client(drive, server, stop)
    except TcuError as exc:
        if not stop.is_set():
            log.error("%s", exc)
            failed = True
    # Without --ground-truth none is written (it used to go to a temporary file nobody removed).
    gt_path = args.ground_truth.resolve() if args.ground_truth is not None else None
    summary = drive.summary(interrupted=stop.is_set() or failed)
    if gt_path is not None:
        try:
            drive.save_ground_truth(gt_path)
        except TcuError as exc:
            log.error("%s", exc)
            server.close()
            return 1
    done: dict[str, object] = {
        "event": "done",
        "frames": summary.frames,
        "ground_truth": str(gt_path) if gt_path is not None else None,
        "start_us": summary.start_us,
        "end_us": summary.end_us,
        "interrupted": summary.interrupted,
    }
    if radio is not None and args.data_proxy is not None:
        done["data_link"] = radio.data_link_stats()
    if relay is not None:
        done["clients"] = server.clients
        done["dropped"] = relay.dropped
        done["frames_last_client"] = relay.frames_written - relay.frames_at_connect
    _emit(done)
    log.info("drove %d frames; ground truth in %s", summary.frames, gt_path or "no file (no --ground-truth)")
    if failed:
        server.close()
        return 1
    if not stop.is_set():
        log.info("idle until SIGTERM or SIGINT")
    while not stop.wait(1.0):
        pass
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
