"""Reference CNNs used to exercise and evaluate the intq compiler.

``models.zoo`` holds the PyTorch definitions: three small BatchNorm-heavy nets
(ResNet, Inception and MobileNetV2 flavours) trained on the 8x8 scikit-learn
digits upsampled to 16x16, and from-scratch, torchvision-compatible full-size
architectures (ResNet-18/50, Inception-v3, MobileNetV2) for shape and cost
checks; ``models.digits`` is the numpy-only preprocessing and data loading used
to evaluate the bundled ONNX files; ``models.train_digits`` regenerates every
bundled artifact (weights, ONNX exports, calibration/test sets, accuracy.json).
This package deliberately imports nothing at import time, so that the numpy-only
helpers stay usable without torch installed.
"""
