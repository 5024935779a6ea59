"""The INT8 gate's arithmetic: drops, the images behind them, and the exact McNemar test (no models needed)."""

from __future__ import annotations

import numpy as np
import pytest

from tedloc_edge.export.int8_gate import Int8AccuracyError, enforce, gate, mcnemar_exact


def test_mcnemar_exact_matches_binomial_tails_worked_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 1) == pytest.approx(2 * (1 + 4) / 16)  # n=4: P(X <= 1) doubled
    assert mcnemar_exact(1, 3) == mcnemar_exact(3, 1)
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(2, 2) == 1.0  # capped


def _hits(pattern: str) -> np.ndarray:
    return np.array([c == "1" for c in pattern])


def test_gate_counts_the_images_behind_a_drop():
    fp32_hits = {"maxboxacc": _hits("11110000"), "top1_loc": _hits("11000000")}
    int8_hits = {"maxboxacc": _hits("11100001"), "top1_loc": _hits("10000000")}
    result = gate({"maxboxacc": 50.0, "top1_loc": 25.0}, {"maxboxacc": 50.0, "top1_loc": 12.5}, 1.0, 8,
                  hits=(fp32_hits, int8_hits))
    assert result.flips == {"maxboxacc": (1, 1), "top1_loc": (1, 0)}
    assert result.drops["top1_loc"] == (1 - 0) * 100 / 8
    assert not result.passed and result.within_chance  # one image of eight is no evidence
    assert "top1_loc fp32 25.00 int8 12.50 (drop +12.50: int8 lost 1 and gained 0 images, McNemar p 1.00)" in result.summary()
    with pytest.raises(Int8AccuracyError, match="on 8 images a drop this size is within chance") as err:
        enforce(result, allow_drop=False, path="model_int8.onnx")
    assert "\n" not in str(err.value)


def test_a_drop_chance_cannot_explain_gets_no_chance_hint():
    n = 40
    fp32_hits = {"maxboxacc": np.ones(n, bool), "top1_loc": np.ones(n, bool)}
    int8_hits = {"maxboxacc": np.arange(n) >= 12, "top1_loc": np.ones(n, bool)}  # 12 lost, none gained: p < 0.001
    result = gate({"maxboxacc": 100.0, "top1_loc": 100.0}, {"maxboxacc": 70.0, "top1_loc": 100.0}, 1.0, n,
                  hits=(fp32_hits, int8_hits))
    assert result.flips["maxboxacc"] == (12, 0) and result.p_value("maxboxacc") < 0.001
    assert not result.within_chance
    with pytest.raises(Int8AccuracyError) as err:
        enforce(result, allow_drop=False, path="model_int8.onnx")
    assert "within chance" not in str(err.value)


def test_hits_from_different_splits_are_refused():
    with pytest.raises(ValueError, match="same split"):
        gate({"maxboxacc": 1.0, "top1_loc": 1.0}, {"maxboxacc": 1.0, "top1_loc": 1.0}, 1.0, 3,
             hits=({"maxboxacc": _hits("101")}, {"maxboxacc": _hits("10")}))


def test_the_gate_says_when_its_split_cannot_resolve_the_allowed_drop():
    from tedloc_edge.export.int8_gate import power_note

    note = power_note(80, 1.0)  # the demo's val split: one image is 1.25 points
    assert "80 images, so one image is 1.25 points" in note and "at least 100 images" in note and "--val 100" in note
    assert power_note(120, 1.0) == "" and power_note(100, 1.0) == ""
    assert "at least 200 images" in power_note(120, 0.5)


def test_the_record_carries_fp32_hits_for_gating_an_engine_later():
    from tedloc_edge.export.int8_gate import reference_from_record

    fp32_hits = {"maxboxacc": _hits("1101"), "top1_loc": _hits("1001")}
    int8_hits = {"maxboxacc": _hits("1100"), "top1_loc": _hits("1001")}
    record = gate({"maxboxacc": 75.0, "top1_loc": 50.0}, {"maxboxacc": 50.0, "top1_loc": 50.0}, 1.0, 4,
                  hits=(fp32_hits, int8_hits)).to_dict()
    assert record["fp32_hits"] == {"maxboxacc": "1101", "top1_loc": "1001"}
    metrics, hits = reference_from_record(record, 4)
    assert metrics == {"maxboxacc": 75.0, "top1_loc": 50.0} and hits["maxboxacc"].tolist() == [True, True, False, True]
    assert reference_from_record(record, 5) is None  # another split: no reference
    assert reference_from_record({k: v for k, v in record.items() if k != "fp32_hits"}, 4) is None


def test_an_engine_without_a_reference_is_refused_unless_allowed(tmp_path):
    from tedloc_edge.errors import UserError
    from tedloc_edge.export.int8_gate import gate_engine

    split = [object()] * 4
    with pytest.raises(UserError, match="carries no fp32 val figures for 4 images.*--int8-allow-drop"):
        gate_engine(tmp_path / "m.plan", None, split, 1.0, False, "m.plan")
    assert gate_engine(tmp_path / "m.plan", None, split, 1.0, True, "m.plan") is None
