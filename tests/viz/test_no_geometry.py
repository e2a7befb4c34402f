"""Where the video holds no signal (issue: movers, item 5): static pixels left with the network's guess are
counted in run.json's `signal`, named on summary.png and hidden in `st4r view` unless asked for."""

import numpy as np
from viz_scene import H, T, W, free_port, synthetic_scene

from st4r_cli.formats.scene import write_scene
from st4r_cli.viz.selection import no_geometry_mask, signal_summary
from st4r_cli.viz.summary import _ranges, no_geometry_note


def _with_sources(scene: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The synthetic scene with multi-view depth everywhere but on its upper third (the wall, no
    geometry) in every frame, and on nothing at all in frames 2 and 3 (a camera standing still)."""
    source = np.ones((T, H, W), np.uint8)
    source[:, : H // 3] = 0
    source[2:4] = 0
    dynamic = scene["gt_dynamic_mask"].copy()
    source[dynamic] = 0                                   # moving pixels keep the network's, as fuse does
    return {**scene, "pointmap_source": source, "dynamic_mask": dynamic}


def test_the_signal_summary_counts_the_static_pixels_without_geometry_and_names_the_frames():
    scene = _with_sources(synthetic_scene())
    mask = no_geometry_mask(scene)
    assert not (mask & scene["dynamic_mask"]).any()
    summary = signal_summary(scene)
    assert summary["frames_without_geometry"] == [2, 3]
    expected = (mask.sum()) / mask.size
    assert abs(summary["pixels_without_geometry"] - expected) < 1e-4
    assert signal_summary(synthetic_scene()) is None      # no multi-view depth: nothing to say
    note = no_geometry_note(scene)
    assert f"{100 * expected:.0f}% of the pixels" in note and "2 frame(s) (2-3)" in note
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_the_viewer_hides_points_without_geometry_unless_ticked(tmp_path):
    from st4r_cli.viz.viewer import ViewerConfig, open_viewer

    scene = _with_sources(synthetic_scene())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", scene)
    server, viewer = open_viewer(run_dir, "127.0.0.1", free_port(), ViewerConfig(conf_drop_percent=0.0))
    try:
        guessed = no_geometry_mask(scene)
        assert len(viewer.selected_points(1)[0]) == H * W - guessed[1].sum()
        assert len(viewer.selected_points(2)[0]) == scene["dynamic_mask"][2].sum()   # only the movers
        viewer.guessed.value = True
        assert len(viewer.selected_points(2)[0]) == H * W
    finally:
        viewer.stop()
        server.stop()
