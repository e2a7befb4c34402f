"""`st4r view` without a browser: the viewer's filters and the command's life cycle."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
from viz_scene import H, T, W, free_port, synthetic_scene

from st4r_cli.cli.app import run as cli_run


def test_viewer_filters_points_by_confidence_and_motion(synthetic_run):
    from st4r_cli.viz.viewer import ViewerConfig, open_viewer

    server, viewer = open_viewer(synthetic_run, "127.0.0.1", free_port(), ViewerConfig(conf_drop_percent=0.0))
    try:
        scene = synthetic_scene()
        assert viewer.stride == 1 and len(viewer.frusta) == T
        points, colors = viewer.selected_points(2)
        assert len(points) == H * W
        assert np.allclose(np.sort(points, 0), np.sort(scene["pointmaps"][2].reshape(-1, 3), 0))
        viewer.conf.value = 50.0
        assert abs(len(viewer.selected_points(2)[0]) - H * W / 2) <= 2
        viewer.conf.value = 0.0
        viewer.which.value = "dynamic"
        dyn, dyn_colors = viewer.selected_points(2)
        gt = scene["gt_dynamic_mask"][2]
        assert 0.8 * gt.sum() <= len(dyn) <= 1.3 * gt.sum()
        assert (dyn_colors[:, 0] > 200).mean() > 0.7  # mostly the red patch
        viewer.which.value = "static"
        assert len(viewer.selected_points(2)[0]) + len(dyn) == H * W
        viewer.set_frame(T - 1)
        assert viewer.current == T - 1
    finally:
        viewer.stop()
        server.stop()


def test_view_command_serves_prints_the_url_and_stops_on_ctrl_c(synthetic_run):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # SIGINT back to its default in the child: a shell that starts the test suite in the background
    # without job control (e.g. `make test &`) leaves it ignored, and an ignored SIGINT is inherited
    proc = subprocess.Popen([sys.executable, "-m", "st4r_cli.cli.app", "view", str(synthetic_run), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = None
        deadline = time.time() + 60
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if line.startswith("http://"):
                url = line.strip()
            elif not line and proc.poll() is not None:
                break
        # the asked port, or the next free one if something took it meanwhile
        assert url and url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) >= port, \
            proc.stderr.read() if proc.poll() is not None else url
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        assert code == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_view_reports_a_missing_run(tmp_path, capsys):
    code = cli_run(["view", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error:") and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code = cli_run(["view", str(tmp_path / "empty")])
    assert code != 0 and "no scene.npz" in capsys.readouterr().err


def test_cli_import_does_not_load_viser_or_the_viz_code():
    probe = ("import sys, st4r_cli.cli.app; print(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('viser', 'av', 'cv2') or m.startswith('st4r_cli.viz')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
