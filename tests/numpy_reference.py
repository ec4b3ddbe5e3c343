"""A ViT forward pass in plain numpy (float64), written from the paper's equations and the
Flax reference code, not from vit_hub's layers. It pins the numerics vit_hub must match:
GELU with the tanh approximation, LayerNorm with epsilon 1e-6 and variance E[x^2]-E[x]^2,
queries scaled by 1/sqrt(head_dim), and class-token / mean pooling.

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
    """Returns (tokens after encoder_norm, pooled features, logits or None, attention maps)."""
    params = _to_float64(params)
    x = patch_embed(np.asarray(images, np.float64), params["embedding"], patch)
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


def _to_float64(tree):
    if isinstance(tree, dict):
        return {k: _to_float64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)
