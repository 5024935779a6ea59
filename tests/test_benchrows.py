"""One way to write benchmark rows and metric labels (tedloc_edge/benchrows.py, tedloc_edge/metric_names.py)."""

from __future__ import annotations

import json

from tedloc_edge.benchrows import markdown_table, ratio, spread, write_json
from tedloc_edge.metric_names import METRIC_NAMES, REPORT_COLUMNS, metric_label


def test_rows_table_ratio_spread_and_json(tmp_path):
    assert markdown_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]
    assert ratio(3.0, 2.0) == 1.5 and ratio(3.0, None) is None and ratio(3.0, 0.0) is None
    assert spread([2.04, 1.0, 3.96]) == [1.0, 4.0]
    write_json(tmp_path / "r.json", {"rows": [1]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"rows": [1]} and (tmp_path / "r.json").read_text().endswith("}\n")


def test_metric_labels():
    assert metric_label("top1_cls") == "Top-1 Cls" and metric_label("top1_loc_at_threshold") == "Top-1 Loc @ stored τ"
    assert METRIC_NAMES["maxboxacc"].long == "MaxBoxAcc (IoU 0.5, largest contour)"
    assert all(metric_label(key) for key in REPORT_COLUMNS)


def test_publish_markdown_prints_and_writes_one_trailing_newline(tmp_path, capsys):
    from tedloc_edge.benchrows import publish_markdown

    publish_markdown("| a |\n", tmp_path / "t.md")
    publish_markdown("| b |", None)  # printed only
    assert (tmp_path / "t.md").read_text() == "| a |\n" and capsys.readouterr().out == "| a |\n\n| b |\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.md"]
