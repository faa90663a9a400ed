"""Every bad input gets a clear error naming the fix, and leaves the user's model as it was."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import pcnet
import pcnet.experiments.models
from tiny import small_cnn, small_prednet


@pytest.fixture
def model():
    torch.manual_seed(0)
    return small_cnn().train()  # training mode, to check that a failed predify restores it


@pytest.fixture
def net():
    return small_prednet()


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


# ---------------------------------------------------------------------------------------------
# Issue 11: bad inputs that used to crash without naming the fix, or gave a silently wrong result

class TupleDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.up(x), None  # (prediction, extra): not one tensor


@pytest.mark.parametrize("kwargs,error,message", [
    ({"input_shape": (1, 2, 2)}, ValueError, r"cannot run on input_shape=\(1, 2, 2\).*Output size is too small"),
    ({"input_shape": (1, -16, 16)}, ValueError, r"three positive integers, got \(1, -16, 16\)"),
    ({"input_shape": (1, 0, 16)}, ValueError, r"three positive integers, got \(1, 0, 16\)"),
    ({"input_shape": (1, 16.5, 16)}, ValueError, r"three positive integers, got \(1, 16.5, 16\)"),
    ({"input_shape": "1,16,16"}, ValueError, r"three positive integers, got '1,16,16'"),
    ({"input_shape": (3, 16, 16)}, ValueError, r"cannot run on input_shape=\(3, 16, 16\).*channels"),
    ({"layers": ["1", "7"]}, ValueError, r"layer '7' outputs shape \(2, 3\).*not Linear or Flatten"),
    ({"layers": ["1", "6"]}, ValueError, r"layer '6' outputs shape \(2, 96\).*convolutional layer"),
    ({"beta": "0.8"}, TypeError, r"beta must be a number.*got '0.8'"),
    ({"beta": None}, TypeError, r"beta must be a number.*got None"),
    ({"learnable": "no"}, TypeError, r"learnable must be True or False, got 'no'"),
    ({"layers": ["1"], "decoders": [TupleDecoder()]}, TypeError, r"decoder 0 returns tuple, not one tensor"),
    ({"layers": ["1"], "decoders": [nn.Sequential(nn.ConvTranspose2d(4, 1, 3, padding=1)).to("meta")]}, ValueError,
     r"decoder 0 has parameters on the meta device.*to_empty"),
])
def test_predify_bad_arguments_name_the_fix(model, kwargs, error, message):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=message):
        pcnet.predify(model, **{"layers": ["1", "4"], "input_shape": (1, 16, 16), **kwargs})
    assert unchanged(model, before)


def test_model_on_meta_device_and_prednet_are_refused():
    with pytest.raises(ValueError, match=r"model has parameters on the meta device.*to_empty"):
        pcnet.predify(small_cnn().to("meta"), layers=["1"], input_shape=(1, 16, 16))
    net = pcnet.predify(small_cnn(), layers=["1"], input_shape=(1, 16, 16))
    with pytest.raises(TypeError, match=r"already a PredNet.*predify\(net.backbone"):
        pcnet.predify(net, layers=["backbone.1"], input_shape=(1, 16, 16))


@pytest.mark.parametrize("x,message", [
    (torch.rand(0, 1, 16, 16), r"empty batch.*at least one image"),
    (torch.full((2, 1, 16, 16), float("nan")), r"512 NaN or infinite values.*nan_to_num"),
    (torch.rand(2, 1, 16, 16).index_fill_(0, torch.tensor([1]), float("inf")), r"256 NaN or infinite"),
])
def test_empty_or_non_finite_batches_are_refused(net, x, message):
    for call in (lambda: net(x, timesteps=1), lambda: pcnet.feedback_loss(net, x)):
        with pytest.raises(ValueError, match=message):
            call()


def test_load_state_dict_validates_hyperparameters(net):
    state = net.state_dict()
    state["hyper.beta"] = torch.tensor([1.5, 1.5], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"hyperparameters in the state dict are invalid: beta \+ lam must be <= 1"):
        net.load_state_dict(state)
    assert net.hparams()["beta"].tolist() == pytest.approx([0.8, 0.8])  # unchanged
    learnable = pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16), learnable=True)
    state = learnable.state_dict()
    state["hyper.log_alpha"] = torch.tensor([float("nan"), 0.0])
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        learnable.load_state_dict(state)


@pytest.mark.parametrize("learnable", [False, True])
def test_low_precision_cast_keeps_hyperparameters_and_fields(learnable):
    torch.manual_seed(0)
    net = pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16), beta=0.3, lam=0.123456789,
                        alpha=0.0123456789, learnable=learnable)
    before, fields = net.hparams(), net.projective_fields.clone()
    net.to(torch.bfloat16)
    assert next(net.decoders.parameters()).dtype == torch.bfloat16  # the rest follows the cast
    after = net.hparams()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-exact: no rounding to bfloat16
    assert torch.equal(net.projective_fields, fields) and net.projective_fields.dtype == torch.float64
    with torch.no_grad():
        assert net(torch.rand(2, 1, 16, 16, dtype=torch.bfloat16), timesteps=1).dtype == torch.bfloat16
