"""CLIP port: parity with Hugging Face golden outputs, OpenAI-format conversion, bad inputs."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxcomp.models import clip as clip_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TINY = os.path.join(FIXTURES, "tiny_clip")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(os.path.join(FIXTURES, "tiny_clip_golden.npz")))


@pytest.fixture(scope="module")
def model():
    return clip_lib.load_pretrained(TINY)


def test_config_read_from_hf(model):
    cfg = model.config
    assert (cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers) == (16, 4, 32, 2)
    assert (cfg.vocab_size, cfg.context_length, cfg.text_heads, cfg.projection_dim) == (
        516, 32, 4, 16,
    )  # fmt: skip
    assert cfg.hidden_act == "quick_gelu"


def test_image_and_text_features_match_golden(model, golden):
    img = jax.jit(lambda p: model.encode_image(p))(golden["pixels_nhwc"])
    txt = jax.jit(lambda t: model.encode_text(t))(golden["input_ids"])
    np.testing.assert_allclose(img, golden["image_embeds"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(txt, golden["text_embeds"], atol=1e-4, rtol=1e-4)
    logits = model(golden["pixels_nhwc"], golden["input_ids"])
    np.testing.assert_allclose(logits, golden["logits_per_image"], atol=1e-3, rtol=1e-4)


def test_text_from_embeddings_equals_text_from_ids(model, golden):
    ids = jnp.asarray(golden["input_ids"])
    a = model.encode_text_embeddings(model.embed_tokens(ids), ids)
    np.testing.assert_allclose(a, golden["text_embeds"], atol=1e-4, rtol=1e-4)
    # Causal mask + EOT pooling: tokens after the EOT cannot change the feature.
    noisy = ids.at[:, -3:].set(7)
    b = model.encode_text_embeddings(model.embed_tokens(noisy), noisy)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tokenizer_matches_hf_ids(golden):
    tok = clip_lib.load_tokenizer(TINY)
    assert tok.context_length == 32
    ours = tok(list(golden["texts"]))
    mask = golden["attention_mask"].astype(bool)
    np.testing.assert_array_equal(ours[mask], golden["input_ids"][mask])
    assert (ours[~mask] == 0).all()
    with pytest.raises(ValueError, match="longer than the context length"):
        tok("x" * 40)


def _to_openai(tensors):
    """HF names -> OpenAI names, written independently of the converter under test."""
    sd = {}
    tower_prefix = {"text_model": "", "vision_model": "visual."}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue
        parts = key.split(".")
        if parts[0] in tower_prefix and parts[1] == "encoder":
            pre = f"{tower_prefix[parts[0]]}transformer.resblocks.{parts[3]}."
            name = ".".join(parts[4:])
            if name.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                if name.startswith("self_attn.q_proj"):
                    kind = parts[-1]
                    qkv = [tensors[key.replace("q_proj", f"{p}_proj")] for p in "qkv"]
                    sd[pre + f"attn.in_proj_{kind}"] = np.concatenate(qkv, axis=0)
                continue
            for hf, oa in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                           ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                           ("mlp.fc2", "mlp.c_proj")):  # fmt: skip
                if name.startswith(hf):
                    sd[pre + oa + name[len(hf) :]] = value
            continue
        simple = {
            "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
            "text_model.embeddings.position_embedding.weight": "positional_embedding",
            "text_model.final_layer_norm.weight": "ln_final.weight",
            "text_model.final_layer_norm.bias": "ln_final.bias",
            "vision_model.embeddings.class_embedding": "visual.class_embedding",
            "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
            "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
            "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
            "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
            "vision_model.post_layernorm.weight": "visual.ln_post.weight",
            "vision_model.post_layernorm.bias": "visual.ln_post.bias",
            "logit_scale": "logit_scale",
        }
        if key in simple:
            sd[simple[key]] = value
        elif key == "text_projection.weight":
            sd["text_projection"] = value.T
        elif key == "visual_projection.weight":
            sd["visual.proj"] = value.T
        else:
            raise AssertionError(key)
    return sd


def test_openai_state_dict_conversion(golden, tmp_path):
    tensors = load_file(os.path.join(TINY, "model.safetensors"))
    sd = _to_openai(tensors)
    sd["context_length"] = np.array(32)  # JIT-archive metadata is skipped
    converted = clip_lib.convert_openai_state_dict(sd)
    expected = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    assert sorted(converted) == sorted(expected)
    for k in expected:
        np.testing.assert_array_equal(converted[k], expected[k], err_msg=k)
    # Heads cannot be inferred from width 32 (OpenAI uses width // 64), so build from HF config.
    cfg = clip_lib.config_from_openai_state_dict(sd)
    assert (cfg.vision_layers, cfg.text_layers, cfg.image_size, cfg.patch_size) == (2, 2, 16, 4)
    assert (cfg.vision_mlp_dim, cfg.context_length, cfg.projection_dim) == (64, 32, 16)
    with pytest.raises(ValueError, match="visual.transformer.resblocks.0.attn.bogus"):
        clip_lib.convert_openai_state_dict({"visual.transformer.resblocks.0.attn.bogus.weight": 0})


def test_bad_checkpoints(tmp_path):
    tensors = load_file(os.path.join(TINY, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        clip_lib.load_pretrained(tmp_path / "nowhere")

    def write(ts):
        d = tmp_path / f"ckpt{len(os.listdir(tmp_path))}"
        d.mkdir()
        shutil.copy(os.path.join(TINY, "config.json"), d / "config.json")
        save_file(ts, str(d / "model.safetensors"))
        return d

    extra = dict(tensors, **{"text_model.bogus.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="text_model.bogus.weight"):
        clip_lib.load_pretrained(write(extra))
    missing = {k: v for k, v in tensors.items() if k != "text_projection.weight"}
    with pytest.raises(ValueError, match="missing key 'text_projection.weight'"):
        clip_lib.load_pretrained(write(missing))
    bad = dict(tensors)
    bad["visual_projection.weight"] = np.zeros((16, 31), np.float32)
    with pytest.raises(ValueError, match="visual_projection.weight.*shape"):
        clip_lib.load_pretrained(write(bad))
    d = write(tensors)
    cfg = json.load(open(d / "config.json"))
    del cfg["vision_config"]
    json.dump(cfg, open(d / "config.json", "w"))
    with pytest.raises(ValueError, match="vision_config"):
        clip_lib.load_pretrained(d)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match=r"\(2, 15, 16, 3\)"):
        model.encode_image(np.zeros((2, 15, 16, 3), np.float32))
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(np.ones((1, 33), np.int32))
    with pytest.raises(ValueError, match="patch_size"):
        clip_lib.CLIPConfig(image_size=30, patch_size=4)


# --------------------------------------------------------------------------------------------
# Activation of OpenAI-layout checkpoints; EOS pooling
# --------------------------------------------------------------------------------------------


def _np_ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


_NP_ACT = {
    "quick_gelu": lambda x: x / (1 + np.exp(-1.702 * x)),
    "gelu": lambda x: 0.5 * x * (1 + __import__("scipy.special").special.erf(x / np.sqrt(2))),
}


def _np_tower(sd, pre, x, heads, act, causal):
    """OpenAI's ``Transformer`` on the OpenAI-format state dict (fused in_proj), in float64."""
    n_layers = len({k.split(".")[len(pre.split(".")) - 1] for k in sd if k.startswith(pre)})
    length, width = x.shape[1], x.shape[2]
    hd = width // heads
    for i in range(n_layers):
        p = lambda k: np.asarray(sd[f"{pre}{i}.{k}"], np.float64)  # noqa: B023
        h = _np_ln(x, p("ln_1.weight"), p("ln_1.bias"))
        q, k, v = np.split(h @ p("attn.in_proj_weight").T + p("attn.in_proj_bias"), 3, axis=-1)
        q, k, v = (t.reshape(len(x), length, heads, hd) for t in (q, k, v))
        s = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(hd)
        if causal:
            s = np.where(np.tril(np.ones((length, length), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("nhqk,nkhd->nqhd", w, v).reshape(x.shape)
        x = x + o @ p("attn.out_proj.weight").T + p("attn.out_proj.bias")
        h = _np_ln(x, p("ln_2.weight"), p("ln_2.bias"))
        h = _NP_ACT[act](h @ p("mlp.c_fc.weight").T + p("mlp.c_fc.bias"))
        x = x + h @ p("mlp.c_proj.weight").T + p("mlp.c_proj.bias")
    return x


def _np_clip(sd, pixels, ids, heads, act):
    """Reference forward of OpenAI's ``CLIP.encode_image`` / ``encode_text``."""
    f = lambda k: np.asarray(sd[k], np.float64)
    conv = f("visual.conv1.weight")  # (width, C, P, P)
    width, c, p, _ = conv.shape
    n, h, w, _ = pixels.shape
    patches = pixels.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    x = patches.reshape(n, -1, c * p * p) @ conv.reshape(width, -1).T
    cls = np.broadcast_to(f("visual.class_embedding"), (n, 1, width))
    x = np.concatenate([cls, x], 1) + f("visual.positional_embedding")
    x = _np_ln(x, f("visual.ln_pre.weight"), f("visual.ln_pre.bias"))
    x = _np_tower(sd, "visual.transformer.resblocks.", x, heads, act, causal=False)
    img = _np_ln(x[:, 0], f("visual.ln_post.weight"), f("visual.ln_post.bias")) @ f("visual.proj")
    t = f("token_embedding.weight")[ids] + f("positional_embedding")[: ids.shape[1]]
    t = _np_tower(sd, "transformer.resblocks.", t, heads, act, causal=True)
    t = _np_ln(t, f("ln_final.weight"), f("ln_final.bias"))
    txt = t[np.arange(len(ids)), ids.argmax(-1)] @ f("text_projection")
    return img, txt


def test_openai_layout_activation(golden, tmp_path):
    """QuickGELU (OpenAI) and GELU (OpenCLIP LAION) checkpoints share keys; each loads right."""
    sd = _to_openai(load_file(os.path.join(TINY, "model.safetensors")))
    # safetensors.numpy writes a transposed view's memory, not its values: make it contiguous.
    sd = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    pixels, ids = golden["pixels_nhwc"].astype(np.float64), golden["input_ids"]
    feats, refs = {}, {}
    for act in ("quick_gelu", "gelu"):
        model = clip_lib.load_pretrained(tmp_path / "m.safetensors", act=act)
        assert model.config.hidden_act == act and model.config.vision_heads == 1
        feats[act] = (np.asarray(model.encode_image(pixels)), np.asarray(model.encode_text(ids)))
        refs[act] = _np_clip(sd, pixels, ids, heads=1, act=act)
        for ours, ref in zip(feats[act], refs[act]):
            np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(feats["gelu"], refs["quick_gelu"]):  # the wrong activation is visible
        assert np.abs(a - b).max() > 1e-3
    # No act: OpenAI's QuickGELU, unless an open_clip_config.json says otherwise.
    default = clip_lib.load_pretrained(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(default.encode_text(ids), feats["quick_gelu"][1])
    for cfg, act in (({"model_cfg": {"embed_dim": 16}}, "gelu"),
                     ({"model_cfg": {"quick_gelu": True}}, "quick_gelu")):  # fmt: skip
        json.dump(cfg, open(tmp_path / "open_clip_config.json", "w"))
        assert clip_lib.load_pretrained(tmp_path / "m.safetensors").config.hidden_act == act
    json.dump({"model_cfg": {"quick_gelu": "yes"}}, open(tmp_path / "open_clip_config.json", "w"))
    with pytest.raises(ValueError, match="open_clip_config.json.*quick_gelu.*'yes'"):
        clip_lib.load_pretrained(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="'relu'"):
        clip_lib.load_pretrained(tmp_path / "m.safetensors", act="relu")
    with pytest.raises(ValueError, match="act='gelu'.*hidden_act='quick_gelu'"):
        clip_lib.load_pretrained(TINY, act="gelu")
    with pytest.raises(ValueError, match="'swish'"):
        clip_lib.config_from_openai_state_dict(sd, act="swish")


def test_openclip_activation_names_and_configs():
    act = clip_lib.openclip_activation
    assert act("ViT-B-32-quickgelu") == "quick_gelu"
    assert act("ViT-B-32") == act("ViT-H-14") == "gelu"
    assert act("ViT-B-32", pretrained="openai") == "quick_gelu"
    assert act({"embed_dim": 512, "quick_gelu": True}) == "quick_gelu"
    assert act({"embed_dim": 512}) == "gelu"
    with pytest.raises(ValueError, match="quick_gelu must be a bool, got 1"):
        act({"quick_gelu": 1})
    with pytest.raises(ValueError, match="empty"):
        act("")
