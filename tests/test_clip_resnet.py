"""CLIP's modified-ResNet image tower (RN50 ...): parity with a numpy forward of OpenAI's
equations on a tiny random checkpoint in OpenAI's key layout, config inference, bad checkpoints."""

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxcomp.models import clip as clip_lib

# Tiny: stem width 8 (stages of 32, 64, 128, 256 channels), 64x64 images -> a 2x2 grid at the
# attention pool, which has 256 channels and 256 // 64 = 4 heads. Stages 1 and 4 have a second
# block, so blocks without a shortcut projection are covered too.
LAYERS, WIDTH, IMAGE, EMBED = (2, 1, 1, 2), 8, 64, 16
TEXT_WIDTH, VOCAB, CONTEXT = 16, 12, 8


def _openai_resnet_sd(rng, layers=LAYERS, width=WIDTH, image=IMAGE, embed=EMBED, make=None):
    """A random state dict with the keys and shapes of OpenAI's ``CLIP`` built with a
    ``ModifiedResNet`` (``clip/model.py``), written from OpenAI's constructor, not our code.
    ``make(shape)`` overrides the random tensors (e.g. shape-only stand-ins)."""
    sd = {}

    def normal(shape, std):
        return make(shape) if make else (std * rng.standard_normal(shape)).astype(np.float32)

    def conv(key, cout, cin, k):
        sd[key] = normal((cout, cin, k, k), (2.0 / (cin * k * k)) ** 0.5)

    def bn(key, c):
        if make:
            for name in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{key}.{name}"] = make((c,))
        else:
            sd[f"{key}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            sd[f"{key}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
            sd[f"{key}.running_mean"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
            sd[f"{key}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        sd[f"{key}.num_batches_tracked"] = np.array(7, np.int64)

    def linear(key, cout, cin):
        sd[f"{key}.weight"] = normal((cout, cin), cin**-0.5)
        sd[f"{key}.bias"] = normal((cout,), 0.1)

    for i, (cin, cout) in enumerate(((3, width // 2), (width // 2, width // 2),
                                     (width // 2, width)), 1):  # fmt: skip
        conv(f"visual.conv{i}.weight", cout, cin, 3)
        bn(f"visual.bn{i}", cout)
    inplanes = width
    for stage, blocks in enumerate(layers, 1):
        planes = width * 2 ** (stage - 1)
        for b in range(blocks):
            pre = f"visual.layer{stage}.{b}."
            conv(pre + "conv1.weight", planes, inplanes, 1)
            bn(pre + "bn1", planes)
            conv(pre + "conv2.weight", planes, planes, 3)
            bn(pre + "bn2", planes)
            conv(pre + "conv3.weight", 4 * planes, planes, 1)
            bn(pre + "bn3", 4 * planes)
            stride = 2 if stage > 1 and b == 0 else 1
            if stride > 1 or inplanes != 4 * planes:
                conv(pre + "downsample.0.weight", 4 * planes, inplanes, 1)
                bn(pre + "downsample.1", 4 * planes)
            inplanes = 4 * planes
    c = 32 * width
    sd["visual.attnpool.positional_embedding"] = normal(((image // 32) ** 2 + 1, c), c**-0.5)
    for name in "qkv":
        linear(f"visual.attnpool.{name}_proj", c, c)
    linear("visual.attnpool.c_proj", embed, c)
    # The text tower (one block; test_clip.py checks it against OpenAI's equations).
    d = TEXT_WIDTH
    sd["token_embedding.weight"] = normal((VOCAB, d), 0.02)
    sd["positional_embedding"] = normal((CONTEXT, d), 0.01)
    pre = "transformer.resblocks.0."
    for ln in ("ln_1", "ln_2"):
        sd[pre + ln + ".weight"], sd[pre + ln + ".bias"] = normal((d,), 1.0), normal((d,), 0.1)
    sd[pre + "attn.in_proj_weight"] = normal((3 * d, d), 0.2)
    sd[pre + "attn.in_proj_bias"] = normal((3 * d,), 0.1)
    linear(pre + "attn.out_proj", d, d)
    linear(pre + "mlp.c_fc", 4 * d, d)
    linear(pre + "mlp.c_proj", d, 4 * d)
    sd["ln_final.weight"], sd["ln_final.bias"] = normal((d,), 1.0), normal((d,), 0.1)
    sd["text_projection"] = normal((d, embed), d**-0.5)
    sd["logit_scale"] = make(()) if make else np.array(np.log(1 / 0.07), np.float32)
    return sd


# ---- numpy reference of OpenAI's ModifiedResNet (float64, NHWC, torch weight layouts) --------


def _np_conv(x, w, stride=1):
    """``nn.Conv2d(padding=k // 2, bias=False)`` with an (out, in, k, k) weight, summed over the
    kernel offsets of the zero-padded input."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho = (x.shape[1] + 2 * p - k) // stride + 1
    wo = (x.shape[2] + 2 * p - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[0]))
    for i in range(k):
        for j in range(k):
            window = xp[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += window @ w[:, :, i, j].T
    return out


def _np_avgpool(x, k):
    n, h, w, c = x.shape
    h, w = h // k, w // k
    return x[:, : h * k, : w * k].reshape(n, h, k, w, k, c).mean(axis=(2, 4))


def _np_resnet(sd, pixels, heads):
    f = lambda k: np.asarray(sd[k], np.float64)
    bn = lambda x, p: (
        (x - f(p + ".running_mean")) / np.sqrt(f(p + ".running_var") + 1e-5) * f(p + ".weight")
        + f(p + ".bias")
    )
    relu = lambda x: np.maximum(x, 0)
    x = relu(bn(_np_conv(pixels, f("visual.conv1.weight"), stride=2), "visual.bn1"))
    x = relu(bn(_np_conv(x, f("visual.conv2.weight")), "visual.bn2"))
    x = relu(bn(_np_conv(x, f("visual.conv3.weight")), "visual.bn3"))
    x = _np_avgpool(x, 2)
    for stage in (1, 2, 3, 4):
        b = 0
        while f"visual.layer{stage}.{b}.conv1.weight" in sd:
            pre = f"visual.layer{stage}.{b}."
            stride = 2 if stage > 1 and b == 0 else 1
            out = relu(bn(_np_conv(x, f(pre + "conv1.weight")), pre + "bn1"))
            out = relu(bn(_np_conv(out, f(pre + "conv2.weight")), pre + "bn2"))
            out = bn(_np_conv(_np_avgpool(out, stride), f(pre + "conv3.weight")), pre + "bn3")
            if pre + "downsample.0.weight" in sd:
                x = _np_conv(_np_avgpool(x, stride), f(pre + "downsample.0.weight"))
                x = bn(x, pre + "downsample.1")
            x = relu(out + x)
            b += 1
    # AttentionPool2d: tokens (N, HW, C) with their mean first, one query (the mean token).
    n, h, w, c = x.shape
    t = x.reshape(n, h * w, c)
    t = np.concatenate([t.mean(1, keepdims=True), t], 1) + f("visual.attnpool.positional_embedding")
    proj = lambda a, name: (
        a @ f(f"visual.attnpool.{name}.weight").T + f(f"visual.attnpool.{name}.bias")
    )
    hd = c // heads
    q = proj(t[:, :1], "q_proj").reshape(n, 1, heads, hd)
    k = proj(t, "k_proj").reshape(n, h * w + 1, heads, hd)
    v = proj(t, "v_proj").reshape(n, h * w + 1, heads, hd)
    s = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(hd)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("nhqk,nkhd->nqhd", a, v).reshape(n, c)
    return proj(o, "c_proj")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sd = _openai_resnet_sd(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("rn") / "rn_tiny.safetensors"
    save_file(sd, str(path))
    return sd, path


@pytest.fixture(scope="module")
def model(checkpoint):
    return clip_lib.load_pretrained(checkpoint[1])


def test_resnet_image_features_match_numpy_reference(checkpoint, model):
    sd, _ = checkpoint
    pixels = np.random.default_rng(1).standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32)
    encode = nnx.jit(lambda m, p: m.encode_image(p))
    ours = encode(model, pixels)
    ref = _np_resnet(sd, pixels.astype(np.float64), heads=model.config.vision_heads)
    assert ours.shape == (2, EMBED)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    # Frozen BatchNorm: train mode (as split_model sets it) still uses the running statistics.
    model.train()
    try:
        np.testing.assert_array_equal(encode(model, pixels), ours)
    finally:
        model.eval()
    stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    n_bn = sum(k.endswith(".running_var") for k in sd)
    assert len(stats) == 2 * n_bn  # running mean + var of every BatchNorm, not nnx.Param


def test_resnet_config_inferred_from_state_dict(checkpoint, model):
    cfg = model.config
    assert cfg.is_resnet and (cfg.vision_layers, cfg.vision_width) == (LAYERS, WIDTH)
    assert (cfg.image_size, cfg.vision_heads, cfg.num_channels, cfg.projection_dim) == (
        IMAGE, 4, 3, EMBED,
    )  # fmt: skip
    assert (cfg.text_width, cfg.text_layers, cfg.vocab_size, cfg.context_length) == (
        TEXT_WIDTH, 1, VOCAB, CONTEXT,
    )  # fmt: skip
    # RN50's shapes (OpenAI: layers (3, 4, 6, 3), width 64, 224 px, embed 1024, 32 heads), with
    # zero-stride stand-ins; every converted key maps onto the model with the right shape.
    stand_in = lambda shape: np.broadcast_to(np.float32(0), shape)
    sd = _openai_resnet_sd(
        None, layers=(3, 4, 6, 3), width=64, image=224, embed=1024, make=stand_in
    )
    cfg = clip_lib.config_from_openai_state_dict(sd)
    assert (cfg.vision_layers, cfg.vision_width, cfg.image_size) == ((3, 4, 6, 3), 64, 224)
    assert (cfg.vision_heads, cfg.projection_dim) == (32, 1024)
    converted = clip_lib.convert_openai_state_dict(sd)
    abstract = nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0)))
    mapping = clip_lib._hf_mapping(cfg)
    assert sorted(k for k, _, _ in mapping) == sorted(converted)
    for key, path, transform in mapping:
        node = abstract
        for p in path:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        assert transform(converted[key]).shape == node.get_value().shape, key


def test_bad_resnet_checkpoints(checkpoint, tmp_path):
    sd, _ = checkpoint
    infer = clip_lib.config_from_openai_state_dict
    pos = "visual.attnpool.positional_embedding"
    with pytest.raises(ValueError, match=f"'{pos}' has 6 rows"):
        infer(dict(sd, **{pos: np.zeros((6, 32 * WIDTH), np.float32)}))
    with pytest.raises(ValueError, match=f"'{pos}' has width 64"):
        infer(dict(sd, **{pos: np.zeros((5, 64), np.float32)}))
    with pytest.raises(ValueError, match="'visual.layer3"):
        infer({k: v for k, v in sd.items() if not k.startswith("visual.layer3.")})
    with pytest.raises(ValueError, match="missing key 'visual.layer1.0.conv1.weight'"):
        infer({k: v for k, v in sd.items() if k != "visual.layer1.0.conv1.weight"})
    with pytest.raises(ValueError, match="'visual.layer1.0.bogus.weight'"):
        clip_lib.convert_openai_state_dict(dict(sd, **{"visual.layer1.0.bogus.weight": 0}))

    def load(tensors):
        path = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.safetensors"
        save_file(tensors, str(path))
        return clip_lib.load_pretrained(path)

    key = "visual.layer2.0.conv2.weight"
    with pytest.raises(ValueError, match=r"bad0\.safetensors.*layer2\.0\.conv2\.weight.*shape"):
        load(dict(sd, **{key: np.zeros((16, 16, 1, 3), np.float32)}))
    with pytest.raises(ValueError, match="missing key 'vision_model.layer4.1.bn2.running_var'"):
        load({k: v for k, v in sd.items() if k != "visual.layer4.1.bn2.running_var"})
    with pytest.raises(ValueError, match="visual.proj"):
        infer({k: v for k, v in sd.items() if not k.startswith("visual.")})


def test_bad_resnet_configs_and_inputs(model):
    Config = clip_lib.CLIPConfig
    with pytest.raises(ValueError, match=r"'vision_layers' .* got \(1, 1, 1\)"):
        Config(vision_layers=(1, 1, 1), vision_width=8, vision_heads=4)
    for bad in ((1, 0, 1, 1), "8", None, 2.5, True):  # named as a field, like the others
        with pytest.raises(ValueError, match="field 'vision_layers'"):
            Config(vision_layers=bad, vision_width=8, vision_heads=4)
    with pytest.raises(ValueError, match="multiple of 32.*48"):
        Config(vision_layers=(1, 1, 1, 1), image_size=48, vision_width=8, vision_heads=4)
    with pytest.raises(ValueError, match="divisible by vision_heads"):
        Config(vision_layers=(1, 1, 1, 1), vision_width=8, vision_heads=3)
    assert Config(vision_layers=[1, 2, 1, 1], vision_width=8, vision_heads=4).vision_layers == (
        1, 2, 1, 1,
    )  # fmt: skip
    shapes = lambda *shape: jax.eval_shape(model.encode_image, jax.ShapeDtypeStruct(shape, "f4"))
    assert shapes(1, 64, 64, 3).shape == (1, EMBED)
    with pytest.raises(ValueError, match=r"C=3, got shape \(1, 64, 64, 1\)"):
        shapes(1, 64, 64, 1)
    with pytest.raises(ValueError, match="4x4 feature grid gives 17 .*has 5"):
        shapes(1, 128, 128, 3)
