"""Re-create examples/sheep.mp4: the first 40 frames of the TAPIP3D demo video `sheep.mp4`.

    python examples/make_sheep_clip.py ../shared/videos/sheep.mp4 examples/sheep.mp4
"""

from __future__ import annotations

import sys
from fractions import Fraction

import av

FRAMES = 40


def cut(src: str, dst: str, frames: int = FRAMES) -> None:
    with av.open(src) as source, av.open(dst, "w", options={"movflags": "+faststart"}) as out:
        video_in = source.streams.video[0]
        rate = video_in.average_rate or Fraction(30)
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = video_in.width, video_in.height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "26", "preset": "slow"}
        for index, frame in enumerate(source.decode(video_in)):
            if index >= frames:
                break
            image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            for packet in stream.encode(image):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


if __name__ == "__main__":
    cut(sys.argv[1], sys.argv[2])
