"""Cut a short demo clip out of a longer video: `frames` frames, every `stride`-th from `start`,
re-encoded as H.264 (yuv420p, faststart) at the source's size; the frame rate is the source's / stride.

    python examples/make_clip.py ../shared/videos/feng.mp4 examples/feng.mp4 --frames 40 --stride 2
    python examples/make_clip.py ../shared/videos/sheep.mp4 examples/sheep.mp4 --frames 40
"""

from __future__ import annotations

import argparse
from fractions import Fraction

import av


def cut(src: str, dst: str, frames: int = 40, stride: int = 1, start: int = 0, crf: int = 26) -> int:
    written = 0
    with av.open(src) as source, av.open(dst, "w", options={"movflags": "+faststart"}) as out:
        video_in = source.streams.video[0]
        rate = (video_in.average_rate or Fraction(30)) / stride
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = video_in.width, video_in.height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "slow"}
        for index, frame in enumerate(source.decode(video_in)):
            if written >= frames:
                break
            if index < start or (index - start) % stride:
                continue
            image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            for packet in stream.encode(image):
                out.mux(packet)
            written += 1
        for packet in stream.encode():
            out.mux(packet)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--crf", type=int, default=26)
    args = parser.parse_args()
    count = cut(args.src, args.dst, args.frames, args.stride, args.start, args.crf)
    print(f"{args.dst}: {count} frames")


if __name__ == "__main__":
    main()
