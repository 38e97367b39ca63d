"""`tf_lm.training.metrics.MetricsLog`: a resume keeps the rows up to its step; a damaged table is one line."""

import pytest

from tf_lm.training.metrics import MetricsLog


def test_a_resume_keeps_the_rows_up_to_its_step(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,split,loss\n5,train,2.0\n10,train,1.5\n15,train,1.2\n")
    assert [row["step"] for row in MetricsLog(str(tmp_path), start_step=10).rows] == ["5", "10"]


@pytest.mark.parametrize("table", ["step;split;loss\n5;train;2.0\n", "step,split,loss\nx,train,1\n"])
def test_a_damaged_table_is_one_line_naming_it(tmp_path, table):
    (tmp_path / "metrics.csv").write_text(table)  # saved by a spreadsheet with ";", or edited by hand
    with pytest.raises(ValueError, match=r"metrics.csv is damaged: .*; move it aside to resume\.$"):
        MetricsLog(str(tmp_path), start_step=10)
