"""Video decoding and clip sampling: finding videos, reading frames once, building clips."""

from anonfeat.video.sampling import Sampling, clip_frame_indices, static_frame_indices
from anonfeat.video.discover import VideoItem, find_videos

__all__ = ["Sampling", "VideoItem", "clip_frame_indices", "find_videos", "static_frame_indices"]
