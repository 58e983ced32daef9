"""What torch.onnx.export writes, with both exporters, opsets 9 to 20, fixed and dynamic
batch: imports, folds every bit of shape arithmetic, matches onnxruntime, and (dynamic
batch) runs at any batch size."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import export_torch, ort_run, rel_err
from intq.float_executor import run_float
from intq.frontend import import_onnx
from intq.passes import run_passes


class Composite(nn.Module):
    """Every idiom the frontend must digest, in one small net."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
                                nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.branch = nn.Conv2d(8, 4, 3)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(12, 10)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.stem(x)
        x = F.max_pool2d(x, 2, ceil_mode=True)
        y = self.dw(x)
        y = torch.relu(self.pw(y) + y)                # residual add
        b = self.branch(F.pad(y, (1, 1, 1, 1)))       # explicit Pad folded into the conv
        y = torch.cat([b, self.pool(y)], 1)            # inception-style concat
        y = y.mean((2, 3), keepdim=True)
        return self.fc(y.view(y.size(0), -1))


CONFIGS = [(False, o, d) for o in (9, 11, 13, 17) for d in (False, True)] + \
          [(True, o, d) for o in (18, 20) for d in (False, True)]


@pytest.mark.parametrize("dynamo,opset,dynamic", CONFIGS,
                         ids=[f"{'dynamo' if a else 'legacy'}-opset{b}-{'dynamic' if c else 'fixed'}"
                              for a, b, c in CONFIGS])
def test_export_imports_and_matches(dynamo, opset, dynamic):
    module = Composite().eval()
    x = torch.randn(2, 3, 12, 12)
    model = export_torch(module, x, dynamo=dynamo, opset=opset, dynamic_batch=dynamic)
    graph = run_passes(import_onnx(model))
    ops = {n.op for n in graph.nodes}
    assert "BatchNormalization" not in ops and "Reshape" not in ops and "Pad" not in ops
    xs = x.numpy()
    assert rel_err(run_float(graph, xs)[0], ort_run(model, xs)[0]) < 1e-4
    with torch.no_grad():
        assert rel_err(run_float(graph, xs)[0], module(x).numpy()) < 1e-4
    if dynamic:
        assert graph.values[graph.inputs[0]].shape[0] is None
        for batch in (1, 5):
            xb = np.random.default_rng(batch).standard_normal((batch, 3, 12, 12)).astype(np.float32)
            assert rel_err(run_float(graph, xb)[0], ort_run(model, xb)[0]) < 1e-4
