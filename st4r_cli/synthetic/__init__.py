"""Procedural dynamic 4D scenes rendered by exact ray casting, with exact ground truth.

    clip = render_clip("occlusion", seed=3, num_frames=32, size_hw=(192, 256))
    tracks = sample_tracks(clip, 512, seed=0)
"""

from st4r_cli.synthetic.render import SyntheticClip, render_clip
from st4r_cli.synthetic.scene import PRESETS
from st4r_cli.synthetic.tracks import SparseTracks, project_points, sample_tracks, summed_motion_dynamic

__all__ = ["PRESETS", "SparseTracks", "SyntheticClip", "project_points", "render_clip", "sample_tracks",
           "summed_motion_dynamic"]
