"""``tcu agent --check``: load and validate everything the agent would use, and list every problem.

Nothing is started and nothing is written (the spool is not opened, no bus is opened): the
configuration with every key, the DBC files, the mapping and catalog, the campaigns with
their cost, the TLS files and their validity dates, the command verify key, the roaming
policy, the writable state (spool directory, nonce store), the uplink target's name.

The configuration loader stops at the first wrong key; to list them all, the check loads
it again without each wrong key (a wrong value falls back to its default, a wrong
``[[bus]]`` is left out, a missing ``[uplink.tls]`` is checked as insecure), so the
problems of the other keys and files are found in the same run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tcu.checks import (
    CheckReport,
    check_certificate,
    check_listen,
    check_private_key,
    check_target,
    check_writable_dir,
)
from tcu.config import AgentConfig, build_agent_config, read_config_document, state_directory
from tcu.errors import ConfigError, TcuError

__all__ = ["check_agent", "load_config_all_problems"]

_MAX_ROUNDS = 64


def _drop(doc: dict[str, Any], key: str) -> bool:
    """Remove ``key`` (``a.b``, ``bus[1].dbc``) from ``doc``; a ``[[bus]]`` entry goes whole."""
    parts: list[str | int] = []
    for part in key.split("."):
        name, _, index = part.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index.rstrip("]")))
    if parts and parts[0] == "bus" and len(parts) >= 2:
        parts = parts[:2]  # a wrong key of a bus: check the other buses
    node: Any = doc
    for step in parts[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return False
    last = parts[-1]
    try:
        del node[last]
    except (KeyError, IndexError, TypeError):
        return False
    return True


def load_config_all_problems(
    path: Path, env: Mapping[str, str], overrides: Mapping[str, Any], report: CheckReport
) -> AgentConfig | None:
    """The configuration, after recording every key problem in ``report`` (None if it cannot load)."""
    try:
        doc = read_config_document(path)
    except ConfigError as exc:
        report.problems.append(str(exc))
        return None
    env = dict(env)
    seen: set[str] = set()
    for _ in range(_MAX_ROUNDS):
        attempt = _copy(doc)
        try:
            config = build_agent_config(attempt, path, env=env, overrides=overrides)
        except ConfigError as exc:
            message = f"{path}: {exc}" if exc.path is None else str(exc)
            key = exc.key or ""
            if message in seen:
                report.problems.append(f"{message} (the rest of the configuration is not checked)")
                return None
            seen.add(message)
            report.problems.append(message)
            if key.startswith("TCU_") and key in env:
                del env[key]
                continue
            if key == "uplink.tls" or key.startswith("uplink.tls."):
                doc.setdefault("uplink", {}).pop("tls", None)
                doc["uplink"]["insecure"] = True  # go on checking the rest
                continue
            if key in ("vehicle.id",):
                doc.setdefault("vehicle", {})["id"] = "CHECK"
                continue
            if not key or not _drop(doc, key):
                report.problems[-1] += " (the rest of the configuration is not checked)"
                return None
            continue
        return config
    return None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def check_agent(
    path: Path, env: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> tuple[CheckReport, AgentConfig | None]:
    report = CheckReport()
    config = load_config_all_problems(path, env, overrides or {}, report)
    if config is None:
        return report, None
    if not report.problems:
        report.ok.append(f"{path}: every key known and valid ({len(config.buses)} buses)")
    from tcu.signals.dbc import load_dbc
    from tcu.signals.mapping import build_catalog, load_mapping

    databases: dict[str, list[Any]] = {}
    for bus in config.buses:
        for dbc in bus.dbc:
            try:
                db = load_dbc(dbc)
            except TcuError as exc:
                report.problems.append(f"bus {bus.name}: {exc}")
                continue
            databases.setdefault(bus.name, []).append(db)
            report.ok.append(
                f"bus {bus.name} ({bus.interface} {bus.channel}): {dbc}: {len(db.messages)} messages"
            )
    catalog = None
    try:
        mapping = load_mapping(config.mapping)
        catalog = build_catalog(mapping, databases, mapping_path=config.mapping)
        report.ok.append(
            f"mapping {config.mapping}: {len(catalog.signals)} signals, catalog {catalog.catalog_id}"
        )
    except TcuError as exc:
        report.problems.append(f"mapping: {exc}")
    if config.campaigns is not None and config.campaigns.file is not None:
        _check_campaigns(config, catalog, databases, report)
    up = config.uplink
    if up.tls is not None:
        check_certificate(up.tls.ca_cert, "uplink.tls.ca_cert", report)
        check_certificate(up.tls.cert, "uplink.tls.cert", report)
        check_private_key(up.tls.key, "uplink.tls.key", report)
    else:
        report.warnings.append("uplink: insecure (no TLS): for a local test only")
    check_target(up.target, "uplink.target", report)
    if config.spool is not None:
        key = "spool.directory" if config.spool_origin == "configured" else "spool (default, no [spool])"
        check_writable_dir(config.spool.directory, key, report)
    else:
        report.warnings.append(
            "[spool] enabled = false: unacked batches are kept in memory and lost on a crash"
        )
    if config.commands is not None:
        from tcu.pki.commands import load_verify_key

        try:
            load_verify_key(config.commands.verify_key)
            report.ok.append(f"commands.verify_key: {config.commands.verify_key}: loads")
        except TcuError as exc:
            report.problems.append(f"commands.verify_key: {exc}")
        store = config.commands.nonce_store
        if store == "memory":
            report.warnings.append(
                'commands.nonce_store = "memory": replays are refused only until a restart'
            )
        else:
            check_writable_dir(store.parent, "commands.nonce_store", report)
    else:
        check_writable_dir(config.state_dir or state_directory(env), "state directory", report)
    if config.metrics_listen is not None:
        check_listen(config.metrics_listen, report, key="metrics.listen")
    if config.connectivity is not None:
        try:
            from tcu.agent.connectivity import build_connectivity_source

            build_connectivity_source(config)
            report.ok.append("connectivity: settings and roaming policy load")
        except TcuError as exc:
            report.problems.append(f"connectivity: {exc}")
    return report, config


def _check_campaigns(
    config: AgentConfig, catalog: Any, databases: Mapping[str, Any], report: CheckReport
) -> None:
    from tcu.collect.buffer import frame_rates_from_dbc, plan_buffers, rates_from_dbc
    from tcu.collect.campaign import Condition, load_campaigns, validate
    from tcu.signals.decoder import compile_codecs

    assert config.campaigns is not None and config.campaigns.file is not None
    try:
        campaigns = load_campaigns(config.campaigns.file)
        if catalog is not None:
            validate(campaigns, catalog)
            codecs = compile_codecs(databases)  # the rates come from the codecs' cycle times
            plan = plan_buffers(
                campaigns,
                catalog,
                rates_from_dbc(catalog, codecs),
                config.campaigns.memory_budget_bytes,
                frame_rate_hz=frame_rates_from_dbc(codecs),
            )
            memory = f", ring buffers {plan.total_bytes} of {config.campaigns.memory_budget_bytes} bytes"
        else:
            memory = " (signals not checked: the mapping did not load)"
    except TcuError as exc:
        report.problems.append(f"campaigns: {exc}")
        return
    for c in campaigns:
        if isinstance(c.mode, Condition):
            cost = c.mode.expression.cost()
            report.ok.append(
                f"campaign {c.name} v{c.version}: condition cost {cost.nodes} nodes, depth {cost.depth},"
                f" windows {cost.total_window_ms:g} ms"
            )
    report.ok.append(f"campaigns {config.campaigns.file}: {len(campaigns)} campaigns{memory}")
