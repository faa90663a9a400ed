"""pcnet.experiments.models: backbone shapes, PCoder layer paths, reference-weight loaders."""
import pytest
import torch
from torch import nn

import pcnet
import pcnet.experiments.data as data
from pcnet.experiments import models
from pcnet.experiments.weights import save_weights


def _call_order(model, x):
    """Dotted names of the leaf modules in the order the forward pass calls them."""
    order, hooks = [], []
    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: order.append((name, o.shape))))
    model(x)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_output_shape(in_channels, size):
    model = models.fmnist_vgg(in_channels=in_channels).eval()
    assert model(torch.rand(2, in_channels, size, size)).shape == (2, 10)
    assert models.fmnist_vgg(num_classes=7)(torch.rand(2, 1, 28, 28)).shape == (2, 7)


def test_pcoder_layers_are_block_ends_in_forward_order():
    model = models.fmnist_vgg().eval()
    order = _call_order(model, torch.rand(1, 1, 28, 28))
    names = [n for n, _ in order]
    modules = dict(model.named_modules())
    positions = [names.index(layer) for layer in models.FMNIST_VGG_LAYERS]
    assert positions == sorted(positions)
    shapes = []
    for layer, pos in zip(models.FMNIST_VGG_LAYERS, positions):
        assert isinstance(modules[layer], nn.ReLU)
        assert isinstance(modules[names[pos + 1]], nn.MaxPool2d)  # the block ends here
        shapes.append(tuple(order[pos][1][1:]))
    assert shapes == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]
    # every max-pool (block end) is preceded by one of the layers: no block left without a PCoder
    pools = [i for i, n in enumerate(names) if isinstance(modules[n], nn.MaxPool2d)]
    assert [names[i - 1] for i in pools] == models.FMNIST_VGG_LAYERS


def test_summary_counts_by_hand():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 5, 7))
    rows = models.summary(model, input_shape=(2, 4, 5))
    assert [r["name"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["output_shape"] == (3, 4, 5) and rows[3]["output_shape"] == (7,)
    assert rows[0]["macs"] == 3 * 4 * 5 * (2 * 3 * 3)  # every output value: C_in * kh * kw products
    assert rows[3]["macs"] == 60 * 7 and rows[1]["macs"] == 0
    assert rows[0]["params"] == 3 * 2 * 9 + 3 and model.training  # mode restored
    fmnist = models.summary(models.fmnist_vgg(), input_shape=(1, 28, 28))
    assert sum(r["params"] for r in fmnist) == sum(p.numel() for p in models.fmnist_vgg().parameters())


def test_build_backbone_unknown_name():
    with pytest.raises(ValueError, match="fmnist_vgg"):
        models.build_backbone("resnet")


def test_missing_reference_weights_name_the_fix(data_dir):
    with pytest.raises(FileNotFoundError, match="python -m pcnet.experiments.train backbone.*TRAIN=True"):
        models.load_reference_backbone()
    torch.manual_seed(0)
    save_weights(models.reference_weights_path(), models.fmnist_vgg().state_dict(), command="test", seed=0)
    with pytest.raises(FileNotFoundError, match="python -m pcnet.experiments.train feedback --name fmnist_vgg --seed 2"):
        models.load_reference_prednet(seed=2)


def test_corrupt_reference_weights_name_the_fix(data_dir):
    path = models.reference_weights_path()
    save_weights(path, models.fmnist_vgg().state_dict(), command="test", seed=0)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(RuntimeError, match="sha256.*python -m pcnet.experiments.train backbone"):
        models.load_reference_backbone()


def test_loaders_round_trip(data_dir):
    torch.manual_seed(0)
    backbone = models.fmnist_vgg()
    backbone(torch.rand(8, 1, 28, 28))  # train mode: moves the BatchNorm running statistics
    save_weights(models.reference_weights_path(), backbone.state_dict(), command="test", seed=0)
    loaded = models.load_reference_backbone()
    assert not loaded.training
    for key, value in backbone.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    net = pcnet.predify(backbone, layers=models.FMNIST_VGG_LAYERS, input_shape=(1, 28, 28))
    save_weights(models.feedback_weights_path(seed=1), net.decoders.state_dict(), command="test", seed=1)
    loaded_net = models.load_reference_prednet(seed=1, beta=0.7)
    for key, value in net.decoders.state_dict().items():
        assert torch.equal(loaded_net.decoders.state_dict()[key], value), key
    assert torch.allclose(loaded_net.hparams()["beta"], torch.tensor(0.7, dtype=loaded_net.hparams()["beta"].dtype))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded_net(x, timesteps=0)[0], loaded(x))  # t = 0 is the backbone


@pytest.mark.skipif(not models.reference_weights_path().exists(), reason="reference weights not committed")
def test_committed_backbone_is_accurate():
    """The committed weights load (sha256-checked) and classify real test images well."""
    test = data.fashion_mnist(split="test")
    x, y = test.tensors[0][:1000], test.tensors[1][:1000]
    with torch.no_grad():
        accuracy = (models.load_reference_backbone()(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
