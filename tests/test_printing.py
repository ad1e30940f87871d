"""Golden printout of a small IR: nodes, label groups, sizes and what is prunable."""

from __future__ import annotations

import torch
from torch import nn

from pruning_ir import PruningIR

GOLDEN = """\
PruningIR of Sequential (snapshot 'main'): 7 nodes, 7 label groups (1 prunable, 6 prunable labels)
nodes:
  %3[2, 6, 3, 4] = aten.convolution(input=%0, weight=%1, bias=%2, stride=[1, 1], padding=[0, 0], \
dilation=[1, 1], output_padding=[0, 0], groups=1)  # 0
  %4[0] = aten.empty(size=[0])  # 1
  %9[2, 6, 3, 4], %10[0], %11[0] = aten.native_batch_norm(input=%3, weight=%5, bias=%6, running_mean=%7, \
running_var=%8)  # 1
  %12[2, 6, 3, 4] = aten.relu(self=%9)  # 2
  %13[2, 72] = aten.view(self=%12, size=[2, 72])  # 3
  %15[72, 5] = aten.t(self=%14)  # 4
  %17[2, 5] = aten.addmm(self=%16, mat1=%13, mat2=%15)  # 4
label groups:
  g0: size 3, fixed: model input (keeps its shape) -- 0.weight[1]
  g1: size 3, fixed: convolution kernel axis (aten.convolution in '0') -- 0.weight[2]
  g2: size 3, fixed: convolution kernel axis (aten.convolution in '0') -- 0.weight[3]
  g3: size 5, fixed: model output (keeps its shape) -- 4.weight[0], 4.bias[0]
  g4: size 6, prunable -- 0.weight[0], 0.bias[0], 1.weight[0], 1.bias[0], +3
  g5: size 3, fixed: convolution spatial axis -- 4.weight[1]
  g6: size 4, fixed: convolution spatial axis -- 4.weight[1]"""


def test_golden_printout() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 3 * 4, 5)).eval()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 3, 5, 6),))
    assert str(ir) == GOLDEN
    assert repr(ir) == "PruningIR(Sequential: 7 nodes, 7 label groups, 1 prunable)"
    report = ir.report()
    assert report.startswith("Sequential: 1 of 7 label groups prunable")
    assert "g3 (size 5, 4.weight[0], 4.bias[0]): model output (keeps its shape)" in report
