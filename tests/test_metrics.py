"""`tf_lm.training.metrics.MetricsLog`: a resume keeps the rows up to its step, in the table and in TensorBoard; a
damaged table is one line."""

import pytest
from conftest import tensorboard_values

from tf_lm.training.metrics import MetricsLog


def test_a_resume_keeps_the_rows_up_to_its_step(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,split,loss\n5,train,2.0\n10,train,1.5\n15,train,1.2\n")
    assert [row["step"] for row in MetricsLog(str(tmp_path), start_step=10).rows] == ["5", "10"]


@pytest.mark.parametrize("table", ["step;split;loss\n5;train;2.0\n", "step,split,loss\nx,train,1\n",
                                   "step,split,loss\n5,train,low\n"])
def test_a_damaged_table_is_one_line_naming_it(tmp_path, table):
    (tmp_path / "metrics.csv").write_text(table)  # saved by a spreadsheet with ";", or edited by hand
    with pytest.raises(ValueError, match=r"metrics.csv is damaged: .*; move it aside to resume\.$"):
        MetricsLog(str(tmp_path), start_step=10)


def test_a_resume_leaves_tensorboard_one_value_per_step_and_keeps_the_steps_before_it(tmp_path):
    first = MetricsLog(str(tmp_path))
    for step in (1, 2, 3, 4):
        first.log(step, "train", loss=5.0 - step, mfu=None)
    first.log(4, "validation", loss=1.5)
    resumed = MetricsLog(str(tmp_path), start_step=2)  # killed after step 4, resumed from its step-2 checkpoint
    for step in (3, 4):
        resumed.log(step, "train", loss=0.5 - step / 10, mfu=None)
    assert tensorboard_values(tmp_path / "logs" / "train") == {
        ("loss", 1): [4.0], ("loss", 2): [3.0], ("loss", 3): [pytest.approx(0.2)], ("loss", 4): [pytest.approx(0.1)]}
    assert tensorboard_values(tmp_path / "logs" / "validation") == {}  # step 4's is about to be redone
