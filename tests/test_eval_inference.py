"""Whole-image inference: sliding windows cover, average and crop exactly; `original` mode feeds multiples of 14."""

import pytest
import torch
import torch.nn.functional as F

from eval.inference import (
    count_windows,
    default_stride,
    importance_map,
    nearest_patch_multiple,
    predict_logits,
    predict_rows,
    resolve_window,
    window_starts,
)
from util.config import Config
from util.errors import ConfigError
from util.precision import autocast_dtype


class Recorder(torch.nn.Module):
    """Wraps a model and remembers the input shape of every forward."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.fn(x)


def pixelwise(x):
    """Logits that depend only on the pixel itself: every window agrees, so averaging changes nothing."""
    return torch.stack([x[:, 0], x[:, 1] - x[:, 2], -x[:, 0]], 1) * 3


def window_mean(x):
    """A constant per window (its mean intensity), so overlapping windows disagree and must be averaged."""
    return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)[:, :, None, None].expand(-1, -1, *x.shape[-2:])


def test_default_stride_is_two_thirds_of_the_window_truncated_as_the_reference():
    assert default_stride(518) == 345 and default_stride(512) == 341 and default_stride(14) == 9
    # The reference's int(window * 2 / 3): a window of 3k + 1 pixels gets 2k, not the nearest 2k + 1.
    assert [default_stride(w) for w in (112, 448, 28, 4, 1)] == [74, 298, 18, 2, 1]


def test_window_starts_end_flush_with_the_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(8, 4, 4) == [0, 4]


@pytest.mark.parametrize("size", [(5, 7), (14, 14), (15, 14), (23, 37), (41, 29)],
                         ids=["smaller", "equal", "one-larger", "odd", "odd-tall"])
def test_sliding_window_of_a_pixelwise_model_is_exact(size):
    torch.manual_seed(0)
    img = torch.randn(2, 3, *size)
    model = Recorder(pixelwise)
    probs = predict_logits(model, img, "sliding_window", window=14, stride=9, batch_size=3)
    assert probs.shape == (2, 3, *size)
    torch.testing.assert_close(probs, pixelwise(img).softmax(1))
    assert all(s[-2:] == (14, 14) and s[0] <= 3 for s in model.shapes)


def test_sliding_window_averages_overlapping_windows_per_pixel():
    torch.manual_seed(0)
    img = torch.randn(1, 3, 10, 11)
    probs = predict_logits(window_mean, img, "sliding_window", window=4, stride=3, batch_size=5)
    # Windows by hand: rows start at 0, 3, 6; columns at 0, 3, 6, 7.
    total = torch.zeros(2, 10, 11)
    count = torch.zeros(10, 11)
    for y in (0, 3, 6):
        for x in (0, 3, 6, 7):
            m = img[0, :, y:y + 4, x:x + 4].mean()
            total[:, y:y + 4, x:x + 4] += torch.stack([m, -m]).softmax(0)[:, None, None]
            count[y:y + 4, x:x + 4] += 1
    torch.testing.assert_close(probs[0], total / count)


def test_sliding_window_batches_windows_lazily_across_images():
    model = Recorder(pixelwise)
    predict_logits(model, torch.randn(2, 3, 10, 11), "sliding_window", window=4, stride=3, batch_size=5)
    # 3 x 4 windows per image, 24 in all, at most 5 per forward.
    assert [s[0] for s in model.shapes] == [5, 5, 5, 5, 4]


def test_smaller_image_is_zero_padded_to_the_window():
    seen = []

    def model(x):
        seen.append(x.clone())
        return pixelwise(x)

    img = torch.randn(1, 3, 5, 7)
    predict_logits(model, img, "sliding_window", window=14, stride=9)
    assert seen[0].shape == (1, 3, 14, 14)
    assert torch.equal(seen[0][..., :5, :7], img)
    assert seen[0][..., 5:, :].abs().sum() == 0 and seen[0][..., :, 7:].abs().sum() == 0


def test_sliding_window_rejects_a_stride_larger_than_the_window():
    with pytest.raises(ValueError):
        predict_logits(pixelwise, torch.randn(1, 3, 20, 20), "sliding_window", window=14, stride=15)


@pytest.mark.parametrize(("size", "seen"), [((500, 300), (504, 294)), ((28, 42), (28, 42)), ((6, 20), (14, 14))])
def test_original_mode_feeds_the_nearest_multiples_of_14_and_returns_input_size(size, seen):
    model = Recorder(pixelwise)
    probs = predict_logits(model, torch.randn(2, 3, *size), "original")
    assert model.shapes == [(2, 3, *seen)]
    assert probs.shape == (2, 3, *size)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, *size))


def test_original_mode_resizes_logits_back_with_align_corners():
    img = torch.randn(1, 3, 20, 30)
    probs = predict_logits(pixelwise, img, "original")
    x = F.interpolate(img, size=(14, 28), mode="bilinear", align_corners=True)
    logits = F.interpolate(pixelwise(x), size=(20, 30), mode="bilinear", align_corners=True)
    torch.testing.assert_close(probs, logits.softmax(1))


def test_original_mode_at_a_multiple_of_14_is_exact():
    img = torch.randn(1, 3, 28, 14)
    torch.testing.assert_close(predict_logits(pixelwise, img, "original"), pixelwise(img).softmax(1))


def test_nearest_patch_multiple():
    assert [nearest_patch_multiple(s) for s in (1, 7, 20, 21, 512, 6000)] == [14, 14, 14, 28, 518, 6006]


def test_nearest_patch_multiple_rounds_half_patches_up_as_the_reference():
    # int(side / 14 + 0.5) * 14: 35 = 2.5 patches -> 3 (round-half-to-even would give 2), 511 = 36.5 -> 37.
    assert [nearest_patch_multiple(s) for s in (35, 63, 511, 34, 36)] == [42, 70, 518, 28, 42]


def test_original_mode_feeds_the_reference_size_for_a_half_patch_side():
    model = Recorder(pixelwise)
    probs = predict_logits(model, torch.randn(1, 3, 35, 511), "original")
    assert model.shapes == [(1, 3, 42, 518)] and probs.shape == (1, 3, 35, 511)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown inference mode"):
        predict_logits(pixelwise, torch.randn(1, 3, 14, 14), "tiled")


def test_window_defaults_to_crop_size_and_two_thirds_stride():
    cfg = Config()
    assert resolve_window(cfg) == (518, 345)
    cfg = cfg.replace({"eval.window": 28, "eval.stride": 14})
    assert resolve_window(cfg) == (28, 14)
    cfg = cfg.replace({"eval.stride": 30})
    with pytest.raises(ConfigError, match="eval.stride"):
        resolve_window(cfg)


def test_cpu_runs_in_fp32():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None


def test_gaussian_blend_weights_each_window_by_the_importance_map():
    torch.manual_seed(0)
    img = torch.randn(1, 3, 10, 11)
    probs = predict_logits(window_mean, img, "sliding_window", window=4, stride=3, batch_size=5, blend="gaussian")
    weight = importance_map(4, "gaussian")
    total = torch.zeros(2, 10, 11)
    norm = torch.zeros(10, 11)
    for y in (0, 3, 6):
        for x in (0, 3, 6, 7):
            m = img[0, :, y:y + 4, x:x + 4].mean()
            total[:, y:y + 4, x:x + 4] += torch.stack([m, -m]).softmax(0)[:, None, None] * weight
            norm[y:y + 4, x:x + 4] += weight
    torch.testing.assert_close(probs[0], total / norm)
    # Default and `uniform` are the plain average, bit for bit.
    assert torch.equal(predict_logits(window_mean, img, "sliding_window", 4, 3, 5),
                       predict_logits(window_mean, img, "sliding_window", 4, 3, 5, blend="uniform"))


def test_unknown_blend_is_an_error():
    with pytest.raises(ValueError, match="unknown blend"):
        predict_logits(pixelwise, torch.randn(1, 3, 14, 14), "sliding_window", window=14, blend="median")


@pytest.mark.parametrize("blend", ["uniform", "gaussian"])
@pytest.mark.parametrize("size", [(5, 7), (14, 14), (23, 37), (61, 29)], ids=["smaller", "equal", "odd", "tall"])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_streamed_rows_are_the_whole_image_numbers_bit_for_bit(size, blend, batch_size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def model(x):  # depends on the window's content and context: overlapping windows disagree
        return conv(x) + x.mean((1, 2, 3))[:, None, None, None]

    img = torch.randn(1, 3, *size)
    calls = []
    want = predict_logits(model, img, "sliding_window", 14, 9, batch_size, blend=blend)[0]
    bands = list(predict_rows(model, lambda a, b: img[0, :, a:b], *size, 14, 9, batch_size, blend,
                              progress=calls.append))
    assert [top for top, _ in bands] == sorted({top for top, _ in bands}) and bands[0][0] == 0
    assert torch.equal(torch.cat([p for _, p in bands], 1), want)
    assert sum(calls) == count_windows(*size, 14, 9)
