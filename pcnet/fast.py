"""The fast path: the dynamics of :class:`pcnet.core.PredNet` without gradients, computed with less work.

Same interface and the same numbers as the reference methods ``PredNet.predict`` / ``PredNet.step`` (to float
rounding; tests/test_fast_path.py), with three shortcuts:

* **F_1(x) computed once.** The image never changes, so neither does the first PCoder's feedforward drive. When
  the backbone is a chain of plain ``nn.Sequential`` down to the first PCoder (:func:`pcnet.wiring.sequential_suffix`),
  timesteps t >= 1 run only the modules after it.
* **The decoders' adjoints** give the error gradient without an autograd graph
  (:func:`pcnet.dynamics.error_gradient_adjoint`); other decoders fall back to autograd.
* **One workspace per call**: new states (two buffers per layer, alternating), decoder outputs and error signals
  are allocated once and reused by every timestep; on CPU, decoders with small kernels run channels-last
  (oneDNN's direct kernels; :func:`pcnet.decoders.prefers_channels_last`). Nothing is kept between calls.
"""
from __future__ import annotations

from . import decoders as dec
from . import dynamics, wiring


def run(net, x, *, steps: int, feedback: str, recorder) -> tuple[list, list]:
    """``net.run`` without gradients: returns the logits of t = 0..steps (each (B, K)) and the final states."""
    coef = net.coefficients()
    suffix = wiring.sequential_suffix(net.backbone, net.layers[0])  # None unless F_1(x) can be reused
    states, logit = net.feedforward(x)
    first_feedforward = states[0]  # F_1(e_0): the image never changes, so neither does this term
    workspace, logits = {}, [logit]
    for t in range(1, steps + 1):
        predictions, grads = predict(net, x, states, coef, t, always=recorder.wants_predictions, workspace=workspace)
        recorder.add_states(states)
        recorder.add_predictions(x, states, predictions, t - 1)
        states, logit = step(net, x, states, net.feedback_of(predictions, feedback), grads, coef, t, recorder,
                             suffix=suffix, first_feedforward=first_feedforward, workspace=workspace)
        logits.append(logit)
    return logits, states


def predict(net, x, states, coef, t, *, always, workspace):
    """:meth:`PredNet.predict` with the decoders' adjoints, reused buffers and channels-last copies."""
    predictions, grads = [], []
    layer_inputs = [x] + list(states)  # e_0 (the image), e_1, ..., e_N
    converted = {}  # index -> channels-last copy, made once per step

    def view(i, channels_last):  # e_i as decoder n reads it: channels-last where that is faster
        if not channels_last:
            return layer_inputs[i]
        if i not in converted:
            converted[i] = dec.to_channels_last(workspace, ("channels-last", i), layer_inputs[i])
        return converted[i]

    for n, decoder in enumerate(net.decoders):
        adjoint = dec.supports_adjoint(decoder)
        channels_last = adjoint and x.device.type == "cpu" and dec.prefers_channels_last(decoder)
        need_grad = net.needs_error(n, coef)
        need_pred = always or need_grad or net.needs_prediction(n, coef)
        state = view(n + 1, channels_last and need_pred)
        target = view(n, channels_last and need_grad)  # the image or the layer below: only the error needs it
        ws = workspace.setdefault(("decoder", n), {})
        pred = grad = None
        if need_grad and adjoint:
            pred, grad = dynamics.error_gradient_adjoint(decoder, state, target, scale=net.scale_of(n, target),
                                                         workspace=ws)
        elif need_grad:
            pred, grad = dynamics.error_gradient(decoder, state, target, scale=net.scale_of(n, target),
                                                 create_graph=False)
        elif need_pred and adjoint:
            pred, _ = dec.forward_with_tape(decoder, state, workspace=ws)  # (B, C_{n-1}, H_{n-1}, W_{n-1})
        elif need_pred:
            pred = decoder(state)  # (B, C_{n-1}, H_{n-1}, W_{n-1})
        net.check_finite(grad, f"error gradient of PCoder {n} ({net.layers[n]!r})", t)
        predictions.append(pred)
        grads.append(grad)
    return predictions, grads


def step(net, x, states, feedback, grads, coef, t, recorder, *, suffix, first_feedforward, workspace):
    """:meth:`PredNet.step` into reused buffers; with a ``suffix`` only the modules after the first PCoder run."""
    new_states = []

    def replace(n, feedforward):
        net._check_order(n, len(new_states))
        out = None if net.update_rule is not None else dec.scratch(workspace, ("new state", n, t % 2), feedforward)
        new = net.update_state(n, states[n], feedforward=feedforward, prediction=feedback[n], error_grad=grads[n],
                               out=out, **coef["at"][n])  # (B, C_n, H_n, W_n); a custom rule returns a new tensor
        net.check_finite(new, f"state of PCoder {n} ({net.layers[n]!r})", t)
        recorder.add_terms(n, t, new, feedforward, feedback[n], states[n], grads[n], coef)
        new_states.append(new)
        return new

    modules = net.pc_modules()
    if suffix is None:
        with wiring.hooked(modules, replace):
            logit = net.backbone(x)  # (B, K)
        net._check_all_ran(len(new_states))
        return new_states, logit
    with wiring.hooked(modules[1:], lambda n, out: replace(n + 1, out)):
        logit = replace(0, first_feedforward)
        for module in suffix:
            logit = module(logit)  # ... -> (B, K)
    net._check_all_ran(len(new_states))
    return new_states, logit
