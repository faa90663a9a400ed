"""Every bad input gets a clear error naming the fix, and leaves the user's model as it was."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import pcnet


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 16, 3))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return small_cnn().train()  # training mode, to check that a failed predify restores it


@pytest.fixture
def net():
    torch.manual_seed(0)
    return pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16))


def unchanged(model, before):
    return (model.training and all(not m._forward_hooks for m in model.modules())
            and all(torch.equal(before[k], v) for k, v in model.state_dict().items()))


def test_unknown_module_path_suggests_near_matches(model):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"unknown module path 'featres\.6'; did you mean \['features\.6'"):
        pcnet.predify(torchvision.models.vgg11(), layers=["features.3", "featres.6"], input_shape=(3, 32, 32))
    with pytest.raises(ValueError, match=r"unknown module path '14'"):
        pcnet.predify(model, layers=["1", "14"], input_shape=(1, 16, 16))
    assert unchanged(model, before)


def test_layers_must_be_a_list(model):
    with pytest.raises(ValueError, match="non-empty list"):
        pcnet.predify(model, layers="1", input_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="non-empty list"):
        pcnet.predify(model, layers=[], input_shape=(1, 16, 16))


def test_shared_module_that_runs_twice_is_refused():
    model = torchvision.models.resnet18().train()
    with pytest.raises(ValueError, match=r"'layer1\.0\.relu' runs 2 times.*'layer1\.0'"):
        pcnet.predify(model, layers=["layer1.0.relu"], input_shape=(3, 32, 32))
    assert model.training and all(not m._forward_hooks for m in model.modules())


def test_output_changed_in_place_later_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 64, 2)).train()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"output of layer '0' is changed in place.*ReLU\(inplace=True\).*inplace=False"):
        pcnet.predify(model, layers=["0"], input_shape=(1, 8, 8))
    assert unchanged(model, before)
    pcnet.predify(model, layers=["1"], input_shape=(1, 8, 8))  # the in-place ReLU itself is fine


def test_layers_out_of_forward_order(model):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"forward order.*reaches them as \['1', '4'\]"):
        pcnet.predify(model, layers=["4", "1"], input_shape=(1, 16, 16))
    assert unchanged(model, before)


def test_decoder_with_wrong_output_shape(model):
    before = copy.deepcopy(model.state_dict())
    decoders = [nn.Sequential(nn.ConvTranspose2d(4, 1, 3, padding=1)),
                nn.Sequential(nn.ConvTranspose2d(6, 4, 3, padding=1))]  # 8x8 -> 8x8, but layer '1' is 16x16
    with pytest.raises(ValueError, match=r"decoder 1 .*'4'.* maps \(6, 8, 8\) to \(4, 8, 8\).*'1' has shape \(4, 16, 16\)"):
        pcnet.predify(model, layers=["1", "4"], input_shape=(1, 16, 16), decoders=decoders)
    with pytest.raises(ValueError, match="got 1 decoders for 2 layers"):
        pcnet.predify(model, layers=["1", "4"], input_shape=(1, 16, 16), decoders=decoders[:1])
    assert unchanged(model, before)


@pytest.mark.parametrize("kwargs,message", [
    ({"beta": -0.1}, r"beta must be >= 0"),
    ({"alpha": -1.0}, r"alpha must be >= 0"),
    ({"lam": -0.2}, r"lam must be >= 0"),
    ({"beta": 0.95, "lam": 0.1}, r"beta \+ lam must be <= 1"),
    ({"lam": [0.1, 0.1]}, r"top PCoder has no feedback"),
    ({"beta": [0.8, 0.8, 0.8]}, r"one value per PCoder \(2\)"),
    ({"alpha": float("nan")}, r"alpha must be finite"),
])
def test_hyperparameters_out_of_range(model, kwargs, message):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        pcnet.predify(model, layers=["1", "4"], input_shape=(1, 16, 16), **kwargs)
    assert unchanged(model, before)


def test_set_hparams_validates_and_keeps_old_values(net):
    old = net.hparams()
    with pytest.raises(ValueError, match=r"beta \+ lam must be <= 1"):
        net.set_hparams(beta=0.95)
    assert all(torch.equal(old[k], v) for k, v in net.hparams().items())
    net.set_hparams(alpha=[0.1, 0.2])
    assert net.hparams()["alpha"].tolist() == pytest.approx([0.1, 0.2])


def test_nan_in_states_names_layer_and_timestep(net):
    with torch.no_grad():
        net.decoders[1][1].weight[0, 0, 0, 0] = float("inf")  # poisons the error gradient of PCoder 1
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(FloatingPointError, match=r"PCoder 1 \('4'\) at timestep 1.*lower alpha"):
        with torch.no_grad():
            net(x, timesteps=3)


def test_divergent_dynamics_stop_with_a_clear_error():
    torch.manual_seed(0)
    net = pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16), beta=0.0, lam=0.0, alpha=1e30)
    with pytest.raises(FloatingPointError, match=r"PCoder \d \('\d'\) at timestep \d+"):
        with torch.no_grad():
            net(torch.rand(2, 1, 16, 16) * 1e6, timesteps=50)


@pytest.mark.parametrize("x,error,message", [
    (torch.rand(2, 1, 32, 32), ValueError, r"shape \(batch, 1, 16, 16\), got \(2, 1, 32, 32\).*resize"),
    (torch.rand(1, 16, 16), ValueError, r"shape \(batch, 1, 16, 16\)"),
    (torch.rand(2, 3, 16, 16), ValueError, r"shape \(batch, 1, 16, 16\)"),
    (torch.randint(0, 255, (2, 1, 16, 16), dtype=torch.uint8), TypeError, r"dtype torch.uint8.*torch.float32.*scaling"),
    (torch.rand(2, 1, 16, 16, dtype=torch.float64), TypeError, r"dtype torch.float64.*x.to\(torch.float32\)"),
    (torch.rand(2, 1, 16, 16, device="meta"), ValueError, r"on meta but the network is on cpu"),
    ([[0.0]], TypeError, r"must be a torch.Tensor"),
])
def test_bad_inputs(net, x, error, message):
    with pytest.raises(error, match=message):
        net(x, timesteps=1)


@pytest.mark.parametrize("kwargs,message", [
    ({"timesteps": -1}, "timesteps must be an integer >= 0"),
    ({"timesteps": 2.5}, "timesteps must be an integer >= 0"),
    ({"timesteps": 1, "feedback": "none"}, "feedback must be one of"),
    ({"timesteps": 1, "record": ("states", "gradients")}, r"cannot record \['gradients'\]"),
])
def test_bad_run_options(net, kwargs, message):
    with pytest.raises(ValueError, match=message):
        net.run(torch.rand(1, 1, 16, 16), **kwargs)


def test_hparam_parameters_need_learnable(net):
    with pytest.raises(ValueError, match="learnable=True"):
        net.hparam_parameters()


def test_bad_error_scale_and_model(model):
    with pytest.raises(ValueError, match="error_scale must be one of"):
        pcnet.predify(model, layers=["1"], input_shape=(1, 16, 16), error_scale="sum")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        pcnet.predify(lambda x: x, layers=["1"], input_shape=(1, 16, 16))
    with pytest.raises(ValueError, match=r"input_shape must be \(channels, height, width\)"):
        pcnet.predify(model, layers=["1"], input_shape=(16, 16))


def test_torchvision_weights_offline_error_names_the_fix(monkeypatch):
    """Weights need a download; offline, the error says what to do (simulated so the test never touches the net)."""
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"downloaded from the internet.*weights=None"):
        pcnet.experiments.models.presnet18(weights="DEFAULT", image_size=32)
