"""dataset/transforms.py: joint geometry keeps labels on their pixels, padding values, strong ops, CutMix boxes."""

import torch

from dataset.transforms import cutmix_box, normalize, strong_augment, weak_augment
from util.config import AugmentConfig

CROP = 28


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_scene(h: int = 40, w: int = 60, block: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of random 10-px blocks and an image whose every channel is 30 * label: colour says the class."""
    g = gen(seed)
    coarse = torch.randint(0, 7, (h // block, w // block), generator=g, dtype=torch.uint8)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)
    img = (mask * 30 + 20).expand(3, h, w).clone()
    return img, mask


def test_weak_augment_gives_a_crop_of_the_configured_size():
    img, mask = block_scene()
    out_img, out_mask = weak_augment(img, mask, CROP, AugmentConfig(), gen(1))
    assert out_img.shape == (3, CROP, CROP) and out_img.dtype == torch.uint8
    assert out_mask.shape == (CROP, CROP) and out_mask.dtype == torch.uint8
    assert type(out_img) is torch.Tensor and type(out_mask) is torch.Tensor


def test_labels_stay_on_their_pixels_under_rescale_crop_and_flip():
    img, mask = block_scene()
    aug = AugmentConfig(scale_range=(0.7, 2.0), hflip_p=0.5)
    for seed in range(20):
        out_img, out_mask = weak_augment(img, mask, CROP, aug, gen(seed))
        labelled = out_mask != 255
        expected = out_mask.int() * 30 + 20
        # Bilinear blending touches only pixels at block borders; elsewhere colour and label agree.
        agree = ((out_img[0].int() - expected).abs() <= 2) & labelled
        assert agree.sum() >= 0.6 * labelled.sum(), seed


def test_padding_is_zero_in_the_image_and_the_given_value_in_the_mask():
    img = torch.full((3, 20, 16), 200, dtype=torch.uint8)
    mask = torch.ones(20, 16, dtype=torch.uint8)
    aug = AugmentConfig(scale_range=(0.5, 0.5), hflip_p=0.0)
    for pad in (255, 254):
        out_img, out_mask = weak_augment(img, mask, CROP, aug, gen(0), mask_pad=pad)
        padding = (out_img == 0).all(0)
        assert padding.sum() == CROP * CROP - 10 * 8
        assert (out_mask[padding] == pad).all() and (out_mask[~padding] == 1).all()


def test_weak_augment_is_a_function_of_the_generator_seed():
    img, mask = block_scene()
    a = weak_augment(img, mask, CROP, AugmentConfig(), gen(5))
    b = weak_augment(img, mask, CROP, AugmentConfig(), gen(5))
    c = weak_augment(img, mask, CROP, AugmentConfig(), gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_strong_augment_changes_pixels_but_not_its_input_or_geometry():
    img, _ = block_scene(28, 28, 7)
    before = img.clone()
    aug = AugmentConfig(color_jitter_p=1.0, grayscale_p=1.0, blur_p=1.0)
    out = strong_augment(img, aug, gen(0))
    assert torch.equal(img, before)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert not torch.equal(out, img)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # grayscale applied


def test_strong_augment_with_zero_probabilities_is_the_identity():
    img, _ = block_scene(28, 28, 7)
    aug = AugmentConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    assert torch.equal(strong_augment(img, aug, gen(0)), img)


def test_cutmix_boxes_respect_probability_area_and_aspect():
    size, aug = 200, AugmentConfig()
    g, empty, areas = gen(0), 0, []
    for _ in range(400):
        box = cutmix_box(size, aug, g)
        assert box.dtype == torch.long and box.shape == (size, size)
        if not box.any():
            empty += 1
            continue
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert box.sum() == h * w  # one solid rectangle
        areas.append(h * w / size**2)
        assert 0.02 * 0.9 <= areas[-1] <= 0.4 * 1.05
        assert 0.3 * 0.9 <= h / w <= (1 / 0.3) * 1.1
    assert 150 <= empty <= 250  # cutmix_p = 0.5
    assert 0.17 <= sum(areas) / len(areas) <= 0.25  # uniform in [0.02, 0.4]: mean 0.21


def test_cutmix_box_is_always_present_at_p_one_and_never_at_p_zero():
    g = gen(1)
    assert all(cutmix_box(50, AugmentConfig(cutmix_p=1.0), g).any() for _ in range(20))
    assert not any(cutmix_box(50, AugmentConfig(cutmix_p=0.0), g).any() for _ in range(20))


def test_normalize_uses_imagenet_statistics():
    img = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(img)
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
