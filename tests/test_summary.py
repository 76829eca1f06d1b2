"""fc.summary: shapes, parameters, multiply-adds, receptive fields and backends per layer, and totals."""
import io

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import models, nn, shapes
from fastconv.backends import plan


def test_lenet5_rows_and_totals():
    out = io.StringIO()
    model = models.LeNet5()
    s = fc.summary(model, (2, 1, 32, 32), file=out)
    assert [r.name for r in s.rows][:3] == ["features.0 (Conv2d)", "features.1 (ReLU)", "features.2 (MaxPool2d)"]
    assert s.rows[-1].output_shape == (2, 10)
    assert sum(r.params for r in s.rows) == s.total_params == model.num_parameters() == 61_706
    convs = [r for r in s.rows if r.op == "conv2d"]
    # batch x out channels x output pixels x (in channels x kernel taps)
    assert [r.macs for r in convs] == [2 * 6 * 28 * 28 * 25, 2 * 16 * 10 * 10 * 150, 2 * 120 * 400]
    assert s.total_macs == sum(r.macs for r in convs) + 2 * (120 * 84 + 84 * 10)
    windows = [(5, 1), (2, 2), (5, 1), (2, 2), (5, 1)]
    fields = [r.receptive_field for r in s.rows if r.op in ("conv2d", "max_pool2d")]
    jumps = [r.jump for r in s.rows if r.op in ("conv2d", "max_pool2d")]
    for i in range(5):
        f, j = shapes.receptive_field(windows[:i + 1])
        assert fields[i] == (f, f) and jumps[i] == (j, j)
    assert fields[-1] == (32, 32)  # C5 sees the whole padded digit
    spec = shapes.conv_spec((2, 1, 32, 32), (6, 1, 5, 5), (6,))
    assert convs[0].backend == plan.plan("conv2d", spec, np.float32).name
    text = out.getvalue()
    assert text == s.table() + "\n" and "61,706" in text and "features.6 (Conv2d)" in text
    assert model.training


def test_mnist1d_fields_and_a_forced_backend():
    model = models.MNIST1DConvNet("paper", backend="numpy")
    s = fc.summary(model, (1, 40), file=None)
    convs = [r for r in s.rows if r.op == "conv1d"]
    assert [r.receptive_field for r in convs] == [(5,), (9,), (17,)]
    assert [r.jump for r in convs] == [(2,), (4,), (8,)]
    assert {r.backend for r in convs} == {"numpy"}
    assert s.total_params == 5_210


def test_shared_parameters_count_once_and_functional_ops_have_rows():
    class Twice(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return F.softmax(self.fc(F.relu(self.fc(x))), dim=-1)

    s = fc.summary(Twice(), (4, 3), file=None)
    assert [r.params for r in s.rows] == [12, 0, 0, 0]
    assert [r.name for r in s.rows] == ["fc (Linear)", "relu", "fc (Linear)", "softmax"]
    assert s.total_macs == 2 * 4 * 9


@pytest.mark.parametrize("shape", [(1, 40.0), "1x40", (0, 40)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
        fc.summary(models.MNIST1DConvNet(), shape, file=None)
