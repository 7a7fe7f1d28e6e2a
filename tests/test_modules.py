import math

import pytest
import torch

from vlmkit.modules import TextConfig, TextTransformer, VisionConfig, VisionTransformer
from vlmkit.modules.transformer import CPU_FP32_ATTENTION_MAX_KEYS, SelfAttention, attention


def test_self_attention_matches_manual_softmax_attention():
    torch.manual_seed(0)
    attention = SelfAttention(16, 4)
    x = torch.randn(2, 5, 16)
    q, k, v = attention.qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(4)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    manual = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
    expected = attention.out(manual.transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(attention(x, is_causal=True), expected, atol=1e-5)


def _reference_attention(q, k, v, mask=None, causal=False):
    """Softmax attention written out in float64: what :func:`attention` must compute."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("keys", [7, 65, 300])
@pytest.mark.parametrize("masking", ["none", "causal", "bool", "float"])
def test_attention_in_bf16_on_cpu_matches_softmax_attention_and_keeps_the_dtype(keys, masking):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, keys, 16).bfloat16().requires_grad_() for _ in range(3))
    mask = None
    if masking == "bool":
        mask = torch.rand(2, 1, 1, keys) > 0.3
        mask[..., 0] = True  # every query keeps a key
    elif masking == "float":
        mask = (torch.randn(2, 1, keys, keys) * 2).bfloat16()
    expected = _reference_attention(q.detach(), k.detach(), v.detach(), mask, causal=masking == "causal")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in bf16-mixed training
        y = attention(q, k, v, attn_mask=mask, is_causal=masking == "causal")
    assert y.dtype == torch.bfloat16 and y.shape == q.shape
    # bf16 output: a relative error of ~2^-8 on values of order 1; the short-sequence path computes in fp32
    assert torch.allclose(y.detach().double(), expected, atol=3e-2, rtol=2e-2)


def test_short_bf16_attention_on_cpu_runs_in_fp32_and_passes_gradients(monkeypatch):
    import vlmkit.modules.transformer as transformer

    kernel, seen = transformer.F.scaled_dot_product_attention, []

    def recording(q, k, v, **kwargs):
        seen.append((k.shape[-2], q.dtype, torch.is_autocast_enabled("cpu")))
        return kernel(q, k, v, **kwargs)

    monkeypatch.setattr(transformer.F, "scaled_dot_product_attention", recording)
    torch.manual_seed(1)
    q, k, v = (torch.randn(4, 2, 33, 8).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(q, k, v, is_causal=True)
    y.float().square().sum().backward()
    assert seen == [(33, torch.float32, False)]  # the fp32 kernel, outside autocast (which would cast back)
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all()
               for t in (q, k, v))
    keys = CPU_FP32_ATTENTION_MAX_KEYS + 1
    attention(*(torch.randn(1, 1, keys, 8).bfloat16().requires_grad_() for _ in range(3)))
    attention(*(torch.randn(1, 1, 33, 8).requires_grad_() for _ in range(3)))
    with torch.no_grad():
        attention(q, k, v)
    attention(*(torch.randn(1, 1, 33, 8).bfloat16() for _ in range(3)))
    # long: bf16 kernel; fp32 inputs as they are; nothing to differentiate (inference): bf16 kernel
    assert seen[1:] == [(keys, torch.bfloat16, False), (33, torch.float32, False), (33, torch.bfloat16, False),
                        (33, torch.bfloat16, False)]


@pytest.mark.parametrize("pool", ["cls", "mean", "attention", "moments"])
def test_vit_shapes(pool):
    vit = VisionTransformer(VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, pool=pool))
    images = torch.randn(3, 3, 32, 32)
    tokens = vit.forward_tokens(images)
    assert tokens.shape == (3, 16 + (pool == "cls"), 32)
    assert vit(images).shape == (3, 32)


def test_vit_rejects_bad_patch_size():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionConfig(image_size=30, patch_size=8)


def test_causal_eot_pooling_ignores_padding():
    torch.manual_seed(0)
    text = TextTransformer(TextConfig(vocab_size=50, context_length=8, width=32, layers=2, heads=4)).eval()
    ids = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0]])
    mask = ids != 0
    other_padding = ids.clone()
    other_padding[0, 4:] = 7  # garbage after the EOT token must not change the pooled feature
    assert torch.allclose(text(ids, mask), text(other_padding, mask), atol=1e-6)
    # pooled at the EOT position (index 3)
    assert torch.allclose(text(ids, mask), text.forward_tokens(ids, mask)[0, 3], atol=1e-6)


def test_bidirectional_cls_pooling_masks_padding():
    torch.manual_seed(0)
    config = TextConfig(vocab_size=50, context_length=8, width=32, layers=2, heads=4, causal=False, pool="cls")
    text = TextTransformer(config).eval()
    ids = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0]])
    mask = ids != 0
    changed = ids.clone()
    changed[0, 5] = 9
    assert torch.allclose(text(ids, mask), text(changed, mask), atol=1e-6)
    assert not torch.allclose(text(ids, None), text(changed, None), atol=1e-6)


def test_causal_tower_cannot_pool_cls():
    with pytest.raises(ValueError, match="causal"):
        TextConfig(causal=True, pool="cls")


def test_text_longer_than_context_is_an_error():
    text = TextTransformer(TextConfig(vocab_size=20, context_length=4, width=16, layers=1, heads=2))
    with pytest.raises(ValueError, match="context length"):
        text(torch.zeros(1, 5, dtype=torch.long))


def test_sincos_position_init_encodes_the_patch_grid():
    from vlmkit.modules.vision import sincos_2d

    codes = sincos_2d(4, 16)
    assert codes.shape == (16, 16)
    # neighbouring patches have closer codes than distant ones
    assert (codes[0] - codes[1]).norm() < (codes[0] - codes[3]).norm()
    assert (codes[0] - codes[4]).norm() < (codes[0] - codes[12]).norm()
    vit = VisionTransformer(VisionConfig(image_size=32, patch_size=8, width=16, layers=1, heads=2,
                                         position_init="sincos"))
    assert torch.equal(vit.positional_embedding.detach()[1:], codes)
    assert vit.positional_embedding.requires_grad


def test_moments_pool_starts_as_the_mean_and_keeps_where_things_are():
    config = dict(image_size=32, patch_size=8, width=16, layers=1, heads=2)
    mean, moments = (VisionTransformer(VisionConfig(**config, pool=pool)) for pool in ("mean", "moments"))
    moments.load_state_dict(mean.state_dict(), strict=False)  # a mean-pooled tower given the new pool
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(moments(images), mean(images), atol=1e-6)  # the moment map starts at zero

    # Tokens that are the same multiset in two layouts: the mean cannot tell them apart, the moments can.
    tokens = torch.randn(1, 16, 16)
    mirrored = tokens.view(1, 4, 4, 16).flip(2).reshape(1, 16, 16)  # each row of patches right to left
    torch.nn.init.normal_(moments.moment_map.weight)
    assert torch.allclose(mean.pool(tokens), mean.pool(mirrored), atol=1e-6)
    assert not torch.allclose(moments.pool(tokens), moments.pool(mirrored), atol=1e-3)
    # the column moment changes sign under the mirror, the row moment does not
    coordinates = moments.patch_coordinates
    assert torch.allclose(coordinates[:4, 0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    first, second = (torch.einsum("blw,l->bw", t, coordinates[:, 0]) for t in (tokens, mirrored))
    assert torch.allclose(first, -second, atol=1e-5)
    rows, rows_mirrored = (torch.einsum("blw,l->bw", t, coordinates[:, 1]) for t in (tokens, mirrored))
    assert torch.allclose(rows, rows_mirrored, atol=1e-5)
    assert "patch_coordinates" not in moments.state_dict()  # derived from the config, not saved
