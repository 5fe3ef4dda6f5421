"""Chapter 6's network, ``Linear(k, hidden) -> activation -> Linear(hidden, 1)``, and backprop by hand.

The parameters live in one flat tensor in the order of the ``nn.Sequential``'s state dict: ``0.weight``
(h, k), ``0.bias`` (h,), ``2.weight`` (1, h), ``2.bias`` (1,); the line's ``[w..., b]`` is the same layout for
``nn.Linear(k, 1)``. ``forward`` keeps what the backward pass needs, ``backward`` applies the chain rule layer
by layer, ``module`` builds the same network as an ``nn.Sequential`` (what autograd and torch.optim train),
and ``seeded_init`` is ``nn.Linear``'s default initialisation drawn from an explicit generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "sigmoid")
_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
_FUNCTIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def shapes(features: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of ``nn.Sequential(Linear(k, h), activation, Linear(h, 1))``."""
    return {"0.weight": (hidden, features), "0.bias": (hidden,), "2.weight": (1, hidden), "2.bias": (1,)}


def n_params(features: int, hidden: int) -> int:
    """How many numbers the network has: ``h * k + h + h + 1``."""
    return (features + 2) * hidden + 1


def unflatten(params: torch.Tensor, features: int, hidden: int) -> dict[str, torch.Tensor]:
    """Views of the flat ``params`` (p,) as the layers' tensors (in-place changes to ``params`` show)."""
    sizes = shapes(features, hidden)
    parts = torch.split(params, [math.prod(s) for s in sizes.values()])
    return {name: part.view(shape) for (name, shape), part in zip(sizes.items(), parts, strict=True)}


def state_dict(params: torch.Tensor, features: int, hidden: int) -> dict[str, torch.Tensor]:
    """The layers' tensors as separate copies (a saved view would drag the whole flat storage along)."""
    return {name: view.detach().clone() for name, view in unflatten(params, features, hidden).items()}


def from_state_dict(state: dict, features: int, hidden: int) -> torch.Tensor:
    """The flat parameters (p,) from a state dict, which must hold exactly the network's names and shapes.

    Raises:
        ValueError: naming the missing, unexpected or misshapen entry.
    """
    expected = shapes(features, hidden)
    if not isinstance(state, dict) or set(state) != set(expected):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"the weights hold {found}; a {features}-{hidden}-1 network has {sorted(expected)}")
    for name, shape in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"weights entry {name!r} is {got}; expected a tensor of shape {shape}")
    return torch.cat([state[name].reshape(-1) for name in expected])


def activate(z: torch.Tensor, activation: str) -> torch.Tensor:
    """The hidden layer's activation, elementwise."""
    if activation not in _FUNCTIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    return _FUNCTIONS[activation](z)


def activation_slope(z: torch.Tensor, a: torch.Tensor, activation: str) -> torch.Tensor:
    """``da/dz`` of ``a = activation(z)``, elementwise, from the forward pass's cached ``z`` and ``a``.

    tanh: ``1 - tanh(z)^2 = 1 - a^2``; sigmoid: ``s(z) (1 - s(z)) = a (1 - a)``; relu: 1 where ``z > 0``,
    else 0 (at ``z = 0`` torch takes 0 too).
    """
    if activation == "tanh":
        return 1 - a * a
    if activation == "sigmoid":
        return a * (1 - a)
    if activation == "relu":
        return (z > 0).to(z.dtype)
    raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class Cache:
    """What the forward pass keeps for the backward pass."""

    x: torch.Tensor  # (n, k) inputs
    z: torch.Tensor  # (n, h) hidden pre-activations, x W1^T + b1
    a: torch.Tensor  # (n, h) hidden activations, activation(z)


def forward(
    x: torch.Tensor, params: torch.Tensor, hidden: int, activation: str
) -> tuple[torch.Tensor, Cache]:
    """Predictions (n,) of the network for inputs ``x`` (n, k), and the cache for ``backward``.

    ``F.linear`` is what ``nn.Linear`` calls, so these are the module's own floating-point operations.
    """
    p = unflatten(params, x.shape[1], hidden)
    z = F.linear(x, p["0.weight"], p["0.bias"])  # (n, h) = x W1^T + b1
    a = activate(z, activation)  # (n, h)
    t_p = F.linear(a, p["2.weight"], p["2.bias"]).squeeze(1)  # (n, 1) = a W2^T + b2 -> (n,)
    return t_p, Cache(x, z, a)


def predict(x: torch.Tensor, params: torch.Tensor, hidden: int, activation: str) -> torch.Tensor:
    """Predictions (n,) for inputs ``x`` (n, k)."""
    return forward(x, params, hidden, activation)[0]


def backward(
    cache: Cache, params: torch.Tensor, t: torch.Tensor, t_p: torch.Tensor, activation: str
) -> torch.Tensor:
    """The gradient of ``L = mse(t_p, t)`` with respect to the flat ``params``, by the chain rule; shape (p,).

    From the loss back to the first layer, each step multiplying the gradient that arrives by the local
    derivative of one operation (``g`` is dL/d of whatever it is named after):
    """
    n, hidden = t.shape[0], cache.a.shape[1]
    p = unflatten(params, cache.x.shape[1], hidden)
    # L = 1/n sum_i (t_p_i - t_i)^2                 =>  dL/dt_p = 2/n (t_p - t)                      (n, 1)
    g_out = (2 * (t_p - t) / n).unsqueeze(1)
    # t_p = a W2^T + b2, i.e. t_p_i = sum_j a_ij W2_0j + b2  =>  dL/dW2 = g_out^T a                 (1, h)
    g_w2 = g_out.T @ cache.a
    #                                               =>  dL/db2 = sum_i g_out_i                       (1,)
    g_b2 = g_out.sum(0)
    #                                               =>  dL/da_ij = g_out_i W2_0j, i.e. g_out W2      (n, h)
    g_a = g_out @ p["2.weight"]
    # a = activation(z), elementwise                =>  dL/dz = dL/da * activation'(z)               (n, h)
    g_z = g_a * activation_slope(cache.z, cache.a, activation)
    # z = x W1^T + b1, i.e. z_ij = sum_l x_il W1_jl + b1_j  =>  dL/dW1 = g_z^T x                    (h, k)
    g_w1 = g_z.T @ cache.x
    #                                               =>  dL/db1 = sum_i g_z_i                         (h,)
    g_b1 = g_z.sum(0)
    # (dL/dx = g_z W1 would continue to a layer before; the inputs are data, so the pass stops here)
    return torch.cat([g_w1.reshape(-1), g_b1, g_w2.reshape(-1), g_b2])  # the flat layout of params


def mse_grad(
    x: torch.Tensor, t: torch.Tensor, params: torch.Tensor, hidden: int, activation: str
) -> torch.Tensor:
    """The hand-written gradient (p,) of the network's MSE at ``params``: ``forward`` then ``backward``."""
    t_p, cache = forward(x, params, hidden, activation)
    return backward(cache, params, t, t_p, activation)


def module(features: int, hidden: int, activation: str, params: torch.Tensor) -> nn.Sequential:
    """The network as the book builds it, ``nn.Sequential(Linear(k, h), activation, Linear(h, 1))``.

    Its parameters are copies of ``params`` (in its dtype and on its device), never views: training the
    module leaves ``params`` alone. The layers are built with ``skip_init``, so the global random generator
    is never drawn from.
    """
    like = {"dtype": params.dtype, "device": params.device}
    net = nn.Sequential(
        nn.utils.skip_init(nn.Linear, features, hidden, **like),
        _MODULES[activation](),
        nn.utils.skip_init(nn.Linear, hidden, 1, **like),
    )
    with torch.no_grad():
        for target, value in zip(net.parameters(), unflatten(params, features, hidden).values(), strict=True):
            target.copy_(value)
    return net


def flatten(net: nn.Module) -> torch.Tensor:
    """A module's parameters as one flat tensor (a copy), in state-dict order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def seeded_init(features: int, hidden: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``nn.Linear``'s default initialisation of the network, from ``torch.Generator().manual_seed(seed)``.

    Layer by layer, weight then bias, as ``nn.Linear.reset_parameters`` does: the weight from
    ``kaiming_uniform_(a=sqrt(5))``, which is uniform on ``(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and the bias
    uniform on the same interval. So it equals ``torch.manual_seed(seed)`` followed by building the
    ``nn.Sequential``, without touching the global generator.
    """
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for fan_in, fan_out in ((features, hidden), (hidden, 1)):
        weight = torch.empty(fan_out, fan_in, dtype=dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(fan_in)
        bias = torch.empty(fan_out, dtype=dtype)
        nn.init.uniform_(bias, -bound, bound, generator=generator)
        parts += [weight.reshape(-1), bias]
    return torch.cat(parts)


def autograd_grad(
    x: torch.Tensor, t: torch.Tensor, params: torch.Tensor, hidden: int, activation: str
) -> torch.Tensor:
    """The same gradient as ``mse_grad``, by ``loss.backward()`` through the ``nn.Sequential``; shape (p,)."""
    net = module(x.shape[1], hidden, activation, params.detach())
    t_p = net(x).squeeze(1)  # (n,)
    ((t_p - t) ** 2).mean().backward()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def gradient_gap(
    x: torch.Tensor, t: torch.Tensor, params: torch.Tensor, hidden: int, activation: str
) -> float:
    """Largest relative difference between the hand-written and the autograd gradient at ``params``.

    In float64, ``max|g_manual - g_autograd| / max(1, max|g_autograd|)``, as the line's check: a correct
    backward pass gives about 1e-16, a wrong one order 1.
    """
    x64, t64, p64 = x.to(torch.float64), t.to(torch.float64), params.detach().to(torch.float64)
    manual = mse_grad(x64, t64, p64, hidden, activation)
    auto = autograd_grad(x64, t64, p64, hidden, activation)
    return float((manual - auto).abs().max() / max(1.0, float(auto.abs().max())))
