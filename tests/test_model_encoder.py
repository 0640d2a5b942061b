"""The DINOv2 encoder: official weight layout, a block forward written from DINOv2's definition, and its
position-embedding resizing checked against an independent bicubic implementation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.encoder import SIZES, DinoEncoder, interpolate_pos_embed, load_dinov2_weights
from util.errors import WeightsError

TINY = SIZES["tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")


def official_dinov2_state(dim: int = TINY.embed_dim, depth: int = TINY.depth, seed: int = 0) -> dict:
    """Random tensors under the official DINOv2 key names (dinov2_vits14_pretrain.pth layout), ViT width `dim`."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, mean=0.0, std=0.05):
        return mean + std * torch.randn(*shape, generator=g)

    state = {"cls_token": rnd(1, 1, dim), "pos_embed": rnd(1, 1370, dim, std=0.5), "mask_token": rnd(1, dim),
             "patch_embed.proj.weight": rnd(dim, 3, 14, 14, std=0.02), "patch_embed.proj.bias": rnd(dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        state.update({
            p + "norm1.weight": rnd(dim, mean=1.0), p + "norm1.bias": rnd(dim),
            p + "attn.qkv.weight": rnd(3 * dim, dim, std=0.2), p + "attn.qkv.bias": rnd(3 * dim),
            p + "attn.proj.weight": rnd(dim, dim, std=0.1), p + "attn.proj.bias": rnd(dim),
            p + "ls1.gamma": rnd(dim, mean=0.5, std=0.2),
            p + "norm2.weight": rnd(dim, mean=1.0), p + "norm2.bias": rnd(dim),
            p + "mlp.fc1.weight": rnd(4 * dim, dim, std=0.1), p + "mlp.fc1.bias": rnd(4 * dim),
            p + "mlp.fc2.weight": rnd(dim, 4 * dim, std=0.1), p + "mlp.fc2.bias": rnd(dim),
            p + "ls2.gamma": rnd(dim, mean=0.5, std=0.2)})
    state.update({"norm.weight": rnd(dim, mean=1.0), "norm.bias": rnd(dim)})
    return state


def loaded_tiny(tmp_path, state=None) -> tuple[DinoEncoder, dict]:
    state = state or official_dinov2_state()
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(state, path)
    encoder = DinoEncoder("tiny").eval()
    load_dinov2_weights(encoder, path, "model.pretrained")
    return encoder, state


def reference_dinov2(state: dict, img: torch.Tensor, heads: int, layers: list[int]) -> list[torch.Tensor]:
    """DINOv2's ViT forward written out with its own key names (pre-norm blocks, LayerScale, eps 1e-6)."""
    b, _, h, w = img.shape
    dim = state["cls_token"].shape[-1]
    x = F.conv2d(img, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    x = torch.cat((state["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)), dim=1)
    assert (h // 14, w // 14) == (37, 37), "the reference uses the stored grid as is"
    x = x + state["pos_embed"]

    def ln(t, name):
        return F.layer_norm(t, (dim,), state[name + ".weight"], state[name + ".bias"], eps=1e-6)

    outs = []
    for i in range(max(layers) + 1):
        p = f"blocks.{i}."
        y = ln(x, p + "norm1")
        qkv = (y @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]).reshape(b, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(dim // heads)).softmax(-1) @ v
        attn = attn.transpose(1, 2).reshape(b, -1, dim) @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
        x = x + state[p + "ls1.gamma"] * attn
        y = ln(x, p + "norm2")
        y = F.gelu(y @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"])
        x = x + state[p + "ls2.gamma"] * (y @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"])
        if i in layers:
            outs.append(ln(x, "norm")[:, 1:])
    return outs


def test_official_dinov2_file_round_trips_exactly(tmp_path):
    encoder, state = loaded_tiny(tmp_path)
    ours = encoder.state_dict()
    assert set(ours) == set(state) - {"mask_token"}
    for key, value in ours.items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("fused", [True, False])
def test_blocks_match_dinov2_definition(tmp_path, fused):
    encoder, state = loaded_tiny(tmp_path)
    encoder.set_fused_attn(fused)
    img = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        ours = encoder.forward_features(img)
    expected = reference_dinov2(state, img, TINY.heads, list(TINY.layers))
    assert len(ours) == 4
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def bicubic_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """PyTorch's bicubic (A = -0.75, align_corners=False) as a matrix, coordinates mapped by 1 / scale."""
    a = -0.75

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        t = src - base
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[i, min(max(base + offset, 0), n_in - 1)] += weight
    return m


@pytest.mark.parametrize("grid", [(4, 6), (16, 16), (40, 37)])
def test_pos_embed_resize_is_dinov2s_scale_factor_bicubic(grid):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, 8, dtype=torch.float64)
    gh, gw = grid
    ours = interpolate_pos_embed(pos, gh, gw)
    stored = pos[0, 1:].reshape(37, 37, 8).numpy()
    rows, cols = bicubic_matrix(37, gh, (gh + 0.1) / 37), bicubic_matrix(37, gw, (gw + 0.1) / 37)
    expected = np.einsum("hi,ijc,wj->hwc", rows, stored, cols).reshape(gh * gw, 8)
    assert torch.equal(ours[0, 0], pos[0, 0])
    np.testing.assert_allclose(ours[0, 1:].numpy(), expected, atol=1e-6)
    plain = F.interpolate(pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2), size=grid, mode="bicubic")
    assert not torch.allclose(ours[0, 1:], plain.permute(0, 2, 3, 1).reshape(gh * gw, 8), atol=1e-4)


def test_stored_grid_is_used_as_is():
    pos = torch.randn(1, 1370, 8)
    assert interpolate_pos_embed(pos, 37, 37) is pos


@pytest.mark.parametrize("size", [(56, 84), (70, 28), (518, 518)])
def test_four_token_maps_for_any_multiple_of_14(size):
    encoder = DinoEncoder("tiny")
    feats = encoder.forward_features(torch.randn(2, 3, *size))
    assert [f.shape for f in feats] == [(2, size[0] // 14 * size[1] // 14, 64)] * 4
    torch.testing.assert_close(encoder.last_tokens(torch.zeros(1, 3, *size)),
                               encoder.forward_features(torch.zeros(1, 3, *size))[-1])


def test_grad_checkpointing_gives_the_same_gradients(tmp_path):
    encoder, _ = loaded_tiny(tmp_path)
    img = torch.randn(1, 3, 28, 42)
    grads = []
    for enabled in (False, True):
        encoder.zero_grad()
        encoder.set_grad_checkpointing(enabled)
        sum(f.square().mean() for f in encoder.forward_features(img)).backward()
        grads.append(encoder.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_giant_uses_dinov2_swiglu_layout():
    with torch.device("meta"):
        state = DinoEncoder("giant").state_dict()
    assert state["blocks.0.mlp.fc1.weight"].shape == (8192, 1536)  # DINOv2's mlp.w12
    assert state["blocks.0.mlp.fc2.weight"].shape == (1536, 4096)  # DINOv2's mlp.w3
    assert len({k.split(".")[1] for k in state if k.startswith("blocks.")}) == 40


def test_missing_file_names_config_key_and_readme(tmp_path):
    with pytest.raises(WeightsError, match=r"model\.pretrained: .*nowhere\.pth not found.*pretrained/README\.md"):
        load_dinov2_weights(DinoEncoder("tiny"), tmp_path / "nowhere.pth", "model.pretrained")


def test_wrong_size_lists_the_mismatching_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(official_dinov2_state(dim=32), path)
    with pytest.raises(WeightsError) as err:
        load_dinov2_weights(DinoEncoder("tiny"), path, "teachers.dino.weights")
    message = str(err.value)
    assert "teachers.dino.weights" in message and str(path) in message and "\n" not in message
    assert "cls_token (1, 1, 32) vs (1, 1, 64) expected" in message and "more" in message


def test_not_a_weight_file_is_a_weights_error(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="model.pretrained: cannot read"):
        load_dinov2_weights(DinoEncoder("tiny"), path, "model.pretrained")


@pytest.mark.parametrize(("size", "blocks"), [("small", (2, 5, 8, 11))])
def test_the_dpt_head_sees_the_published_blocks_after_the_final_norm(size, blocks):
    """docs/method.md §1: ViT-S feeds blocks 2, 5, 8, 11 (0-based) to the DPT head, each through the final
    LayerNorm. Checked against timm's own forward_intermediates with those indices written out here."""
    torch.manual_seed(0)
    encoder = DinoEncoder(size).eval()
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        ours = encoder.forward_features(x)
        theirs = encoder.forward_intermediates(x, indices=list(blocks), norm=True, output_fmt="NLC",
                                               intermediates_only=True)
    assert len(ours) == 4
    for got, want in zip(ours, theirs):
        assert torch.equal(got, want)
