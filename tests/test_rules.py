"""Rules files: the shipped ones load; a wrong file stops with the file, the key and what was expected."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from backorders.rules import RulesError, RulesWarning, cron_expressions, load_rules, load_schedule

RULES = Path(__file__).resolve().parent.parent / "include" / "rules"


@pytest.fixture
def rules_copy(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    return folder


def test_shipped_rules_load_and_resolve_defaults():
    r = load_rules(RULES)
    assert r.channel("US_WEB").sources == ("WH_PDX", "WH_NJ", "WH_DAL")
    assert r.channel("US_WEB").ftc_rule is True
    assert r.channel("US_B2B").max_shipments_per_order == 2
    assert r.channel("EU_WEB").backorders_enabled is False
    # a channel not listed uses the defaults
    unknown = r.channel("NOWHERE")
    assert unknown.sources == () and unknown.backorders_enabled is True and unknown.max_shipments_per_order is None
    assert r.payment_method("PAYPAL").authorization_validity_days == 29
    assert r.payment_method("GIFT_CARD").reauthorize is False
    assert r.schedule.times == ["06:00", "14:00", "22:00"]


def test_rules_dir_from_the_environment(rules_copy, monkeypatch):
    (rules_copy / "channels.yaml").write_text("channels: {ONLY: {sources: [S1]}}\n")
    monkeypatch.setenv("BACKORDERS_RULES_DIR", str(rules_copy))
    assert list(load_rules().channels) == ["ONLY"]


def test_empty_folder_gives_every_default(tmp_path):
    r = load_rules(tmp_path)
    assert r.channels == {} and r.channel("X").backorder_exception_days == 14
    assert r.payment_method("X").reauth_interval_days == 10


@pytest.mark.parametrize("text, expected", [
    ("channels: {US_WEB: {max_shipments: 2}}", "channels.yaml: channels.US_WEB.max_shipments: unknown key"),
    ("channels: {US_WEB: {max_shipments_per_order: 0}}",
     "channels.US_WEB.max_shipments_per_order: Input should be greater than or equal to 1, got 0"),
    ("channels: {US_WEB: {allow_split_lines: maybe}}", "channels.US_WEB.allow_split_lines: Input should be a valid boolean"),
    ("channels: {US_WEB: {sources: [WH_A, WH_A]}}", "channels.US_WEB.sources: expected each source once"),
    ("channels: {US_WEB: {timezone: Mars/Olympus}}", "channels.US_WEB.timezone: expected a time zone name"),
    ("channels: {US_WEB: {availability_message: 'in {weeks} weeks'}}",
     "channels.US_WEB.availability_message: expected a text whose only placeholder is {days}"),
    ("channels: {'bad code;drop': {}}", "channels.bad code;drop"),
    ("defaults: {ftc_rule: 3}", "defaults.ftc_rule: Input should be a valid boolean"),
    ("chanels: {}", "channels.yaml: chanels: unknown key"),
    ("channels: [", "channels.yaml: not valid YAML at line"),
    ("- a\n- b", "channels.yaml: expected a mapping at the top level"),
])
def test_wrong_channels_file_names_file_key_and_expectation(rules_copy, text, expected):
    (rules_copy / "channels.yaml").write_text(text)
    with pytest.raises(RulesError) as err:
        load_rules(rules_copy)
    assert expected in str(err.value)
    assert str(rules_copy / "channels.yaml") in str(err.value)


@pytest.mark.parametrize("file, text, expected", [
    ("payment_methods.yaml", "methods: {CARD: {reauth_interval_days: -1}}", "methods.CARD.reauth_interval_days"),
    ("schedule.yaml", "times: ['6 am']", 'times: expected times of day as "HH:MM"'),
    ("schedule.yaml", "times: []", "times: expected at least one time of day"),
    ("priority.yaml", "rules: [{when: {segment: B2B}, tier: 1}]", "rules.0.when.segment: unknown key"),
    ("safety_stock.yaml", "sources: {WH_PDX: -2}", "sources.WH_PDX: Input should be greater than or equal to 0"),
])
def test_wrong_other_files(rules_copy, file, text, expected):
    (rules_copy / file).write_text(text)
    with pytest.raises(RulesError, match=file) as err:
        load_rules(rules_copy)
    assert expected in str(err.value)


def test_reauthorization_interval_longer_than_validity_warns(rules_copy):
    (rules_copy / "payment_methods.yaml").write_text(
        "defaults: {reauth_interval_days: 10, authorization_validity_days: 7}\nmethods: {GIFT: {reauthorize: false}}")
    with pytest.warns(RulesWarning, match="defaults: reauth_interval_days \\(10\\) is longer than authorization_validity_days \\(7\\)"):
        load_rules(rules_copy)


def test_shipped_payment_methods_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RulesWarning)
        load_rules(RULES)


def test_missing_folder():
    with pytest.raises(RulesError, match="rules folder not found"):
        load_rules("/nonexistent/rules")


def test_schedule_to_cron(rules_copy):
    assert cron_expressions(load_schedule(RULES)) == ["0 6,14,22 * * *"]
    (rules_copy / "schedule.yaml").write_text("times: ['06:30', '14:00', '22:30']\ntimezone: Europe/Berlin")
    s = load_schedule(rules_copy)
    assert cron_expressions(s) == ["0 14 * * *", "30 6,22 * * *"] and s.timezone == "Europe/Berlin"
