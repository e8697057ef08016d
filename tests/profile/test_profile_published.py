"""`tfprune.profile` against the published counts of well-known models.

Published figures are rounded to two or three significant digits, so they are checked to 2%;
params are also checked exactly against `model.count_params()`. Sources:
- ResNet-50: He et al. 2016, Table 1, 3.8e9 multiply-adds, 25.6 M params. Keras' ResNet50 puts
  the stride on the first 1x1 convolution of a block, as the paper does; the 4.1 G often quoted
  is torchvision's variant with the stride on the 3x3.
- MobileNetV2 1.0 at 224: Sandler et al. 2018, Table 4/6, 300 M multiply-adds; 3.5 M params
  (Keras Applications table; the paper's 3.4 M omits part of the classifier).
- VGG-16: 15.5 G MACs (Simonyan and Zisserman 2015 as counted by fvcore/ptflops), 138 M params.
- CIFAR ResNet-56: He et al. 2016, section 4.2, 0.85 M params; 125 M MACs (the count used by
  the channel-pruning literature, e.g. He et al. 2019 FPGM, Li et al. 2017).
- MLPerf Tiny ResNet-8 (mlcommons/tiny image classification): 12.5 M MACs, 78 k params.
"""

import keras
import pytest

import tfprune

MODELS = {
    "resnet50": (lambda: keras.applications.ResNet50(weights=None), 3.8e9, 25.6e6),
    "mobilenet_v2": (lambda: keras.applications.MobileNetV2(weights=None), 300e6, 3.5e6),
    "vgg16": (lambda: keras.applications.VGG16(weights=None), 15.5e9, 138e6),
    "cifar_resnet56": (lambda: tfprune.zoo.cifar_resnet(56), 125e6, 0.85e6),
    "mlperf_tiny_resnet8": (lambda: tfprune.zoo.resnet8(), 12.5e6, 78e3),
}


@pytest.mark.parametrize("name", MODELS)
def test_published_counts(name):
    build, macs, params = MODELS[name]
    model = build()
    p = tfprune.profile(model)
    assert p.macs == pytest.approx(macs, rel=0.02)
    assert p.flops == 2 * p.macs
    assert p.params == pytest.approx(params, rel=0.02)
    assert p.params == model.count_params()
    assert p.weight_bytes == 4 * p.params          # all float32
    assert p.uncounted == ()
