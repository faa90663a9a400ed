"""Issue 20, the library-side classes: every bad input gets the right result or a clear error naming the fix."""
import pytest
import torch
from torch.utils.data import TensorDataset

import pcnet
from pcnet.experiments import evaluate, models
from tiny import small_cnn, small_prednet


# --------------------------------------------------------------------------- half precision
def test_fp16_dynamics_on_a_large_batch_agree_with_float32():
    """The finiteness check summed in fp16 and overflowed 65504 on a batch of small states (a false
    FloatingPointError); it sums in float32 now. Tolerance as stated in PredNet's docstring."""
    torch.manual_seed(0)
    net = models.pshallow_cifar()
    with torch.no_grad():
        net.backbone[-1].weight.mul_(30)  # logits of order 1, so that top-1 agreement means something
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # (64, 3, 32, 32)
    with torch.no_grad():
        ref = net(x, timesteps=5)  # (6, 64, 10) float32
        labels = ref[0].argmax(-1)  # (64,)
        amp = evaluate.evaluate_dynamics(net, TensorDataset(x, labels), timesteps=5, precision="fp16",
                                         batch_size=64, progress=False)
        half = net.half()
        states, _ = half.feedforward(x.half())
        assert not torch.isfinite(states[0].sum())  # the old check's sum overflows: this batch would have failed
        logits = half(x.half(), timesteps=5)  # (6, 64, 10) float16
    assert logits.dtype == torch.float16
    agreement = (logits.argmax(-1) == ref.argmax(-1)).float().mean(-1)  # (6,)
    assert (agreement >= 0.95).all(), agreement
    assert (logits.float() - ref).abs().max() <= 0.01 * ref.abs().max()
    assert (amp.correct.float().mean(1) >= 0.95).all()  # autocast fp16: >= 95 % agree with float32 t = 0 top-1


# --------------------------------------------------------------------------- labels: shape (N,), checked where they enter
def _column_label_data():
    """4 images, a classifier that gets every one right, labels as a column (4, 1)."""
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1])

    class Oracle(torch.nn.Module):  # logits that pick the label of each image, by its index in this batch
        def forward(self, images):
            index = torch.stack([torch.nonzero((x == im).flatten(1).all(1))[0, 0] for im in images])
            return torch.nn.functional.one_hot(labels[index], 3).float()  # (B, 3)
    return x, labels, Oracle()


def test_column_labels_are_squeezed_not_broadcast():
    """Labels (N, 1) broadcast against predictions (N,) gave 0.375 instead of 1.0; now they are squeezed."""
    from pcnet.experiments import metrics
    x, labels, oracle = _column_label_data()
    logits = oracle(x)  # (4, 3)
    assert metrics.accuracy_per_timestep(logits, labels[:, None]) == 1.0
    assert metrics.accuracy_per_timestep(torch.stack([logits, logits]), labels[:, None]).tolist() == [1.0, 1.0]
    assert metrics.correct_per_timestep(oracle, x, labels[:, None], batch_size=3).all()
    column = TensorDataset(x, labels[:, None])
    assert evaluate.correct_of(oracle, column, batch_size=3, progress=False).tolist() == [True] * 4
    net = small_prednet()
    with torch.no_grad():
        predicted = net(x)[0].argmax(-1)  # (4,): labels the network gets right at t = 0
    result = evaluate.evaluate_dynamics(net, TensorDataset(x, predicted[:, None]), timesteps=0, batch_size=3,
                                        progress=False)
    assert result.correct.shape == (1, 4) and result.accuracy.tolist() == [1.0]


@pytest.mark.parametrize("labels, error, message", [
    (torch.zeros(4, 3, dtype=torch.long), ValueError, r"shape \(N,\).*labels.argmax\(1\)"),
    (torch.zeros(4, 1, 1, dtype=torch.long), ValueError, r"shape \(N,\).*labels.flatten\(\)"),
    (torch.zeros(4), TypeError, r"integer class indices, got dtype torch.float32; convert with labels.long\(\)"),
    (torch.zeros(3, dtype=torch.long), ValueError, r"3 entries for 4 images"),
    ("cats", TypeError, "class indices"),
])
def test_bad_labels_are_refused_where_they_enter(labels, error, message):
    from pcnet.experiments import metrics
    x, _, oracle = _column_label_data()
    with pytest.raises(error, match=message):
        metrics.accuracy_per_timestep(oracle(x), labels)
    with pytest.raises(error, match=message):
        metrics.correct_per_timestep(oracle, x, labels)


def test_labels_from_numpy_work():
    from pcnet.experiments import metrics
    x, labels, oracle = _column_label_data()
    assert metrics.accuracy_per_timestep(oracle(x), labels.numpy()) == 1.0


# --------------------------------------------------------------------------- decoders that change their input in place
def _states_can_be_negative_prednet(inplace):
    """small_cnn with PCoders at its two convolutions (states of both signs), decoders beginning with a ReLU."""
    from torch import nn
    torch.manual_seed(0)
    decoders = [nn.Sequential(nn.ReLU(inplace=inplace), nn.ConvTranspose2d(4, 1, 3, padding=1)),
                nn.Sequential(nn.ReLU(inplace=inplace), nn.Upsample(scale_factor=2), nn.ConvTranspose2d(6, 4, 3, padding=1))]
    return pcnet.predify(small_cnn(), layers=["0", "3"], input_shape=(1, 16, 16), decoders=decoders, alpha=0.05)


def test_in_place_decoder_gives_the_same_logits_as_out_of_place():
    """A decoder beginning with ReLU(inplace=True) rewrote e_n: logits differed by 7.5e-2 (grad mode) and 2.7e-3
    (fast path), the feedback loss of layer 2 halved. predify now gives it a copy of the state."""
    inplace, plain = _states_can_be_negative_prednet(True), _states_can_be_negative_prednet(False)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))  # (3, 1, 16, 16)
    with torch.no_grad():
        assert (plain.feedforward(x)[0][0] < 0).any()  # the ReLU does change the state if it acts in place
        assert torch.equal(inplace(x, timesteps=4), plain(x, timesteps=4))  # the fast path (adjoint decoders)
        assert torch.equal(inplace(x, timesteps=4, reference=True), plain(x, timesteps=4, reference=True))
    assert torch.allclose(inplace(x, timesteps=4), plain(x, timesteps=4), atol=1e-6, rtol=0)  # grad mode
    assert torch.equal(pcnet.feedback_loss(inplace, x)[1], pcnet.feedback_loss(plain, x)[1])
    errors = [n.run(x, timesteps=2, record=("errors",)).errors for n in (inplace, plain)]
    assert torch.allclose(*errors, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- a backbone that skips a PCoder module
class _Branchy(torch.nn.Module):
    """Runs its second block only when the batch mean is below 0.5 (a branch that depends on the input)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))

    def forward(self, x):
        h = torch.relu(self.a(x))
        if float(x.mean()) < 0.5:
            h = torch.relu(self.b(h))
        return self.head(h)


@pytest.mark.parametrize("grad", [True, False])
def test_a_skipped_pcoder_layer_is_named(grad):
    """Grad mode silently ran no dynamics (t = T equal to t = 0), no-grad crashed obscurely."""
    torch.manual_seed(0)
    net = pcnet.predify(_Branchy(), layers=["a", "b"], input_shape=(1, 8, 8))  # the probe's randn has mean < 0.5
    x = torch.rand(2, 1, 8, 8) * 0.2 + 0.8  # mean > 0.5: the forward skips layer "b"
    with torch.set_grad_enabled(grad), pytest.raises(RuntimeError, match=r"layer 'b' did not run in this forward "
                                                                         r"pass.*modules that run in every forward"):
        net(x, timesteps=2)
    with torch.set_grad_enabled(grad):
        assert net(x * 0.2, timesteps=2).shape == (3, 2, 3)  # the branch taken: runs


def test_a_skipped_first_layer_is_named_not_called_out_of_order():
    class SkipFirst(_Branchy):
        def forward(self, x):
            h = torch.relu(self.a(x)) if float(x.mean()) < 0.5 else x.expand(-1, 4, -1, -1)
            return self.head(torch.relu(self.b(h)))
    torch.manual_seed(0)
    net = pcnet.predify(SkipFirst(), layers=["a", "b"], input_shape=(1, 8, 8))
    with torch.no_grad(), pytest.raises(RuntimeError, match="layer 'a' did not run"):
        net(torch.ones(2, 1, 8, 8), timesteps=1)


# --------------------------------------------------------------------------- load_state_dict validates before loading
@pytest.mark.parametrize("strict", [True, False])
def test_invalid_hyperparameters_load_nothing(strict):
    net, other = small_prednet(), small_prednet()
    with torch.no_grad():
        for p in other.decoders.parameters():
            p.add_(1.0)  # decoders that differ from net's
    state = other.state_dict()
    state["hyper.beta"] = torch.tensor([1.5, 1.5], dtype=torch.float64)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"beta \+ lam must be <= 1.*nothing was loaded"):
        net.load_state_dict(state, strict=strict)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # decoders unchanged too
    del state["hyper.beta"]
    state["hyper.lam"] = torch.tensor([0.1, 0.0], dtype=torch.float64)
    net.load_state_dict(state, strict=False)  # a valid partial state dict still loads (beta missing: not checked)
    assert torch.equal(net.decoders[0][-1].weight, other.decoders[0][-1].weight)


# --------------------------------------------------------------------------- models and decoders of other shapes
@pytest.mark.parametrize("wrap, kind", [(lambda out: (out, out), "tuple"), (lambda out: {"logits": out}, "dict")])
def test_model_returning_a_tuple_or_dict_is_refused_at_predify(wrap, kind):
    class Multi(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()

        def forward(self, x):
            return wrap(self.net(x))
    with pytest.raises(TypeError, match=rf"forward returns a {kind}, not one tensor of logits.*wrap it"):
        pcnet.predify(Multi(), layers=["net.1", "net.4"], input_shape=(1, 16, 16))


def test_same_padding_decoder_works_without_gradients():
    """Conv2d(padding="same") had no adjoint (it failed without gradients); autograd computes its gradient now."""
    from torch import nn
    torch.manual_seed(0)
    decoders = [nn.Sequential(nn.Conv2d(4, 1, 3, padding="same")),
                nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(6, 4, 3, padding="same"), nn.ReLU())]
    net = pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16), decoders=decoders, alpha=0.05)
    twin = pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16), alpha=0.05,
                         decoders=[nn.Sequential(nn.Conv2d(4, 1, 3, padding=1)),
                                   nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU())])
    twin.load_state_dict(net.state_dict())  # padding=1 is "same" for a 3x3 kernel: the same map
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = net(x, timesteps=3)
        assert torch.allclose(fast, twin(x, timesteps=3), atol=1e-6, rtol=0)  # the twin uses the adjoint
    assert torch.allclose(fast, net(x, timesteps=3), atol=1e-6, rtol=0)  # grad mode


def test_absurd_timesteps_are_refused_before_allocating():
    net = small_prednet()
    with pytest.raises(ValueError, match=r"timesteps=1000000000000 is above the limit .*MAX_TIMESTEPS = 100000"):
        net(torch.rand(1, 1, 16, 16), timesteps=10 ** 12)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_backbone_is_refused_in_grad_mode_and_runs_without(reentrant):
    """torch.utils.checkpoint recomputes the forward in backward without the PCoder's update: a CheckpointError
    (non-reentrant) or wrong gradients (reentrant). Grad mode is refused with the reason; no-grad runs."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()

        def forward(self, x):
            return self.net[3:](checkpoint(self.net[:3], x, use_reentrant=reentrant))

    torch.manual_seed(0)
    net = pcnet.predify(Checkpointed(), layers=["net.1", "net.4"], input_shape=(1, 16, 16))
    plain = pcnet.predify(net.backbone.net, layers=["1", "4"], input_shape=(1, 16, 16))
    plain.decoders.load_state_dict(net.decoders.state_dict())
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match=r"layer 'net.1' runs inside torch.utils.checkpoint.*torch.no_grad\(\)"):
        net(x, timesteps=2)
    with torch.no_grad():
        assert torch.equal(net(x, timesteps=2), plain(x, timesteps=2))


# --------------------------------------------------------------------------- optional dependencies: one helper
@pytest.mark.parametrize("module, call, command", [
    ("torchattacks", lambda: __import__("pcnet.experiments.attacks").experiments.attacks.make_attack(
        "pgd", small_cnn(), eps=0.1), "pip install --no-deps torchattacks"),
    ("seaborn", lambda: __import__("pcnet.experiments.plotting").experiments.plotting.use_style(),
     'pip install "pcnet[book]"'),
    ("timm", lambda: models.pefficientnet_b0(backend="timm", image_size=32), 'pip install "pcnet[timm]"'),
    ("scipy.stats", lambda: __import__("pcnet.experiments.stats").experiments.stats.mcnemar_exact(3, 4),
     'pip install "pcnet[book]"'),
    ("pandas", lambda: evaluate.terms_table({"memory": torch.zeros(1, 1)}, ["a"]), 'pip install "pcnet[book]"'),
])
def test_missing_optional_module_names_the_install_command(monkeypatch, module, call, command):
    monkeypatch.setitem(__import__("sys").modules, module, None)  # import of it now fails as if not installed
    with pytest.raises(ModuleNotFoundError, match=rf"needs the optional package '{module.split('.')[0]}'.*"
                                                  rf"install it with: {__import__('re').escape(command)}"):
        call()


def test_pgd_needs_no_optional_module(monkeypatch):
    from pcnet.experiments import attacks
    monkeypatch.setitem(__import__("sys").modules, "torchattacks", None)
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 1])
    adv, curve = attacks.pgd(small_cnn(), x, y, eps=0.05, steps=2)
    assert adv.shape == x.shape and curve.shape == (3,)


def test_require_keeps_a_missing_dependency_of_an_installed_module(monkeypatch):
    """The package is there but one of its own imports is not: the original error, naming that one, stays."""
    from pcnet.experiments.optional import require
    err = ModuleNotFoundError("No module named 'inner'", name="inner")
    monkeypatch.setattr("importlib.import_module", lambda name: (_ for _ in ()).throw(err))
    with pytest.raises(ModuleNotFoundError, match="No module named 'inner'"):
        require("seaborn", purpose="a test")


# --------------------------------------------------------------------------- statistics on degenerate input
def test_verdict_with_a_nan_p_or_infinite_estimate_is_refused():
    from pcnet.experiments.verdicts import Verdict
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got nan"):
        Verdict("c", 10, 1.0, 0.5, 1.5, 1.0, "t", float("nan"))  # it read "gain" (NaN > alpha is False)
    with pytest.raises(ValueError, match=r"p_holm must be a probability"):
        Verdict("c", 10, 1.0, 0.5, 1.5, 1.0, "t", 0.01, p_holm=1.5)
    with pytest.raises(ValueError, match="estimate and interval must be finite"):
        Verdict("c", 10, float("inf"), 0.0, float("nan"), 1.0, "t", 0.01)
    assert Verdict("c", 10, 1.0, 0.5, 1.5, 1.0, "t", 0.01).effect == "gain"  # a valid one still decides


def test_bootstrap_refuses_a_nan_null_and_infinite_scores():
    from pcnet.experiments import verdicts
    scores = torch.linspace(0, 1, 20)
    with pytest.raises(ValueError, match=r"null must be a finite number.*got nan"):
        verdicts.bootstrap_verdict(lambda s: s.mean(-1), scores, contrast="x", null=float("nan"), n_boot=50)
    with pytest.raises(ValueError, match=r"sample 0 has 1 NaN or infinite values; drop those images"):
        verdicts.bootstrap_verdict(lambda s: s.mean(-1), torch.cat([scores[:-1], torch.tensor([float("inf")])]),
                                   contrast="x", n_boot=50)  # printed "+inf [+0.000, +nan] ... below nan"
    numpy_result = verdicts.bootstrap_verdict(lambda s: s.mean(-1), scores.numpy(), contrast="x", n_boot=50)
    assert numpy_result.estimate == pytest.approx(0.5)  # a numpy array where a tensor is expected works


@pytest.mark.parametrize("call, error, message", [
    (lambda S: S.mcnemar_exact(float("nan"), 3), ValueError, r"n10 must be an integer >= 0 \(a count\), got nan"),
    (lambda S: S.mcnemar_exact("3", 3), ValueError, r"n10 must be an integer >= 0 \(a count\), got '3'"),
    (lambda S: S.paired_counts(["yes", "no"], [1, 0]), TypeError, r"a must be numbers .* got list of str"),
    (lambda S: S.proportion_interval("1101"), TypeError, r"correct must be numbers .* got a string '1101'"),
    (lambda S: S.holm("0.01"), TypeError, r"holm: p_values must be numbers"),
    (lambda S: S.proportion_interval([1, 0], confidence="0.95"), ValueError, "confidence must lie strictly between"),
])
def test_statistics_on_wrong_types_name_the_problem(call, error, message):
    from pcnet.experiments import stats
    with pytest.raises(error, match=message):
        call(stats)


def test_statistics_accept_integral_floats_and_numpy():
    import numpy as np
    from pcnet.experiments import stats
    assert stats.mcnemar_exact(3.0, 4) == stats.mcnemar_exact(3, 4) == stats.mcnemar_exact(np.int64(3), 4)
    assert stats.paired_counts(np.array([True, False, True]), np.array([1, 1, 0])) == (1, 1, 1, 0)


def test_worst_case_and_pgd_on_degenerate_input():
    from pcnet.experiments import attacks
    with pytest.raises(ValueError, match="worst_case needs .* for at least one attack, got {}"):
        attacks.worst_case({})
    with pytest.raises(ValueError, match=r"bool tensor \(N,\) .* on the same samples"):
        attacks.worst_case({"a": torch.tensor([True, False]), "b": torch.tensor([True])})
    import numpy as np
    robust, strongest = attacks.worst_case({"a": np.array([True, False]), "b": torch.tensor([False, True])})
    assert robust.tolist() == [False, False] and strongest == ["a", "b"]
    torch.manual_seed(0)
    model, x, y = small_cnn(), torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 2])
    adv, curve = attacks.pgd(model, x, y, eps=0.1, steps=0)  # was ZeroDivisionError: now no attack, clean accuracy
    with torch.no_grad():
        clean = (model(x).argmax(-1) == y).float().mean()
    assert torch.equal(adv, x) and curve.tolist() == [pytest.approx(float(clean))]
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        attacks.pgd(model, x, y, eps=0.1, steps=-1)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        attacks.pgd(model, x, y, eps=float("nan"))


# --------------------------------------------------------------------------- inputs checked where they enter
def _gray(n=3):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # (n, 1, 16, 16) in [0, 1]


@pytest.mark.parametrize("images, error, message", [
    (_gray().index_put((torch.tensor([0]), torch.tensor([0]), torch.tensor([3]), torch.tensor([4])),
                       torch.tensor(float("nan"))), ValueError, r"1 NaN or infinite pixels; replace them"),
    ((_gray() > 0.5).to(torch.uint8), TypeError, r"dtype torch.uint8; convert with images.float\(\) / 255"),
    (_gray().numpy(), TypeError, r"torch.from_numpy"),
    (_gray() * 2, ValueError, r"must lie in \[0, 1\]"),
])
def test_corrupt_and_the_cache_check_images_where_they_enter(tmp_path, images, error, message):
    """A NaN pixel passed the min/max check (NaN images out, black in the cache); uint8 {0, 1} images came out zero."""
    from pcnet.experiments import corruptions
    with pytest.raises(error, match=message):
        corruptions.corrupt(images, name="contrast", severity=1)
    with pytest.raises(error, match=message):
        corruptions.corrupted_set(images, torch.zeros(3, dtype=torch.long), names=["contrast"], cache_dir=tmp_path,
                                  progress=False)
    assert not any(tmp_path.iterdir())  # nothing cached


@pytest.mark.parametrize("kwargs, message", [
    ({"names": "contrast"}, r"got the string 'contrast' \(it would be read letter by letter\); pass names=\['contrast'\]"),
    ({"names": ()}, "at least one entry"),
    ({"names": ["contrast"], "severities": (3.0,)}, r"severity must be an integer in 1..5, got 3.0; pass int"),
])
def test_corruption_names_and_severities_are_checked(tmp_path, kwargs, message):
    from pcnet.experiments import corruptions
    with pytest.raises(ValueError, match=message):
        corruptions.corrupted_set(_gray(), torch.zeros(3, dtype=torch.long), cache_dir=tmp_path, progress=False,
                                  **kwargs)
    with pytest.raises(ValueError, match=message):
        corruptions.load_cifar10_c(tmp_path, **kwargs)


def test_corrupt_severity_must_be_an_integer():
    import numpy as np
    from pcnet.experiments import corruptions
    with pytest.raises(ValueError, match=r"got 3.0; pass int\(severity\)"):
        corruptions.corrupt(_gray(), name="contrast", severity=3.0)  # was a TypeError deep inside
    assert torch.equal(corruptions.corrupt(_gray(), name="contrast", severity=np.int64(3)),
                       corruptions.corrupt(_gray(), name="contrast", severity=3))


def test_stratified_subset_needs_a_positive_count():
    from pcnet.experiments import corruptions
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    for bad in (-1, 0, 1.5, True):  # -1 kept all but one image per class
        with pytest.raises(ValueError, match=r"per_class must be an integer >= 1"):
            corruptions.stratified_subset(labels, per_class=bad)
    picked = corruptions.stratified_subset(labels[:, None], per_class=1)  # a column of labels is squeezed
    assert labels[picked].tolist() == [0, 1, 2]


def test_rescaled_forward_refuses_a_nan_scale():
    net = small_prednet()
    with pytest.raises(ValueError, match=r"scale must be finite, got \[nan, nan\]"):
        pcnet.rescaled_forward(net, torch.rand(2, 1, 16, 16), scale=float("nan"))  # returned NaN logits


@pytest.mark.parametrize("module, call", [
    ("imagecorruptions.corruptions", lambda: __import__("pcnet.experiments.corruptions").experiments.corruptions.corrupt(
        _gray(), name="fog", severity=1)),
    ("matplotlib.pyplot", lambda: __import__("pcnet.experiments.plotting").experiments.plotting.show_images(_gray())),
    ("pandas", lambda: __import__("pcnet.experiments.tuning").experiments.tuning.GridResult(
        rows=[], best={}, best_score=0.0).table()),
])
def test_every_lazy_optional_import_goes_through_require(monkeypatch, module, call):
    monkeypatch.setitem(__import__("sys").modules, module, None)
    with pytest.raises(ModuleNotFoundError, match=r'install it with: pip install "pcnet\[book\]"'):
        call()


def test_noise_helpers_check_finiteness_and_type():
    x = _gray()
    x[0, 0, 0, 0] = float("nan")
    for noise in (lambda x: evaluate.gaussian_noise(x, sigma=0.1), lambda x: evaluate.salt_pepper(x, amount=0.1)):
        with pytest.raises(ValueError, match="1 NaN or infinite pixels"):
            noise(x)
        with pytest.raises(TypeError, match=r"got ndarray; convert with torch.as_tensor"):
            noise(_gray().numpy())


def test_invalid_hyperparameters_load_nothing_through_a_holding_module():
    holder, other = torch.nn.Sequential(small_prednet()), small_prednet()
    with torch.no_grad():
        for p in other.decoders.parameters():
            p.add_(1.0)
    state = {"0." + k: v for k, v in other.state_dict().items()}
    state["0.hyper.lam"] = torch.tensor([0.5, 0.0], dtype=torch.float64)
    state["0.hyper.beta"] = torch.tensor([0.9, 0.9], dtype=torch.float64)
    before = {k: v.clone() for k, v in holder.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"beta \+ lam must be <= 1.*nothing was loaded"):
        holder.load_state_dict(state, strict=False)
    assert all(torch.equal(before[k], v) for k, v in holder.state_dict().items())


def test_corruptions_module_without_its_extras_names_the_install_command(monkeypatch):
    import importlib
    import sys
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.delitem(sys.modules, "pcnet.experiments.corruptions", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"corruptions needs the optional package 'cv2'.*pcnet\[book\]"):
        importlib.import_module("pcnet.experiments.corruptions")
