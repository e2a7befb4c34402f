"""The viewer and the GLB in a real browser (headless Chromium, software WebGL): screenshots are not
blank and are upright (the synthetic run's floor is green, its wall blue: floor below wall)."""

import functools
import http.server
import math
import threading

import numpy as np
import pytest
from chromium_cdp import Browser
from viz_scene import FOCAL, H, T, W, free_port

from st4r_cli.stages.export import ExportConfig, export_scene


def _classify(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks of blue-ish, green-ish and red-ish pixels (hue tests, robust to sRGB shading)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    blue = (b > r + 60) & (b > g + 40)
    green = (g > r + 60) & (g > b + 60)
    red = (r > g + 100) & (r > b + 100)
    return blue, green, red


@pytest.fixture
def browser(chromium):
    instance = Browser(chromium, size=(1280, 800))
    yield instance
    instance.close()


def test_viewer_shows_the_scene_upright(synthetic_run, browser):
    from st4r_cli.viz.viewer import open_viewer

    server, viewer = open_viewer(synthetic_run, "127.0.0.1", free_port())
    try:
        viewer.slider.value = T - 1
        image = browser.screenshot(f"http://127.0.0.1:{server.get_port()}",
                                   "document.querySelector('canvas') !== null", settle_s=5)
    finally:
        viewer.stop()
        server.stop()
    scene_area = image[170:, :930]  # leave out the GUI panel (right) and notifications (top left)
    blue, green, red = _classify(scene_area)
    assert blue.mean() > 0.02 and green.mean() > 0.005 and red.sum() > 200, "viewer screenshot is blank"
    rows = np.arange(scene_area.shape[0])[:, None]
    floor_row = (rows * green).sum() / green.sum()
    wall_row = (rows * blue).sum() / blue.sum()
    assert floor_row > wall_row + 20, "floor is not below the wall: the viewer is not upright"


PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<script type="importmap">{"imports": {"three": "./three/build/three.module.js",
                                      "three/addons/": "./three/examples/jsm/"}}</script>
<script type="module">
import * as THREE from 'three';
import {GLTFLoader} from 'three/addons/loaders/GLTFLoader.js';
const renderer = new THREE.WebGLRenderer({preserveDrawingBuffer: true});
renderer.setSize(%(w)d, %(h)d);
document.body.appendChild(renderer.domElement);
const scene = new THREE.Scene();
// three.js's default camera: at the origin, looking down -z, y up = st4r's first camera in glTF axes
const camera = new THREE.PerspectiveCamera(%(fov)f, %(w)d / %(h)d, 0.01, 100);
const eye = new URLSearchParams(location.search).get("eye");  // optional x,y,z to look at 0,0,-1 from
if (eye !== null) { camera.position.fromArray(eye.split(",").map(Number)); camera.lookAt(0, 0, -0.5); }
new GLTFLoader().load('scene.glb', (gltf) => {
  gltf.scene.traverse((o) => { if (o.isPoints) { o.material.size = 4; o.material.sizeAttenuation = false; } });
  scene.add(gltf.scene);
  const time = new URLSearchParams(location.search).get('t');
  if (time !== null) {  // play the GLB's own animation to that time
    const mixer = new THREE.AnimationMixer(gltf.scene);
    mixer.clipAction(gltf.animations[0]).play();
    mixer.setTime(parseFloat(time));
  }
  renderer.render(scene, camera);
  window.__ready = true;
}, undefined, (err) => { window.__error = String(err); window.__ready = true; });
</script></body></html>
"""


def _serve(site):
    """A local static web server for `site` (no internet needed)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _site_with_glb(tmp_path, synthetic_run):
    from st4r_cli.formats.scene import read_scene

    site = tmp_path / "site"
    site.mkdir()
    export_scene(read_scene(synthetic_run / "scene.npz"), site, ["glb"], ExportConfig(conf_quantile=0.0))
    return site


def test_glb_is_upright_in_three_js(tmp_path, synthetic_run, browser, three_dir):
    site = _site_with_glb(tmp_path, synthetic_run)
    (site / "three").symlink_to(three_dir)
    width, height = 4 * W, 4 * H
    fov = math.degrees(2 * math.atan(H / 2 / FOCAL))
    (site / "index.html").write_text(PAGE % {"w": width, "h": height, "fov": fov})
    httpd = _serve(site)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    try:
        image = browser.screenshot(url, "window.__ready === true", timeout_s=60, settle_s=0.5)
        assert browser.evaluate("window.__error || ''") == ""
        # the animation at the last frame's time (10 fps: the scene has no decode timestamps)
        late = browser.screenshot(url + f"?t={(T - 1) / 10 + 0.05}", "window.__ready === true", settle_s=0.5)
    finally:
        httpd.shutdown()
    view = image[:height, :width]
    blue, green, red = _classify(view)
    assert blue.mean() > 0.3 and green.mean() > 0.05, "GLB page is blank (scene behind the camera?)"
    # upright: the wall (blue) fills the top, the floor (green) the bottom rows, the red patch is up left
    assert (blue | red)[: height // 3].mean() > 0.85 and green[-height // 10:].mean() > 0.8
    ys, xs = np.nonzero(red)
    assert len(ys) > 100 and ys.mean() < height / 2 and xs.mean() < width / 2
    # time is kept: in the last frame the camera has slid right and the patch moved right faster,
    # so it appears further right; the floor is still at the bottom
    late_blue, late_green, late_red = _classify(late[:height, :width])
    _, late_xs = np.nonzero(late_red[: height // 2])
    assert len(late_xs) > 100 and late_xs.mean() > xs.mean() + 10
    assert late_green[-height // 10:].mean() > 0.8


MODEL_VIEWER_PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<script type="module" src="./model-viewer.min.js"></script>
<model-viewer id="mv" src="scene.glb" style="width:512px;height:384px;background:#000"
  interaction-prompt="none" shadow-intensity="0" tone-mapping="neutral"></model-viewer>
<script>
const mv = document.getElementById('mv');
mv.addEventListener('load', () => setTimeout(() => { window.__ready = true; }, 500));
mv.addEventListener('error', (e) => { window.__error = 'load error'; window.__ready = true; });
</script></body></html>
"""


def test_glb_is_upright_in_model_viewer(tmp_path, synthetic_run, browser, model_viewer_js):
    """model-viewer's default camera (in front, slightly above, y up) sees the wall above the floor."""
    site = _site_with_glb(tmp_path, synthetic_run)
    (site / "model-viewer.min.js").symlink_to(model_viewer_js)
    (site / "index.html").write_text(MODEL_VIEWER_PAGE)
    httpd = _serve(site)
    try:
        image = browser.screenshot(f"http://127.0.0.1:{httpd.server_address[1]}/index.html",
                                   "window.__ready === true", timeout_s=60, settle_s=0.5)
        assert browser.evaluate("window.__error || ''") == ""
    finally:
        httpd.shutdown()
    view = image[:384, :512].astype(int)
    r, g, b = view[..., 0], view[..., 1], view[..., 2]
    blue = (b > r + 30) & (b > g + 15)     # model-viewer draws 1-pixel points: dimmer colours
    green = (g > r + 30) & (g > b + 30)
    assert blue.sum() > 1000 and green.sum() > 300, "model-viewer shows nothing"
    rows = np.arange(view.shape[0])[:, None]
    assert (rows * green).sum() / green.sum() > (rows * blue).sum() / blue.sum() + 20, "upside down"
