"""A ViT forward pass in plain numpy (float64), written from the paper's equations and the
Flax reference code, not from vit_hub's layers. It pins the numerics vit_hub must match:
GELU with the tanh approximation, LayerNorm with epsilon 1e-6 and variance E[x^2]-E[x]^2,
queries scaled by 1/sqrt(head_dim), and class-token / mean pooling. For the hybrids, the
ResNet stem of google-research/vision_transformer (2021, flax 0.3.3): StdConv (population
std, epsilon on the std, TF-style SAME padding), GroupNorm (32 groups, epsilon 1e-6,
variance E[x^2]-E[x]^2) and a -inf-padded SAME max pool. Keyword switches of the stem
select deliberately wrong variants, so tests can show that a comparison can fail.

Parameters come as a nested dict in the checkpoints' own (Linen) naming.
"""

import numpy as np


def layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = (x * x).mean(-1, keepdims=True) - mean * mean
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def patch_embed(images, p, patch):
    b, h, w, c = images.shape
    gh, gw = h // patch, w // patch
    patches = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, gh * gw, patch * patch * c)
    return patches @ p["kernel"].reshape(patch * patch * c, -1) + p["bias"]


def attention(x, p):
    q, k, v = (
        np.einsum("btd,dhk->bthk", x, p[n]["kernel"]) + p[n]["bias"]
        for n in ("query", "key", "value")
    )
    q = q / np.sqrt(q.shape[-1])
    weights = softmax(np.einsum("bqhk,bshk->bhqs", q, k))
    y = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", y, p["out"]["kernel"]) + p["out"]["bias"], weights


def mlp(x, p):
    hidden = gelu_tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return hidden @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def encoder_block(x, p):
    y, weights = attention(layer_norm(x, p["LayerNorm_0"]), p["MultiHeadDotProductAttention_0"])
    x = x + y
    return x + mlp(layer_norm(x, p["LayerNorm_1"]), p["MlpBlock_0"]), weights


def vit_forward(params, images, patch, pooling="token"):
    """Returns (tokens after encoder_norm, pooled features, logits or None, attention maps).
    A hybrid (params with `conv_root`) runs its ResNet stem first; `patch` is then 1."""
    params = _to_float64(params)
    x = np.asarray(images, np.float64)
    if "conv_root" in params:
        stages = [k for k in params if k.startswith("block")]
        units = tuple(len(params[f"block{s}"]) for s in range(1, len(stages) + 1))
        x, patch = resnet_stem(_flat(params), x, units), 1
    x = patch_embed(x, params["embedding"], patch)
    cls = np.broadcast_to(params["cls"], (x.shape[0], 1, x.shape[-1]))
    encoder = params["Transformer"]
    x = np.concatenate([cls, x], axis=1) + encoder["posembed_input"]["pos_embedding"]
    maps = []
    num_blocks = sum(k.startswith("encoderblock_") for k in encoder)
    for i in range(num_blocks):
        x, weights = encoder_block(x, encoder[f"encoderblock_{i}"])
        maps.append(weights)
    tokens = layer_norm(x, encoder["encoder_norm"])
    features = tokens[:, 0] if pooling == "token" else tokens[:, 1:].mean(1)
    logits = features @ params["head"]["kernel"] + params["head"]["bias"] if "head" in params else None
    return tokens, features, logits, maps


def random_params(rng, *, patch, hidden, layers, heads, mlp, num_tokens, num_classes=None):
    """Random Linen-named parameters at scales that keep activations O(1)."""

    def normal(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[0] if len(shape) > 1 else 1)
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm():
        return {"scale": 1.0 + normal(hidden, scale=0.1), "bias": normal(hidden, scale=0.1)}

    def dense(n_in, *out):
        return {"kernel": normal(n_in, *out, scale=n_in**-0.5), "bias": normal(*out, scale=0.1)}

    head_dim = hidden // heads
    block = lambda: {
        "LayerNorm_0": norm(),
        "LayerNorm_1": norm(),
        "MultiHeadDotProductAttention_0": {
            **{n: dense(hidden, heads, head_dim) for n in ("query", "key", "value")},
            "out": {"kernel": normal(heads, head_dim, hidden, scale=hidden**-0.5),
                    "bias": normal(hidden, scale=0.1)},
        },
        "MlpBlock_0": {"Dense_0": dense(hidden, mlp), "Dense_1": dense(mlp, hidden)},
    }
    params = {
        "embedding": {"kernel": normal(patch, patch, 3, hidden, scale=(patch * patch * 3) ** -0.5),
                      "bias": normal(hidden, scale=0.1)},
        "cls": normal(1, 1, hidden, scale=0.5),
        "Transformer": {
            "posembed_input": {"pos_embedding": normal(1, num_tokens, hidden, scale=0.5)},
            "encoder_norm": norm(),
            **{f"encoderblock_{i}": block() for i in range(layers)},
        },
    }
    if num_classes:
        params["head"] = dense(hidden, num_classes)
    return params


def _flat(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        flat.update(_flat(value, path) if isinstance(value, dict) else {path: value})
    return flat


def _to_float64(tree):
    if isinstance(tree, dict):
        return {k: _to_float64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


# === The hybrids' ResNet stem (params flat, keyed by Linen path) ===

WS_EPS = 1e-5
GN_EPS = 1e-6
GN_GROUPS = 32


def standardize(w, *, eps_on_var=False, ddof=0):
    """Weight standardisation over (H, W, I) per output channel."""
    w = np.asarray(w, np.float64)
    w = w - w.mean(axis=(0, 1, 2), keepdims=True)
    var = np.square(w).sum(axis=(0, 1, 2), keepdims=True) / (w[..., 0].size - ddof)
    if eps_on_var:  # wrong: epsilon inside the square root
        return w / np.sqrt(var + WS_EPS)
    return w / (np.sqrt(var) + WS_EPS)


def same_pads(size, k, stride, mode="SAME"):
    """(before, after) padding of one spatial axis."""
    if mode == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    if mode == "SAME_BEGIN":  # wrong: the larger half at the start
        return total - total // 2, total // 2
    return total // 2, total - total // 2  # TF/XLA: the larger half at the end


def _windows(x, k, stride, mode, pad_value):
    """(N, Ho, Wo, C, k, k) strided view of x padded for a k x k window."""
    ph = same_pads(x.shape[1], k, stride, mode)
    pw = same_pads(x.shape[2], k, stride, mode)
    x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return win[:, ::stride, ::stride]


def conv(x, w, stride=1, *, padding="SAME"):
    """Cross-correlation, NHWC input, HWIO kernel, no bias."""
    k = w.shape[0]
    win = _windows(x, k, stride, padding, 0.0)
    return np.einsum("nhwcij,ijco->nhwo", win, w, optimize=True)


def std_conv(x, w, stride=1, *, padding="SAME", eps_on_var=False, ddof=0):
    return conv(x, standardize(w, eps_on_var=eps_on_var, ddof=ddof), stride, padding=padding)


def group_norm(x, scale, bias, groups=GN_GROUPS, eps=GN_EPS):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = np.square(g).mean(axis=(1, 2, 4), keepdims=True) - np.square(mean)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(x.shape) * np.reshape(scale, -1) + np.reshape(bias, -1)


def max_pool(x, k=3, stride=2, *, pad_value=-np.inf):
    return _windows(x, k, stride, "SAME", pad_value).max(axis=(-2, -1))


def relu(x):
    return np.maximum(x, 0.0)


def _gn(params, prefix, x):
    return group_norm(x, params[prefix + "/scale"], params[prefix + "/bias"])


def unit(params, prefix, x, filters, stride, **variant):
    """Bottleneck unit; `prefix` like 'block2/unit1'."""

    def conv_gn(suffix, y, s=1):  # conv{suffix} then gn{suffix}
        y = std_conv(y, params[f"{prefix}/conv{suffix}/kernel"], s, **variant)
        return _gn(params, f"{prefix}/gn{suffix}", y)

    residual = x
    if x.shape[-1] != 4 * filters or stride != 1:
        residual = conv_gn("_proj", x, stride)
    y = relu(conv_gn("1", x))
    y = relu(conv_gn("2", y, stride))
    y = conv_gn("3", y)
    return relu(residual + y)


def resnet_stem(params, x, block_units=(2, 2, 2, 2), width=64, *, pool_pad_value=-np.inf, **variant):
    """Stem forward pass in float64. `variant`: padding, eps_on_var, ddof."""
    x = np.asarray(x, np.float64)
    x = std_conv(x, params["conv_root/kernel"], 2, **variant)
    x = relu(_gn(params, "gn_root", x))
    x = max_pool(x, pad_value=pool_pad_value)
    for s, units in enumerate(block_units, start=1):
        for u in range(1, units + 1):
            stride = 2 if (s > 1 and u == 1) else 1
            x = unit(params, f"block{s}/unit{u}", x, width * 2 ** (s - 1), stride, **variant)
    return x
