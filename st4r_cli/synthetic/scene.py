"""Procedural dynamic scenes: a textured room, static furniture, moving rigid / deforming / articulated
objects, and a smooth camera path. Everything is sampled from a seeded generator (deterministic).

Every object (the room included) is an affine image of a canonical unit shape:

    X_world(t) = center[t] + rotation[t] @ (scale[t] * u),     u on the unit sphere or the cube [-1, 1]^3

so a surface point keeps its canonical coordinates `u` for the whole clip. That gives exact ray casting
(transform the ray into canonical space), exact 3D tracks (map `u` through the pose at time t) and
textures attached to the surface (a solid texture of `u`). Rigid objects change `center`/`rotation`,
deforming ellipsoids change `scale` over time, articulated arms are two boxes whose child pose is the
parent pose composed with a time-varying hinge rotation.

The scene world uses OpenCV-like axes: y points down (floor at y = +FLOOR_Y), the frame-0 camera sits near
the origin and looks along +z. `render_clip` re-expresses everything in frame 0's camera coordinates.
Time is normalised over the clip: tau = t / (T - 1) in [0, 1], so the amount of motion of a preset does
not depend on the number of frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPHERE, BOX, ROOM = 0, 1, 2
FLOOR_Y = 1.5
ROOM_CENTER = np.array([0.0, 0.0, 2.5])
ROOM_HALF = np.array([4.0, 1.5, 5.5])

PRESETS: tuple[str, ...] = ("easy", "occlusion", "fast-motion", "static-scene", "mixed")
CAMERA_PATHS: tuple[str, ...] = ("static", "pan", "forward", "orbit")


@dataclass
class Texture:
    """Parameters of the solid texture of one object (see `texture.py`)."""

    color_a: np.ndarray          # (3,) in [0, 1]
    color_b: np.ndarray          # (3,)
    color_blob: np.ndarray       # (3,)
    checker_freq: float          # checker cells per metre (of the object's reference size)
    noise_freq: float            # noise lattice cells per metre
    offset: np.ndarray           # (3,) texture-space offset (decorrelates objects)


@dataclass
class SceneObject:
    """One primitive with its per-frame pose: `center (T,3)`, `rotation (T,3,3)`, `scale (T,3)`."""

    kind: int                    # SPHERE | BOX | ROOM
    center: np.ndarray
    rotation: np.ndarray
    scale: np.ndarray
    texture: Texture
    name: str = ""
    open_top: bool = False       # ROOM only: no ceiling (rays leaving through it see the sky: no hit)

    @property
    def is_dynamic(self) -> bool:
        """True when the object moves or deforms during the clip."""
        return bool(np.ptp(self.center, axis=0).max() > 1e-9 or np.ptp(self.rotation, axis=0).max() > 1e-9
                    or np.ptp(self.scale, axis=0).max() > 1e-9)

    @property
    def reference_scale(self) -> np.ndarray:
        """`(3,)` frame-0 scale: texture coordinates are `u * reference_scale` (metres at frame 0)."""
        return self.scale[0]


@dataclass
class Scene:
    """A full clip description: objects (index 0 is the room) and camera poses in the scene world."""

    objects: list[SceneObject]
    cam_c2w: np.ndarray          # (T, 4, 4) camera-to-scene-world
    fov_x_deg: float
    camera_path: str
    light_dir: np.ndarray = field(default_factory=lambda: np.array([0.3, -1.0, -0.4]) / np.linalg.norm([0.3, -1.0, -0.4]))
    up_dir: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0, 0.0]))  # world up (y points down)

    @property
    def num_frames(self) -> int:
        return int(self.cam_c2w.shape[0])


def scene_in_camera0(scene: Scene) -> Scene:
    """The same scene with every pose expressed in frame 0's camera coordinates (cam_c2w[0] = I).

    A rigid change of world frame: object centres and rotations, camera poses and the light direction
    are mapped; canonical coordinates (and so textures and tracks) are unchanged.
    """
    w2c0 = np.linalg.inv(scene.cam_c2w[0])
    rot, trans = w2c0[:3, :3], w2c0[:3, 3]
    objects = [SceneObject(o.kind, o.center @ rot.T + trans, rot[None] @ o.rotation, o.scale, o.texture, o.name,
                           o.open_top) for o in scene.objects]
    cam_c2w = w2c0[None] @ scene.cam_c2w
    cam_c2w[0] = np.eye(4)
    return Scene(objects=objects, cam_c2w=cam_c2w, fov_x_deg=scene.fov_x_deg, camera_path=scene.camera_path,
                 light_dir=rot @ scene.light_dir, up_dir=rot @ scene.up_dir)


# ----------------------------------------------------------------------------------------- rotations
def axis_angle_to_matrix(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues: unit `axis (3,)`, `angle (T,)` radians -> `(T, 3, 3)`."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    angle = np.atleast_1d(np.asarray(angle, dtype=np.float64))
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    sin, cos = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3)[None] + sin * skew[None] + (1.0 - cos) * (skew @ skew)[None]


def look_at_c2w(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`(4, 4)` camera-to-world with OpenCV axes looking from `position` at `target` (world y down)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)  # x = down x forward, OpenCV right-handed
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = position
    return c2w


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# ------------------------------------------------------------------------------------------ textures
def _random_texture(rng: np.random.Generator, checker_freq: float | None = None) -> Texture:
    def color() -> np.ndarray:
        hue = rng.uniform(0, 1)
        base = 0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
        return np.clip(0.15 + 0.8 * base * rng.uniform(0.6, 1.0), 0, 1)

    return Texture(color_a=color(), color_b=color() * rng.uniform(0.3, 0.7), color_blob=color(),
                   checker_freq=checker_freq if checker_freq is not None else rng.uniform(2.5, 5.0),
                   noise_freq=rng.uniform(8.0, 14.0), offset=rng.uniform(-50, 50, size=3))


# ------------------------------------------------------------------------------------------- camera
def _camera_path(path: str, tau: np.ndarray, amount: float, rng: np.random.Generator,
                 shake_deg: float = 0.0) -> np.ndarray:
    """`(T, 4, 4)` camera-to-world for a named path; `amount` scales the motion (1 = moderate);
    `shake_deg` adds a fast hand-held rotation jitter (3-5 oscillations over the clip) of that amplitude."""
    start = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.1), 0.0])
    target = np.array([rng.uniform(-0.4, 0.4), rng.uniform(0.0, 0.4), 4.0])
    smooth = 0.5 - 0.5 * np.cos(np.pi * tau)  # ease in / out, 0 -> 1
    sway = 0.03 * amount * np.stack([np.sin(2 * np.pi * 0.7 * tau + rng.uniform(0, 6)),
                                     np.sin(2 * np.pi * 0.9 * tau + rng.uniform(0, 6)),
                                     np.zeros_like(tau)], axis=1)
    poses = []
    direction = rng.choice([-1.0, 1.0])
    for i, s in enumerate(smooth):
        if path == "static":
            c2w = look_at_c2w(start, target)
        elif path == "pan":
            yaw = direction * np.deg2rad(18.0) * amount * s
            aim = start + axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), np.array([yaw]))[0] @ (target - start)
            c2w = look_at_c2w(start + sway[i], aim)
        elif path == "forward":
            step = np.array([0.25 * direction * s, 0.0, 1.4 * amount * s])
            c2w = look_at_c2w(start + step + sway[i], target + np.array([0.0, 0.0, 1.4 * amount * s]))
        elif path == "orbit":
            angle = direction * np.deg2rad(22.0) * amount * s
            rot = axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), np.array([angle]))[0]
            c2w = look_at_c2w(target + rot @ (start - target) + sway[i], target)
        else:
            raise ValueError(f"unknown camera path {path!r}; expected one of {CAMERA_PATHS}")
        poses.append(c2w)
    poses = np.stack(poses)
    if shake_deg > 0:
        freq = rng.uniform(3.0, 5.0, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        angles = np.deg2rad(shake_deg) * (np.sin(2 * np.pi * freq[:, None] * tau[None] + phase[:, None])
                                         - np.sin(phase[:, None]))
        jitter = axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), angles[0]) @ axis_angle_to_matrix(
            np.array([1.0, 0.0, 0.0]), angles[1])
        poses[:, :3, :3] = poses[:, :3, :3] @ jitter   # rotate about the camera's own axes
    return poses


# ------------------------------------------------------------------------------------------ objects
def _static(value: np.ndarray, num_frames: int) -> np.ndarray:
    return np.repeat(np.asarray(value, dtype=np.float64)[None], num_frames, axis=0)


def _spot_in_view(rng: np.random.Generator, cam0: np.ndarray, depth_range: tuple[float, float],
                  size: float) -> np.ndarray:
    """A world position inside frame 0's view at a depth in `depth_range`, above the floor."""
    depth = rng.uniform(*depth_range)
    x_cam = rng.uniform(-0.33, 0.33) * depth
    y_cam = rng.uniform(-0.15, 0.22) * depth
    position = cam0[:3, :3] @ np.array([x_cam, y_cam, depth]) + cam0[:3, 3]
    position[1] = min(position[1], FLOOR_Y - size)
    return position


def _moving_center(rng: np.random.Generator, start: np.ndarray, tau: np.ndarray, speed: float,
                   freq_scale: float = 1.0, wiggle_amp: float | None = None) -> np.ndarray:
    """`(T, 3)` a drift plus a smooth wiggle; `speed` ~ metres drifted over the clip; the wiggle has
    amplitude `wiggle_amp` (default speed / 4) and 0.5-1.5 x `freq_scale` oscillations per clip."""
    drift = rng.normal(size=3) * np.array([1.0, 0.25, 0.6])
    drift *= speed / max(np.linalg.norm(drift), 1e-9)
    freq = rng.uniform(0.5, 1.5, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    amplitude = 0.25 * speed if wiggle_amp is None else wiggle_amp
    wiggle = amplitude * (np.sin(2 * np.pi * freq_scale * freq * tau[:, None] + phase) - np.sin(phase))
    return start[None] + drift[None] * tau[:, None] + wiggle


def _spin(rng: np.random.Generator, tau: np.ndarray, max_angle: float) -> np.ndarray:
    start = _random_rotation(rng)
    angle = rng.uniform(0.5, 1.0) * max_angle * tau
    return axis_angle_to_matrix(rng.normal(size=3), angle) @ start[None]


def _keep_above_floor(center: np.ndarray, radius: float) -> np.ndarray:
    center = center.copy()
    center[:, 1] = np.minimum(center[:, 1], FLOOR_Y - radius)
    return center


def _rigid(rng, tau, cam0, speed, spin, depth_range=(2.5, 5.5), **wiggle) -> SceneObject:
    kind = int(rng.choice([SPHERE, BOX]))
    half = rng.uniform(0.25, 0.5, size=3) if kind == BOX else np.full(3, rng.uniform(0.3, 0.55))
    radius = float(np.linalg.norm(half) if kind == BOX else half[0])
    center = _moving_center(rng, _spot_in_view(rng, cam0, depth_range, radius), tau, speed, **wiggle)
    return SceneObject(kind, _keep_above_floor(center, radius), _spin(rng, tau, spin),
                       _static(half, len(tau)), _random_texture(rng), name="rigid")


def _deforming(rng, tau, cam0, speed, spin, depth_range=(2.5, 5.5), **wiggle) -> SceneObject:
    """An ellipsoid whose three axes oscillate over time (exact non-rigid motion)."""
    axes0 = rng.uniform(0.3, 0.6, size=3)
    amplitude = rng.uniform(0.2, 0.4, size=3)
    freq = rng.uniform(0.8, 2.0, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    scale = axes0[None] * (1.0 + amplitude * (np.sin(2 * np.pi * freq * tau[:, None] + phase) - np.sin(phase)) * 0.8)
    scale = np.maximum(scale, 0.12)
    radius = float(scale.max())
    center = _moving_center(rng, _spot_in_view(rng, cam0, depth_range, radius), tau, speed, **wiggle)
    return SceneObject(SPHERE, _keep_above_floor(center, radius), _spin(rng, tau, spin), scale,
                       _random_texture(rng), name="deforming")


def _articulated(rng, tau, cam0, speed, swing, **wiggle) -> list[SceneObject]:
    """Two boxes: a parent moving rigidly and a child swinging about a hinge at the parent's end."""
    parent_half = np.array([rng.uniform(0.35, 0.5), rng.uniform(0.1, 0.16), rng.uniform(0.1, 0.16)])
    child_half = np.array([rng.uniform(0.3, 0.45), rng.uniform(0.08, 0.13), rng.uniform(0.08, 0.13)])
    radius = float(np.linalg.norm(parent_half) + 2 * child_half[0])
    start = _spot_in_view(rng, cam0, (3.0, 5.0), radius)
    parent_center = _keep_above_floor(_moving_center(rng, start, tau, speed, **wiggle), 0.4)
    base = axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.array([rng.uniform(-0.6, 0.6)]))[0]
    parent_rot = axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), rng.uniform(-0.8, 0.8) * swing * tau) @ base[None]
    hinge_axis = np.array([0.0, rng.uniform(-0.3, 0.3), 1.0])
    joint_angle = rng.uniform(0.3, 0.7) * swing * np.sin(2 * np.pi * rng.uniform(0.7, 1.3) * tau)
    joint_rot = axis_angle_to_matrix(hinge_axis, joint_angle)
    hinge_local = np.array([parent_half[0], 0.0, 0.0])
    child_offset = np.array([child_half[0], 0.0, 0.0])
    child_rot = parent_rot @ joint_rot
    child_center = parent_center + np.einsum("tij,j->ti", parent_rot, hinge_local) \
        + np.einsum("tij,j->ti", child_rot, child_offset)
    T = len(tau)
    parent = SceneObject(BOX, parent_center, parent_rot, _static(parent_half, T), _random_texture(rng), "arm-parent")
    child = SceneObject(BOX, child_center, child_rot, _static(child_half, T), _random_texture(rng), "arm-child")
    return [parent, child]


def _occluder(rng, tau, cam0, speed) -> SceneObject:
    """A tall box crossing the view close to the camera, in front of the other objects."""
    T = len(tau)
    depth = rng.uniform(1.6, 2.2)
    side = rng.choice([-1.0, 1.0])
    x_cam = side * (0.45 * depth) - side * (0.9 * depth) * speed * tau
    y_cam = np.full(T, rng.uniform(-0.05, 0.1) * depth)
    cam_pts = np.stack([x_cam, y_cam, np.full(T, depth)], axis=1)
    center = cam_pts @ cam0[:3, :3].T + cam0[:3, 3]
    half = np.array([rng.uniform(0.12, 0.22), rng.uniform(0.4, 0.7), rng.uniform(0.12, 0.22)])
    rot = axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 1) + 1.5 * tau)
    return SceneObject(BOX, _keep_above_floor(center, half[1]), rot, _static(half, T),
                       _random_texture(rng), name="occluder")


def _furniture(rng, T, cam0) -> SceneObject:
    """A static box standing on the floor."""
    half = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.8)])
    position = _spot_in_view(rng, cam0, (3.0, 7.0), 0.0)
    position[1] = FLOOR_Y - half[1]
    position[0] = np.clip(position[0], -3.0, 3.0)
    rot = axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), np.array([rng.uniform(0, np.pi)]))[0]
    return SceneObject(BOX, _static(position, T), _static(rot, T), _static(half, T),
                       _random_texture(rng), name="furniture")


def _room(rng, T, open_top: bool = False) -> SceneObject:
    return SceneObject(ROOM, _static(ROOM_CENTER, T), _static(np.eye(3), T), _static(ROOM_HALF, T),
                       _random_texture(rng, checker_freq=rng.uniform(1.0, 2.0)), name="room", open_top=open_top)


# ------------------------------------------------------------------------------------------ presets
def build_scene(preset: str, seed: int, num_frames: int) -> Scene:
    """Sample the scene of a preset: `easy`, `occlusion`, `fast-motion`, `static-scene` or `mixed`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    rng = np.random.default_rng([seed, PRESETS.index(preset)])
    tau = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    fov = 60.0
    shake_deg, wiggle, open_top = 0.0, {}, False
    if preset == "easy":
        path, cam_amount = str(rng.choice(["static", "pan", "orbit"])), 0.5
        speed, spin, counts = 0.5, 0.8, dict(rigid=1, deforming=1, articulated=1, furniture=2, occluder=0)
    elif preset == "occlusion":
        path, cam_amount = str(rng.choice(["static", "pan"])), 0.6
        speed, spin, counts = 0.8, 1.2, dict(rigid=2, deforming=1, articulated=1, furniture=2, occluder=2)
    elif preset == "fast-motion":
        # large per-frame displacements: a quick pan/orbit with hand-held shake, objects that drift and
        # oscillate 1.5-4.5 times per clip (peaks of ~0.5 m per frame at 32 frames) while spinning
        path, cam_amount, shake_deg = str(rng.choice(["pan", "orbit"])), 2.5, 1.5
        speed, spin, counts = 2.0, 8.0, dict(rigid=2, deforming=1, articulated=1, furniture=2, occluder=0)
        wiggle = dict(freq_scale=3.0, wiggle_amp=0.6)
    elif preset == "static-scene":
        path, cam_amount = str(rng.choice(["pan", "forward", "orbit"])), 1.0
        speed, spin, counts = 0.0, 0.0, dict(rigid=3, deforming=0, articulated=0, furniture=3, occluder=0)
    else:  # mixed
        path, cam_amount = str(rng.choice(CAMERA_PATHS)), float(rng.uniform(0.3, 1.5))
        speed, spin = float(rng.uniform(0.2, 2.0)), float(rng.uniform(0.3, 3.0))
        fov = float(rng.uniform(45.0, 75.0))
        counts = dict(rigid=int(rng.integers(1, 4)), deforming=int(rng.integers(0, 3)),
                      articulated=int(rng.integers(0, 2)), furniture=int(rng.integers(0, 4)),
                      occluder=int(rng.integers(0, 2)) if path in ("static", "pan") else 0)
        open_top = bool(rng.uniform() < 0.35)  # a courtyard: sky (no depth) above the walls
    cam_c2w = _camera_path(path, tau, cam_amount, rng, shake_deg)
    cam0 = cam_c2w[0]
    objects = [_room(rng, num_frames, open_top)]
    objects += [_furniture(rng, num_frames, cam0) for _ in range(counts["furniture"])]
    for _ in range(counts["rigid"]):
        if speed == 0.0:  # static scene: rigid objects stay put
            obj = _rigid(rng, tau, cam0, 0.0, 0.0)
        else:
            obj = _rigid(rng, tau, cam0, speed * rng.uniform(0.6, 1.2), spin, **wiggle)
        objects.append(obj)
    for _ in range(counts["deforming"]):
        objects.append(_deforming(rng, tau, cam0, speed * rng.uniform(0.5, 1.0), spin, **wiggle))
    for _ in range(counts["articulated"]):
        objects += _articulated(rng, tau, cam0, speed * 0.5, max(spin, 1.0), **wiggle)
    for _ in range(counts["occluder"]):
        objects.append(_occluder(rng, tau, cam0, rng.uniform(0.8, 1.1)))
    return Scene(objects=objects, cam_c2w=cam_c2w, fov_x_deg=fov, camera_path=path)
