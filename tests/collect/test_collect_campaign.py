"""Campaign TOML: the model, errors with file:line(:column), validation against the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcu.collect.campaign import (
    CampaignError,
    Condition,
    OnChange,
    Periodic,
    RawFrame,
    load_campaigns,
    parse_campaigns,
    validate,
)
from tcu.signals.mapping import Catalog

GOOD = """\
# three campaigns
[[campaign]]
name = "hard_braking"
version = 2
priority = 50
signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6 and Vehicle.Speed > 30"
trigger = "rising_edge"
min_trigger_interval_ms = 2000
pre_trigger_ms = 10000
post_trigger_ms = 5000
raw_frames = [{bus = "can0", arbitration_id = 0x123}]

[[campaign]]
name = "minutely"
version = 1
signals = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
[campaign.periodic]
period_ms = 60000
groups = [{signals = ["Vehicle.Speed"], period_ms = 1000}]

[[campaign]]
name = "gear"
version = 1
priority = 5
signals = ["Vehicle.Powertrain.Transmission.SelectedGear", "Vehicle.Speed"]
[campaign.on_change]
min_interval_ms = 500
deadband = {"Vehicle.Speed" = 0.5}
"""


def test_collect_campaign_model(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    braking, minutely, gear = load_campaigns(path)
    assert (braking.name, braking.version, braking.priority) == ("hard_braking", 2, 50)
    assert braking.key == ("hard_braking", 2)
    assert isinstance(braking.mode, Condition)
    cond = braking.mode
    assert cond.trigger == "rising_edge"
    assert (cond.min_trigger_interval_ms, cond.pre_trigger_ms, cond.post_trigger_ms) == (2000, 10000, 5000)
    assert cond.raw_frames == (RawFrame("can0", 0x123),)
    assert cond.expression.signals == {"Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"}
    assert braking.source.line == 2 and braking.source.path == str(path)
    assert isinstance(minutely.mode, Periodic)
    assert minutely.priority == 0
    assert minutely.mode.period_of("Vehicle.Speed") == 1000
    assert minutely.mode.period_of("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current") == 60000
    assert isinstance(gear.mode, OnChange)
    assert gear.mode.deadband_of("Vehicle.Speed") == 0.5
    assert gear.mode.deadband_of("Vehicle.Powertrain.Transmission.SelectedGear") == 0.0
    assert gear.mode.min_interval_ms == 500
    validate([braking, minutely, gear], catalog)
    # Equal definitions compare equal whatever file they came from.
    assert parse_campaigns(GOOD, path="other") == [braking, minutely, gear]


def _error(text: str) -> CampaignError:
    with pytest.raises(CampaignError) as info:
        parse_campaigns(text, path="f.toml")
    return info.value


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (_replace("version = 2\n", ""), 2, "needs 'version'"),
        (_replace("version = 2", "version = 0"), 4, "version must be an integer >= 1"),
        (
            _replace('trigger = "rising_edge"', 'trigger = "edge"'),
            9,
            "trigger must be 'rising_edge' or 'always'",
        ),
        (
            _replace("pre_trigger_ms = 10000", "pre_trigger_ms = -1"),
            11,
            "pre_trigger_ms must be an integer >= 0",
        ),
        (_replace("pre_trigger_ms = 10000", "pre_trigger_ms = 700000"), 11, "over the limit"),
        (_replace("arbitration_id = 0x123", "arbitration_id = 0x20000000"), 13, "raw_frames entries"),
        (_replace("period_ms = 60000\n", ""), 15, "no period_ms for"),
        (
            _replace("[campaign.on_change]", "[campaign.periodic]\nperiod_ms=1\n[campaign.on_change]"),
            23,
            "exactly one of",
        ),
        (
            _replace('deadband = {"Vehicle.Speed" = 0.5}', 'deadband = {"Vehicle.Sped" = 0.5}'),
            30,
            "not in the campaign's signals",
        ),
        (
            _replace("min_interval_ms = 500", "min_interval_ms = 500\ncolour = 1"),
            30,
            "unknown keys ['colour']",
        ),
        (_replace('name = "gear"', 'name = "minutely"'), 23, "defined twice (first at line 15)"),
        (
            _replace(
                'signals = ["Vehicle.Speed", "Vehicle.Acc',
                'signals = ["Vehicle.Speed", "Vehicle.Speed", "Vehicle.Acc',
            ),
            6,
            "signals listed twice",
        ),
        (
            _replace(
                'signals = ["Vehicle.Speed"], period_ms = 1000', 'signals = ["Vehicle.X"], period_ms = 1000'
            ),
            21,
            "not in the campaign's signals",
        ),
        (_replace("version = 2", "version = 2\nversion = 3"), 5, "not valid TOML"),
        ("x = 1\n", 1, "unknown top-level keys"),
        ("", 1, "no [[campaign]] entries"),
    ],
)
def test_collect_campaign_errors_name_line(text: str, line: int, problem: str) -> None:
    err = _error(text)
    assert problem in str(err)
    assert err.line == line, str(err)
    assert str(err).startswith(f"f.toml:{line}: ")


def test_collect_campaign_expression_error_has_file_column() -> None:
    text = _replace('Vehicle.Speed > 30"', 'Vehicle.Speed > 30 or"')
    err = _error(text)
    assert err.line == 8
    expr_line = text.splitlines()[7]
    assert expr_line.startswith('expression = "')
    # The error is at the end of the expression: the column just after "or".
    assert err.column == expr_line.index('or"') + 3
    assert str(err).startswith(f"f.toml:8:{err.column}: campaign 'hard_braking' condition: expression: ")
    assert "^" in str(err)


def test_collect_campaign_expression_cost_error_column_in_inline_table() -> None:
    text = (
        '[[campaign]]\nname = "x"\nversion = 1\nsignals = ["Vehicle.Speed"]\n'
        'condition = { expression = "Vehicle.Speed > 1 and max(Vehicle.Speed, 5min) > 2", '
        "pre_trigger_ms = 1 }\n"
    )
    err = _error(text)
    assert err.line == 5
    assert err.column == text.splitlines()[4].index("max(") + 1
    assert "over the limit of 60000 ms" in str(err)


def test_collect_whole_file_refused(tmp_path: Path) -> None:
    # The first campaign is fine, the second is not: nothing is returned.
    path = tmp_path / "c.toml"
    path.write_text(_replace("period_ms = 60000", 'period_ms = "often"'))
    with pytest.raises(CampaignError) as info:
        load_campaigns(path)
    assert str(info.value).startswith(f"{path}:20: campaign 'minutely' periodic: period_ms must be")


def test_collect_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="cannot read"):
        load_campaigns(tmp_path / "nope.toml")


def test_collect_unknown_signal_refused(catalog: Catalog) -> None:
    gear = '"Vehicle.Powertrain.Transmission.SelectedGear", "Vehicle.Speed"]'
    text = _replace(gear, gear.replace("SelectedGear", "SelectedGeer"))
    campaigns = parse_campaigns(text, path="f.toml")
    with pytest.raises(CampaignError) as info:
        validate(campaigns, catalog)
    assert str(info.value).startswith(
        "f.toml:27: campaign 'gear': signal 'Vehicle.Powertrain.Transmission.SelectedGeer' "
        "is not in the catalog"
    )
    assert "did you mean 'Vehicle.Powertrain.Transmission.SelectedGear'" in str(info.value)


def test_collect_unknown_signal_in_expression_has_column(catalog: Catalog) -> None:
    text = _replace("Vehicle.Speed > 30", "Vehicle.Velocity > 30")
    campaigns = parse_campaigns(text, path="f.toml")
    with pytest.raises(CampaignError) as info:
        validate(campaigns, catalog)
    line = text.splitlines()[7]
    assert info.value.line == 8
    assert info.value.column == line.index("Vehicle.Velocity") + 1
    assert "'Vehicle.Velocity' is not in the catalog" in str(info.value)


def test_collect_duplicate_across_files(catalog: Catalog) -> None:
    a = parse_campaigns(GOOD, path="a.toml")
    b = parse_campaigns(GOOD, path="b.toml")
    with pytest.raises(
        CampaignError, match=r"b.toml:2: campaign 'hard_braking' is defined twice \(also at a.toml:2\)"
    ):
        validate(a + b, catalog)
