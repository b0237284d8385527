"""Aspect-ratio buckets: the sizes, the nearest one, and how a photo is fitted to it."""

import pytest
import torch
from PIL import Image

from rewardbooth.core.errors import UserError
from rewardbooth.data.buckets import Bucket, buckets_of, fit_to_bucket, make_buckets, nearest_bucket
from rewardbooth.data.images import image_to_tensor


@pytest.mark.parametrize("resolution,step", [(512, 64), (1024, 16), (64, 16)])
def test_made_buckets_keep_the_area_the_step_and_the_ratio(resolution, step):
    buckets = make_buckets(resolution, step)
    assert Bucket(resolution, resolution) in buckets and len(buckets) >= 3
    for bucket in buckets:
        assert bucket.width * bucket.height <= resolution ** 2
        assert bucket.width % step == 0 and bucket.height % step == 0
        assert max(bucket) <= 2 * min(bucket)
        assert Bucket(bucket.height, bucket.width) in buckets  # every portrait has its landscape


def test_kohyas_sizes_at_512_px():
    assert {Bucket(448, 576), Bucket(576, 448), Bucket(384, 640)} <= set(make_buckets(512, 64))


def test_listed_buckets_are_parsed_and_checked():
    assert buckets_of(("512x512", "448X576"), 512, 64) == [Bucket(448, 576), Bucket(512, 512)]
    assert buckets_of(False, 512, 64) is None
    with pytest.raises(UserError, match="use 448x576"):
        buckets_of(("450x576",), 512, 64)
    with pytest.raises(UserError, match="WIDTHxHEIGHT"):
        buckets_of(("portrait",), 512, 64)
    with pytest.raises(UserError, match="empty list"):
        buckets_of((), 512, 64)


def test_nearest_bucket_is_nearest_in_log_aspect():
    buckets = make_buckets(512, 64)
    assert nearest_bucket(3000, 4000, buckets) == Bucket(448, 576)  # 3:4 portrait
    assert nearest_bucket(4000, 3000, buckets) == Bucket(576, 448)
    assert nearest_bucket(1000, 1000, buckets) == Bucket(512, 512)
    # 2:3 is log-distance 0.105 from 384x640 (3:5) and 0.154 from 448x576 (7:9).
    assert nearest_bucket(2000, 3000, buckets) == Bucket(384, 640)
    assert nearest_bucket(3000, 2000, buckets) == Bucket(640, 384)


def test_a_portrait_is_fitted_whole_into_a_portrait_bucket():
    image = Image.new("RGB", (60, 90), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 60, 10))  # a blue band at the top: a centre square would crop it away
    fitted = fit_to_bucket(image, Bucket(32, 48))
    assert fitted.shape == (3, 48, 32)
    assert fitted[2, 0].mean() > 0.9 and fitted[0, -1].mean() > 0.9
    squashed = fit_to_bucket(image, Bucket(32, 32), crop=False)
    assert squashed.shape == (3, 32, 32) and squashed[2, 0].mean() > 0.9


@pytest.mark.parametrize("size", [(97, 64), (64, 97), (300, 200), (64, 64)])
def test_a_square_bucket_is_todays_centre_crop_pixel_for_pixel(size):
    pixels = torch.rand(size[1], size[0], 3, generator=torch.Generator().manual_seed(0))
    image = Image.fromarray((pixels * 255).byte().numpy())
    assert torch.equal(fit_to_bucket(image, Bucket(32, 32)), image_to_tensor(image, 32))
