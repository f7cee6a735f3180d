"""The three PyTorch reference task models (copied verbatim) vs attn_jax.models with converted weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from attn_jax.models import AttentionClassifier, AttentionDetector, AttentionSegmenter  # noqa: E402
from attn_jax.nn import BottleneckResNetBlock, Decoder, ResNet, ResNetBlock, SmallCNN  # noqa: E402
from attn_jax.nn.convert import SEED_RENAME, torch_to_flax, torchvision_resnet_rename  # noqa: E402

# ---- the PyTorch reference models, verbatim (unchanged) --------------------------------------------


class SeedAttentionClassifier(nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.attention = nn.Sequential(nn.Conv2d(backbone.out_channels, 1, kernel_size=1), nn.Sigmoid())
        self.classifier = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, x):
        features = self.backbone(x)
        attention_weights = self.attention(features)
        weighted_features = features * attention_weights
        pooled_features = F.adaptive_avg_pool2d(weighted_features, (1, 1)).squeeze()
        output = self.classifier(pooled_features)
        return output


class SeedAttentionDetector(nn.Module):
    def __init__(self, backbone, num_classes, num_anchors):
        super().__init__()
        self.backbone = backbone
        self.attention = nn.Sequential(nn.Conv2d(backbone.out_channels, 1, kernel_size=1), nn.Sigmoid())
        self.cls_head = nn.Conv2d(backbone.out_channels, num_classes * num_anchors, kernel_size=3, padding=1)
        self.reg_head = nn.Conv2d(backbone.out_channels, 4 * num_anchors, kernel_size=3, padding=1)

    def forward(self, x):
        features = self.backbone(x)
        attention_weights = self.attention(features)
        weighted_features = features * attention_weights
        cls_output = self.cls_head(weighted_features)
        reg_output = self.reg_head(weighted_features)
        return cls_output, reg_output


class SeedAttentionSegmenter(nn.Module):
    def __init__(self, encoder, decoder, num_classes):
        super().__init__()
        self.encoder = encoder
        self.attention = nn.Sequential(nn.Conv2d(encoder.out_channels, 1, kernel_size=1), nn.Sigmoid())
        self.decoder = decoder
        self.classifier = nn.Conv2d(decoder.out_channels, num_classes, kernel_size=1)

    def forward(self, x):
        encoder_features = self.encoder(x)
        attention_weights = self.attention(encoder_features)
        weighted_features = encoder_features * attention_weights
        decoder_features = self.decoder(weighted_features)
        output = self.classifier(decoder_features)
        return output


# ---- tiny PyTorch backbone / decoder mirroring SmallCNN((8, 16), stride=4) and Decoder((8, 8)) -------


class TinyBackbone(nn.Sequential):
    out_channels = 16

    def __init__(self, c_in):
        super().__init__(
            *[nn.Conv2d(c_in, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()],
            *[nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()],
        )


class TinyDecoder(nn.Sequential):
    out_channels = 8

    def __init__(self):
        up = lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        super().__init__(
            *[up(), nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()],
            *[up(), nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()],
        )


def _rename(encoder="backbone"):
    names = {
        f"{encoder}.0": f"{encoder}/conv0_0",
        f"{encoder}.1": f"{encoder}/bn0_0",
        f"{encoder}.3": f"{encoder}/conv1_0",
        f"{encoder}.4": f"{encoder}/bn1_0",
        "decoder.1": "decoder/conv0",
        "decoder.2": "decoder/bn0",
        "decoder.5": "decoder/conv1",
        "decoder.6": "decoder/bn1",
    }
    return {**SEED_RENAME, **names}


def _randomise(model, seed):
    """Non-trivial BatchNorm affine parameters and running statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


def _inputs(seed=0, shape=(3, 2, 16, 16)):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)  # NCHW
    return torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))


def _flax(model, images, state_dict):
    template = jax.eval_shape(model.init, jax.random.key(0), images)
    variables = torch_to_flax(state_dict, _rename(), template=template)
    return jax.jit(model.apply)(variables, images)


def _close(flax_out, torch_out):
    expected = torch_out.detach().numpy()
    assert np.all(np.isfinite(expected)), "torch output not finite"
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(flax_out), expected, rtol=1e-5, atol=1e-5 * scale, equal_nan=False)


def test_classifier_matches_seed():
    torch.manual_seed(0)
    seed_model = _randomise(SeedAttentionClassifier(TinyBackbone(2), num_classes=7), 1)
    x_pt, x_jx = _inputs()
    model = AttentionClassifier(SmallCNN((8, 16), stride=4), num_classes=7)
    _close(_flax(model, x_jx, seed_model.state_dict()), seed_model(x_pt))


def test_detector_matches_seed():
    torch.manual_seed(1)
    num_classes, num_anchors = 5, 3
    seed_model = _randomise(SeedAttentionDetector(TinyBackbone(2), num_classes, num_anchors), 2)
    x_pt, x_jx = _inputs(1)
    model = AttentionDetector(SmallCNN((8, 16), stride=4), num_classes, num_anchors)
    cls_logits, box_deltas = _flax(model, x_jx, seed_model.state_dict())
    cls_pt, reg_pt = seed_model(x_pt)
    b, _, h, w = cls_pt.shape  # (B, A*C, h, w) -> (B, h, w, A, C): channel k = anchor k // C, class k % C
    _close(cls_logits, cls_pt.permute(0, 2, 3, 1).reshape(b, h, w, num_anchors, num_classes))
    _close(box_deltas, reg_pt.permute(0, 2, 3, 1).reshape(b, h, w, num_anchors, 4))


def test_segmenter_matches_seed():
    torch.manual_seed(2)
    seed_model = _randomise(SeedAttentionSegmenter(TinyBackbone(2), TinyDecoder(), num_classes=4), 3)
    x_pt, x_jx = _inputs(2)
    model = AttentionSegmenter(SmallCNN((8, 16), stride=4), Decoder((8, 8)), num_classes=4)
    template = jax.eval_shape(model.init, jax.random.key(0), x_jx)
    variables = torch_to_flax(seed_model.state_dict(), _rename("encoder"), template=template)
    out = jax.jit(model.apply)(variables, x_jx)
    assert out.shape == (3, 16, 16, 4)
    _close(out, seed_model(x_pt).permute(0, 2, 3, 1))


def test_conversion_reports_mismatches():
    seed_model = SeedAttentionClassifier(TinyBackbone(2), num_classes=7)
    model = AttentionClassifier(SmallCNN((8, 16), stride=4), num_classes=6)  # wrong class count
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 2)))
    with pytest.raises(ValueError, match="classifier/kernel: converted shape"):
        torch_to_flax(seed_model.state_dict(), _rename(), template=template)
    with pytest.raises(ValueError, match="no entry for PyTorch module 'backbone.0'"):
        torch_to_flax(seed_model.state_dict(), SEED_RENAME)
    dropped = {**_rename(), "backbone.4": None}
    with pytest.raises(ValueError, match="missing .*backbone/bn1_0"):
        torch_to_flax(seed_model.state_dict(), dropped, template=template)


# ---- a torchvision-layout ResNet (same module names as torchvision.models.resnet), tiny widths ----------


class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class TVResNet(nn.Module):
    def __init__(self, block, layers, width):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2**i, n, 1 if i == 0 else 2))
        self.fc = nn.Linear(self.inplanes, 10)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(len([m for m in self.children() if isinstance(m, nn.Sequential)])):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


@pytest.mark.parametrize("bottleneck", [False, True])
def test_resnet_matches_torchvision_layout(bottleneck):
    torch.manual_seed(3)
    stages = (1, 1) if bottleneck else (2, 2)
    block_pt, block_jx = (TVBottleneck, BottleneckResNetBlock) if bottleneck else (TVBasicBlock, ResNetBlock)
    net_pt = _randomise(TVResNet(block_pt, stages, width=4), 4)
    x_pt, x_jx = _inputs(4, shape=(2, 3, 32, 32))
    net = ResNet(stage_sizes=stages, block_cls=block_jx, num_filters=4)
    template = jax.eval_shape(net.init, jax.random.key(0), x_jx)
    rename = torchvision_resnet_rename(stages, bottleneck=bottleneck)
    variables = torch_to_flax(net_pt.state_dict(), rename, template=template)
    out = jax.jit(net.apply)(variables, x_jx)
    assert out.shape == (2, 4, 4, net.out_channels)
    _close(out, net_pt.features(x_pt).permute(0, 2, 3, 1))


# ---- the benchmark's PyTorch twin of the main-job classifier (benchmarks/torch_models.py) -------------


def _main_job_flax_model():
    """The classifier `attn-jax train --config experiments/configs/classification.py` builds (no BN sync)."""
    from attn_jax.data.pipeline import DatasetMeta
    from attn_jax.train.tasks import make_task
    from tests._train_models import load_experiment_config

    config = load_experiment_config("classification", "spatial")
    meta = DatasetMeta("cluttered_digits", "classification", 10, (64, 64, 1), None, (0.0,), (1.0,))
    return config, make_task(config, meta).build_model(bn_axis_name=None)


@pytest.mark.parametrize("train", [False, True])
def test_benchmark_twin_is_the_main_job_classifier(train):
    from benchmarks.torch_models import TorchClassifier, twin_rename

    config, model = _main_job_flax_model()
    twin = TorchClassifier(config.model.features, config.model.stride, num_classes=10, in_channels=1)
    twin = _randomise(twin, 5).train(train)
    # the twin's head is the verbatim reference head: same output with the same weights
    reference = SeedAttentionClassifier(twin.backbone, num_classes=10)
    reference.load_state_dict(twin.state_dict())
    x_pt, x_jx = _inputs(5, shape=(4, 1, 64, 64))
    template = jax.eval_shape(model.init, jax.random.key(0), x_jx)
    variables = torch_to_flax(twin.state_dict(), twin_rename(twin), template=template)
    with torch.no_grad():
        out_pt = twin(x_pt)
        _close(reference.train(train)(x_pt), out_pt)
    if train:  # batch statistics, as in the training step
        out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x_jx)
    else:
        out = jax.jit(model.apply)(variables, x_jx)
    assert out.shape == (4, 10)
    _close(out, out_pt)
