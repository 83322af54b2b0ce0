import numpy as np
import pytest

from anonfeat.errors import AnonfeatError
from anonfeat.video.sampling import Sampling, clip_frame_indices, static_frame_indices


def test_sliding_windows_default_stride_is_contiguous():
    s = Sampling(clip_len=4, frame_stride=2)
    idx = clip_frame_indices(30, s)
    assert idx.tolist() == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22]]


def test_overlapping_windows_with_clip_stride():
    idx = clip_frame_indices(12, Sampling(clip_len=3, frame_stride=2, clip_stride=2))
    assert idx[:, 0].tolist() == [0, 2, 4, 6]
    assert idx[-1].tolist() == [6, 8, 10]


def test_num_clips_spreads_evenly_to_the_end():
    idx = clip_frame_indices(100, Sampling(clip_len=4, frame_stride=3, num_clips=5))
    assert idx.shape == (5, 4)
    assert idx[0, 0] == 0 and idx[-1, -1] == 99


def test_short_video_repeats_last_frame():
    idx = clip_frame_indices(5, Sampling(clip_len=4, frame_stride=2))
    assert idx.tolist() == [[0, 2, 4, 4]]
    assert clip_frame_indices(1, Sampling(clip_len=3)).tolist() == [[0, 0, 0]]


def test_static_frames_are_segment_centres():
    assert static_frame_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert static_frame_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert static_frame_indices(10, 0).size == 0


@pytest.mark.parametrize("kwargs", [dict(clip_len=0), dict(clip_len=4, frame_stride=0),
                                    dict(clip_len=4, num_clips=2, clip_stride=3), dict(clip_len=4, resize="x")])
def test_bad_sampling_is_a_user_error(kwargs):
    with pytest.raises(AnonfeatError):
        Sampling(**kwargs)
