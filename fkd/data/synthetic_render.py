"""Procedural 68-point (300W order) face renderer for the embedded `synthetic_faces` dataset.

A 3-D template of the 68 300W points (plus a forehead/hair outline, ears, neck) is varied by
identity and expression, rotated (yaw, pitch, roll), projected with a weak perspective and placed
in the image. Every drawn part is built from the landmarks (skin silhouette = jaw 0–16 plus a
forehead arc, brows through 17–26, sclera polygons through 36–47, nose along 27–35, lips through
48–67), so the landmarks can be learnt from the pixels. Nuisances: colours, background clutter,
directional shading, global brightness/contrast/gamma, blur, noise and occlusion.

Coordinates are 0-based pixels with pixel centres at integers (method.md §1.2). Drawing happens at
`_SS`× resolution and is box-downsampled; a point x maps to (x + ½)·_SS − ½ on the canvas.

Everything is deterministic given the generator. `render_face` first calls `sample_geometry`
(which consumes the same draws as `sample_landmarks`) and only then samples appearance, so
`sample_landmarks(np.random.default_rng(s), n)` equals
`render_face(np.random.default_rng(s), n)[1]`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

_SS = 3  # supersampling factor
_NUM_FOREHEAD = 11
_FOCAL = 8.0  # camera distance in face half-widths (weak perspective)
_PIVOT = np.array([0.0, 0.6, -0.6])  # head rotation centre (head frame: x right, y down, z out)

# 300W part index ranges.
JAW = list(range(0, 17))
BROW_L, BROW_R = list(range(17, 22)), list(range(22, 27))
NOSE_BRIDGE, NOSE_BOTTOM = list(range(27, 31)), list(range(31, 36))
EYE_L, EYE_R = list(range(36, 42)), list(range(42, 48))
LIPS_OUT, LIPS_IN = list(range(48, 60)), list(range(60, 68))


@dataclasses.dataclass
class FaceGeometry:
  """Projected geometry of one face, in output-image pixels.

  Attributes:
    landmarks: (68, 2) float32, 300W order.
    forehead: (F, 2) forehead arc from the image-left temple to the image-right one.
    hair: (H, 2) hair outline polygon or None (bald).
    ears: two (E, 2) ear polygons (image-left, image-right).
    neck: (4, 2) neck quad; shoulders: (4, 2) clothes quad.
    unit: pixels per template unit (face half-width) at the face's depth.
    mouth_open: lip gap in template units.
    gaze: (2,) iris offset as a fraction of the eye half-width.
    yaw: radians (positive turns the nose to image-right).
  """

  landmarks: np.ndarray
  forehead: np.ndarray
  hair: np.ndarray | None
  ears: list[np.ndarray]
  neck: np.ndarray
  shoulders: np.ndarray
  unit: float
  mouth_open: float
  gaze: np.ndarray
  yaw: float


# ------------------------------------------------------------------------------------------------
# Geometry.


def _u(rng, lo, hi):
  return float(rng.uniform(lo, hi))


def _tnorm(rng, sigma, lim):
  return float(np.clip(rng.normal(0.0, sigma), -lim, lim))


# Template tables. Eyes: image-left eye 36..41 as (x along the eye in half-widths, outward = −1;
# y offset; y coefficient of the lid height h; z). The image-right eye mirrors it with 39<->42,
# 38<->43, 37<->44, 36<->45, 41<->46, 40<->47.
_EYE = np.array(
  [
    [-1.0, 0.012, 0.0, -0.12],
    [-0.35, 0.0, -1.0, 0.02],
    [0.3, 0.0, -1.0, 0.02],
    [1.0, 0.02, 0.0, -0.02],
    [0.3, 0.0, 0.6, 0.0],
    [-0.35, 0.0, 0.6, -0.02],
  ]
)
_EYE_MIRROR = [3, 2, 1, 0, 5, 4]
_BROW_T = np.linspace(0.0, 1.0, 5)  # outer -> inner
_NOSE_T = np.linspace(0.0, 1.0, 4)
# Lips 48..67: (x in mouth half-widths, y in lip-thickness units, opening coefficient, z).
_LIP_X = np.array(
  [
    -1.0,
    -0.63,
    -0.25,
    0.0,
    0.25,
    0.63,
    1.0,
    0.65,
    0.3,
    0.0,
    -0.3,
    -0.65,
    -0.85,
    -0.3,
    0.0,
    0.3,
    0.85,
    0.3,
    0.0,
    -0.3,
  ]
)
_LIP_Y = np.array(
  [
    0.0,
    -0.75,
    -1.0,
    -0.8,
    -1.0,
    -0.75,
    0.0,
    0.75,
    0.95,
    1.0,
    0.95,
    0.75,
    0.0,
    -0.15,
    -0.1,
    -0.15,
    0.0,
    0.15,
    0.1,
    0.15,
  ]
)
_LIP_GAP = np.array([0.0] * 7 + [0.7, 0.95, 1.0, 0.95, 0.7] + [0.0] * 5 + [0.85, 1.0, 0.85])
_LIP_Z = np.array([0.08] * 12 + [0.06] * 8) + np.array([0.24] * 7 + [0.2] * 5 + [0.18] * 8) * (
  1 - np.abs(_LIP_X)
)
_JAW_TH = np.pi * np.arange(17) / 16
_JAW_SIDE = np.sign(np.arange(17) - 8.0)
_JAW_OPEN = np.clip(1 - np.abs(np.arange(17) - 8) / 4.5, 0, 1) ** 1.2 * 0.85
_FOREHEAD_AL = np.pi * np.arange(1, _NUM_FOREHEAD + 1) / (_NUM_FOREHEAD + 1)
_HAIR_AL = np.linspace(0, np.pi, 15)
_EAR_BE = np.linspace(0, 2 * np.pi, 12, endpoint=False)
_RAMP256 = np.linspace(0.0, 1.0, 256)[:, None]
_DISC_S = np.linspace(-1.0, 1.0, 13)
_TEETH_S = np.linspace(-0.5, 0.5, 12)


def _template(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
  """Samples identity and expression; returns the (68, 3) head-frame points and extras.

  Head frame: x to image-right, y down, z towards the camera; units of the face half-width.
  """
  # Identity.
  jaw_w = _u(rng, 0.9, 1.08)
  jaw_p = _u(rng, 0.55, 0.95)  # jaw squareness (smaller = squarer)
  chin_y = 1.6 * _u(rng, 0.9, 1.1)
  eye_y = _u(rng, -0.06, 0.06)
  eye_x = 0.44 * _u(rng, 0.88, 1.12)
  eye_hw = 0.17 * _u(rng, 0.8, 1.15)
  brow_h = _u(rng, 0.85, 1.2)
  brow_w = _u(rng, 0.85, 1.15)
  nose_len = _u(rng, 0.85, 1.15)
  nose_w = _u(rng, 0.8, 1.3)
  mouth_w = 0.37 * _u(rng, 0.8, 1.2)
  lip_up = 0.08 * _u(rng, 0.6, 1.5)
  lip_lo = 0.12 * _u(rng, 0.6, 1.5)
  forehead_h = _u(rng, 0.85, 1.15)
  # Expression.
  gap = _u(rng, 0.0, 0.4) if rng.random() < 0.4 else 0.0
  smile = _u(rng, -0.4, 1.0)
  eye_open = _u(rng, 0.15, 1.3) if rng.random() < 0.1 else _u(rng, 0.7, 1.3)
  eye_open = np.clip(eye_open + rng.normal(0, 0.08, 2), 0.05, 1.4)
  brow_up = rng.uniform(-0.05, 0.12, 2) + _u(rng, -0.04, 0.1)
  gaze = rng.uniform(-0.3, 0.3, 2) * [1.0, 0.4]

  p = np.zeros((68, 3))
  # Jaw: cross-section half-width a, frontal contour depth zc and half-depth c (silhouette model).
  t = np.sin(_JAW_TH)
  a = jaw_w * np.abs(np.cos(_JAW_TH)) ** jaw_p
  p[JAW, 0] = _JAW_SIDE * a
  p[JAW, 1] = eye_y * 0.5 + (chin_y - eye_y * 0.5) * t**1.15 + gap * _JAW_OPEN
  jaw_zc = -0.45 + 0.6 * t**2
  jaw_c = 0.6 * (1 - 0.7 * t)
  p[JAW, 2] = jaw_zc
  p[8, 2] = jaw_zc[8] + jaw_c[8]
  # Eyes.
  for side, idx, h in ((-1.0, EYE_L, eye_open[0]), (1.0, EYE_R, eye_open[1])):
    e = _EYE if side < 0 else _EYE[_EYE_MIRROR]
    p[idx, 0] = side * (eye_x - e[:, 0] * eye_hw)
    p[idx, 1] = eye_y + e[:, 1] + e[:, 2] * 0.075 * h
    p[idx, 2] = e[:, 3]
  # Brows (17 outer ... 21 inner; 22 inner ... 26 outer).
  tt = _BROW_T
  arch = brow_h * (0.22 + 0.12 * np.sin(np.pi * (0.1 + 0.8 * tt)) - 0.07 * (1 - tt) ** 2)
  for side, idx, up in ((-1.0, BROW_L, brow_up[0]), (1.0, BROW_R[::-1], brow_up[1])):
    p[idx, 0] = side * (eye_x + (0.36 - 0.64 * tt) * brow_w)
    p[idx, 1] = eye_y - arch - up
    p[idx, 2] = 0.1 * tt
  # Nose.
  tip_y = eye_y + 0.49 * nose_len
  p[NOSE_BRIDGE, 1] = eye_y - 0.03 + (tip_y - eye_y + 0.03) * _NOSE_T
  p[NOSE_BRIDGE, 2] = (0.08 + 0.14 * np.arange(4)) * nose_len
  nb_y = tip_y + 0.12 * nose_len
  p[NOSE_BOTTOM] = np.array(
    [
      [-0.19 * nose_w, nb_y, 0.2],
      [-0.1 * nose_w, nb_y + 0.035, 0.3],
      [0.0, nb_y + 0.06, 0.38],
      [0.1 * nose_w, nb_y + 0.035, 0.3],
      [0.19 * nose_w, nb_y, 0.2],
    ]
  )
  # Lips (smile lifts and widens the corners; `gap` opens the mouth and drops the chin).
  my = nb_y + 0.06 + (chin_y - nb_y) * _u(rng, 0.27, 0.35)
  lift = 0.07 * smile
  mw = mouth_w + 0.05 * max(smile, 0.0)
  thick = np.concatenate([np.full(7, lip_up), np.full(5, lip_lo), np.full(8, 0.1 * lip_up)])
  p[48:68, 0] = _LIP_X * mw
  p[48:68, 1] = my + _LIP_Y * thick + gap * _LIP_GAP - lift * np.abs(_LIP_X) ** 3
  p[48:68, 2] = _LIP_Z

  # Forehead arc between the temples (landmarks 0 and 16 excluded), head-frame front surface.
  fx = -np.cos(_FOREHEAD_AL) * jaw_w * 0.99
  fy = p[0, 1] - (p[0, 1] - eye_y + 0.95 * forehead_h) * np.sin(_FOREHEAD_AL) ** 0.8
  forehead = np.stack([fx, fy, -0.45 + 0.6 * np.sqrt(np.clip(1 - (fx / jaw_w) ** 2, 0, 1))], 1)

  extras = dict(
    a=a,
    zc=jaw_zc,
    c=jaw_c,
    forehead=forehead,
    jaw_w=jaw_w,
    gap=gap,
    gaze=gaze,
    eye_y=eye_y,
    chin_y=chin_y,
  )
  return p, extras


def _silhouette(a, zc, c, side, yaw):
  """Head-frame point of an elliptic cross-section (half-width a, centre zc, half-depth c) that
  lies on the silhouette on `side` after a rotation by `yaw` about the vertical axis."""
  ca, sa = np.cos(yaw), np.sin(yaw)
  n = np.sqrt((a * ca) ** 2 + (c * sa) ** 2) + 1e-9
  return side * a**2 * ca / n, zc + side * c**2 * sa / n


def _rotation(yaw, pitch, roll):
  cy, sy = np.cos(yaw), np.sin(yaw)
  cp, sp = np.cos(pitch), np.sin(pitch)
  cr, sr = np.cos(roll), np.sin(roll)
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # x' = x cos + z sin
  rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
  rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
  return rz @ rx @ ry


def sample_geometry(rng: np.random.Generator, size: int = 128) -> FaceGeometry:
  """Samples identity, expression, pose and placement; returns projected geometry in pixels."""
  p, ex = _template(rng)
  yaw = np.deg2rad(_tnorm(rng, 16.0, 35.0))
  pitch = np.deg2rad(_tnorm(rng, 9.0, 20.0))
  roll = np.deg2rad(_tnorm(rng, 11.0, 30.0))
  width_frac = _u(rng, 0.35, 0.75)  # face width / image width
  shift = rng.normal(0.0, 1.0, 2)
  hair_style = int(rng.integers(0, 4))  # 0 bald, 1 short, 2 medium, 3 long
  hair_vol = _u(rng, 0.05, 0.3)
  jw, eye_y, chin_y = ex['jaw_w'], ex['eye_y'], ex['chin_y']

  # Silhouette correction (yaw only) for the jaw and, blended towards the temples, the forehead.
  sx, sz = _silhouette(ex['a'], ex['zc'], ex['c'], _JAW_SIDE, yaw)
  jaw = np.flatnonzero(_JAW_SIDE != 0)
  p[jaw, 0], p[jaw, 2] = sx[jaw], sz[jaw]
  fh = ex['forehead']
  fsx, fsz = _silhouette(np.abs(fh[:, 0]), -0.45, 0.6, np.sign(fh[:, 0]), yaw)
  w = (np.abs(fh[:, 0]) / jw) ** 3
  fh[:, 0] += w * (fsx - fh[:, 0])
  fh[:, 2] += w * (fsz - fh[:, 2])

  # Hair outline (drawn behind the skin): an arc over the head, down the sides.
  parts = {'landmarks': p, 'forehead': fh}
  if hair_style > 0:
    top = fh[:, 1].min() - 0.2 - hair_vol
    bottom = (-0.1, 0.5, 1.8)[hair_style - 1] + eye_y
    hw = jw * (1.05 + 0.8 * hair_vol)
    hx, hy = -np.cos(_HAIR_AL) * hw, p[0, 1] - (p[0, 1] - top) * np.sin(_HAIR_AL) ** 0.7
    hxs, hzs = _silhouette(np.abs(hx), -0.5, 0.7, np.sign(hx), yaw)
    hz = -0.5 + 0.7 * np.sqrt(np.clip(1 - (hx / hw) ** 2, 0, 1))
    wh = (np.abs(hx) / hw) ** 2
    arc = np.stack([hx + wh * (hxs - hx), hy, hz + wh * (hzs - hz)], 1)
    inner_w = jw * (0.75 if hair_style == 3 else 0.95)
    parts['hair'] = np.concatenate(
      [
        [[-inner_w, bottom, -0.6], [arc[0, 0], bottom, arc[0, 2]]],
        arc,
        [[arc[-1, 0], bottom, arc[-1, 2]], [inner_w, bottom, -0.6]],
      ]
    )
  for name, s in (('ear_l', -1), ('ear_r', 1)):
    parts[name] = np.stack(
      [
        s * (jw * 0.97 + 0.07 * (1 + np.cos(_EAR_BE))),
        0.25 + eye_y + 0.27 * np.sin(_EAR_BE),
        -0.62 + 0.14 * np.cos(_EAR_BE),
      ],
      1,
    )
  nx = 0.45 * jw
  parts['neck'] = np.array(
    [[-nx, 0.8, -0.45], [nx, 0.8, -0.45], [nx * 1.05, 3.0, -0.45], [-nx * 1.05, 3.0, -0.45]]
  )
  parts['shoulders'] = np.array(
    [
      [-nx * 1.1, chin_y + 0.55, -0.4],
      [nx * 1.1, chin_y + 0.55, -0.4],
      [3.0, chin_y + 1.5, -0.4],
      [-3.0, chin_y + 1.5, -0.4],
    ]
  )

  # Rotate about the pivot, project (weak perspective) and place in the image.
  q = np.concatenate(list(parts.values()))
  q = (q - _PIVOT) @ _rotation(yaw, pitch, roll).T + _PIVOT
  q = q[:, :2] * (_FOCAL / (_FOCAL - q[:, 2:3]))
  lm = q[:68]
  lo, hi = lm.min(0), lm.max(0)
  unit = width_frac * size / 2.0  # pixels per template unit
  room = np.maximum(size / 2.0 - 0.8 * (hi - lo) / 2.0 * unit, 0.0)  # keep most of the box inside
  pos = size / 2.0 - 0.5 + np.clip(shift * 0.05 * size, -room, room)
  q = ((q - (lo + hi) / 2.0) * unit + pos).astype(np.float32)
  out, i = {}, 0
  for name, v in parts.items():
    out[name], i = q[i : i + len(v)], i + len(v)

  return FaceGeometry(
    landmarks=out['landmarks'],
    forehead=out['forehead'],
    hair=out.get('hair'),
    ears=[out['ear_l'], out['ear_r']],
    neck=out['neck'],
    shoulders=out['shoulders'],
    unit=float(unit),
    mouth_open=float(ex['gap']),
    gaze=np.asarray(ex['gaze']),
    yaw=float(yaw),
  )


def sample_landmarks(rng: np.random.Generator, size: int = 128) -> np.ndarray:
  """The (68, 2) float32 landmarks `render_face` would produce with the same generator state."""
  return sample_geometry(rng, size).landmarks


# ------------------------------------------------------------------------------------------------
# Appearance.

_SKIN = np.array(
  [[255, 224, 196], [234, 189, 157], [198, 144, 110], [150, 100, 70], [96, 62, 44], [62, 42, 32]],
  np.float64,
)
_HAIR = np.array(
  [
    [20, 16, 14],
    [55, 38, 26],
    [105, 72, 45],
    [190, 160, 105],
    [150, 70, 35],
    [160, 160, 160],
    [230, 225, 215],
  ],
  np.float64,
)
_IRIS = np.array(
  [[70, 45, 25], [110, 75, 40], [60, 100, 150], [80, 120, 80], [40, 30, 25]], np.float64
)


def _col(c) -> tuple[int, int, int]:
  r, g, b = (min(max(int(v), 0), 255) for v in c)
  return r, g, b


def _rand_col(rng) -> tuple[int, int, int]:
  return _col(rng.uniform(0, 255, 3))


def _jit(rng, c, s):
  return np.asarray(c, np.float64) + rng.normal(0, s, 3)


def _cvp(q) -> np.ndarray:
  """Output pixels -> PIL canvas coordinates.

  The canvas pixel-centre coordinate is (x + ½)·_SS − ½. PIL fills polygons in a pixel-corner
  convention and floors ellipse/line coordinates, both ½ canvas pixel low on average, hence + ½.
  """
  return (np.asarray(q, np.float64) + 0.5) * _SS


def _lw(px: float) -> int:
  """Odd canvas line width (PIL centres odd widths) for a width in output pixels."""
  return 2 * int(max(px, 0.0) * _SS / 2) + 1


def _cv(q) -> list[float]:
  """Flat PIL canvas coordinates [x0, y0, x1, ...]."""
  return _cvp(q).ravel().tolist()


@functools.cache
def _catmull_rom_matrix(k: int, closed: bool, n: int) -> np.ndarray:
  """(L, k) matrix resampling k points to a Catmull-Rom spline with n samples per segment."""
  t = np.linspace(0, 1, n, endpoint=False)[:, None]
  w = 0.5 * np.concatenate(
    [-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3], 1
  )  # (n, 4)
  segs = k if closed else k - 1
  m = np.zeros((segs * n + (0 if closed else 1), k))
  for i in range(segs):
    for j in range(4):
      col = (i - 1 + j) % k if closed else min(max(i - 1 + j, 0), k - 1)
      m[i * n : (i + 1) * n, col] += w[:, j]
  if not closed:
    m[-1, k - 1] = 1.0
  return m


def _smooth(q: np.ndarray, closed: bool, n: int = 4) -> np.ndarray:
  """Catmull-Rom resampling of a polyline through the points (keeps the points)."""
  q = np.asarray(q, np.float64)
  return _catmull_rom_matrix(len(q), closed, n) @ q


def _background(rng, size: int) -> Image.Image:
  """Random gradient (optionally blotchy) plus clutter shapes, at the canvas resolution."""
  r = np.linspace(0.0, 1.0, size, dtype=np.float32)
  ang = rng.uniform(0, 2 * np.pi)
  ca, sa = np.cos(ang), np.sin(ang)
  g = (ca * r[None, :] + sa * r[:, None] - min(ca, 0) - min(sa, 0)) / (abs(ca) + abs(sa))
  if rng.random() < 0.3:  # low-frequency blotches
    n = -(-size // 16)
    blot = rng.normal(0, 0.15, (n, n)).repeat(16, 0).repeat(16, 1)[:size, :size]
    g = g + blot.astype(np.float32)
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  lut = (c0 + _RAMP256 * (c1 - c0)).astype(np.uint8)  # (256, 3)
  img = np.take(lut, np.clip(g * 255.0, 0, 255).astype(np.uint8), axis=0)
  big = size * _SS
  canvas = Image.fromarray(img).resize((big, big), Image.NEAREST)
  d = ImageDraw.Draw(canvas)
  for _ in range(rng.integers(3, 10)):
    skin_like = rng.random() < 0.2
    col = _col(_jit(rng, _SKIN[rng.integers(len(_SKIN))], 20)) if skin_like else _rand_col(rng)
    kind = rng.integers(0, 5)
    c = rng.uniform(-0.1, 1.1, 2) * big
    r = rng.uniform(0.03, 0.35, 2) * big
    box = [c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]]
    if kind == 0:
      d.rectangle(box, fill=col)
    elif kind == 1:
      d.ellipse(box, fill=col)
    elif kind == 2:
      d.polygon((c + rng.uniform(-1, 1, (rng.integers(3, 6), 2)) * r).ravel().tolist(), fill=col)
    elif kind == 3:
      d.line(
        (rng.uniform(-0.1, 1.1, (rng.integers(2, 5), 2)) * big).ravel().tolist(),
        fill=col,
        width=_lw(rng.uniform(0.5, 5)),
      )
    else:  # stripes
      ang = rng.uniform(0, np.pi)
      step = rng.uniform(0.02, 0.06) * big
      u = np.array([np.cos(ang), np.sin(ang)]) * big * 0.3
      v = np.array([-np.sin(ang), np.cos(ang)]) * step
      for k in range(-4, 5):
        d.line([*(c + v * k - u), *(c + v * k + u)], fill=col, width=max(1, int(step / 3)))
  return canvas


def _offset_band(q: np.ndarray, th: np.ndarray) -> np.ndarray:
  """Polygon around the polyline q (K, 2) with per-point thickness th (K,)."""
  tan = np.gradient(q, axis=0)
  nrm = np.stack([-tan[:, 1], tan[:, 0]], 1) / (np.linalg.norm(tan, axis=1, keepdims=True) + 1e-9)
  return np.concatenate([q + nrm * th[:, None] / 2, (q - nrm * th[:, None] / 2)[::-1]])


def _frame(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """Frame at the midpoint of a, b: unit axis e (pointing right), normal n (down), length."""
  w = float(np.linalg.norm(b - a))
  e = (b - a) / (w + 1e-9)
  e = e if e[0] >= 0 else -e
  return (a + b) / 2, e, np.array([-e[1], e[0]]), w


def _between(
  upper: np.ndarray,
  lower: np.ndarray,
  frame,
  s: np.ndarray,
  top: np.ndarray,
  bot: np.ndarray | None = None,
  depth: float | None = None,
) -> np.ndarray:
  """Polygon of the shape top(s) < t < bot(s) clipped to the region between two curves.

  Args:
    upper, lower: the region's bounding curves in pixels.
    frame: (origin, e, n, _) from `_frame`; s runs along e and t along n.
    s: sample positions along e.
    top, bot: the shape's bounds in t at s; with `depth`, bot = upper(s) + depth instead.

  Returns:
    (2L, 2) polygon in pixels (degenerate where the shape is outside the region).
  """
  o, e, n, _ = frame
  us, ut = (upper - o) @ e, (upper - o) @ n
  ls, lt = (lower - o) @ e, (lower - o) @ n
  iu, il = np.argsort(us), np.argsort(ls)
  s = np.clip(s, max(us.min(), ls.min()), min(us.max(), ls.max()))
  tu = np.interp(s, us[iu], ut[iu])
  bot = tu + depth if depth is not None else bot
  t0 = np.maximum(top, tu)
  t1 = np.maximum(np.minimum(bot, np.interp(s, ls[il], lt[il])), t0)
  ss, tt = np.concatenate([s, s[::-1]]), np.concatenate([t0, t1[::-1]])
  return o + ss[:, None] * e + tt[:, None] * n


@dataclasses.dataclass
class _Palette:
  skin: np.ndarray  # float RGB
  hair: tuple
  lip: tuple
  iris: tuple
  brow: tuple
  cloth: tuple
  sclera: tuple


def _sample_palette(rng) -> _Palette:
  skin = _jit(rng, _SKIN[0] + (_SKIN[-1] - _SKIN[0]) * rng.beta(1.2, 1.5), 10)
  hair = _col(_jit(rng, _HAIR[rng.integers(len(_HAIR))], 12))
  return _Palette(
    skin=skin,
    hair=hair,
    lip=_col(_jit(rng, skin * 0.6 + np.array([175, 60, 70]) * 0.4, 12)),
    iris=_col(_jit(rng, _IRIS[rng.integers(len(_IRIS))], 12)),
    brow=_col(
      np.array(hair) * rng.uniform(0.5, 0.9)
      if rng.random() < 0.6
      else skin * rng.uniform(0.25, 0.6)
    ),
    cloth=_rand_col(rng),
    sclera=_col(_jit(rng, [235, 230, 225], 8) * rng.uniform(0.8, 1.0)),
  )


def _draw_head(d, dm, g: FaceGeometry, pal: _Palette, rng) -> None:
  """Clothes, hair, neck and ears (behind), then the skin: jaw 0..16 + forehead arc."""
  lm, skin = g.landmarks, pal.skin
  d.polygon(_cv(g.shoulders), fill=pal.cloth)
  if g.hair is not None:
    d.polygon(_cv(_smooth(g.hair, closed=True, n=3)), fill=pal.hair)
  d.polygon(_cv(g.neck), fill=_col(skin * rng.uniform(0.55, 0.8)))
  for ear in g.ears:
    d.polygon(_cv(ear), fill=_col(skin * 0.9))
    dm.polygon((ear + 0.5).ravel().tolist(), fill=255)
  outline = _smooth(np.concatenate([lm[JAW], g.forehead[::-1]]), closed=True, n=3)
  d.polygon(_cv(outline), fill=_col(skin))
  dm.polygon((outline + 0.5).ravel().tolist(), fill=255)
  if rng.random() < 0.5:  # jaw-line shadow
    d.line(
      _cv(_smooth(lm[2:15], closed=False, n=3)), fill=_col(skin * 0.72), width=_lw(0.02 * g.unit)
    )


def _draw_brows(d, g: FaceGeometry, pal: _Palette, rng) -> None:
  """Tapered bands centred on 17..21 and 22..26 (thicker at the inner ends)."""
  bt = rng.uniform(0.05, 0.11) * g.unit
  taper = 0.55 + 0.45 * _smooth(_BROW_T[:, None], closed=False, n=3)[:, 0]  # outer -> inner
  for idx, tp in ((BROW_L, taper), (BROW_R, taper[::-1])):
    q = _smooth(g.landmarks[idx], closed=False, n=3)
    d.polygon(_cv(_offset_band(q, tp * bt)), fill=pal.brow)


def _draw_eyes(d, g: FaceGeometry, pal: _Palette) -> None:
  """Sclera polygon through the 6 eye points, iris and pupil clipped to it, lid lines."""
  u, lid = g.unit, _col(pal.skin * 0.3)
  for idx in (EYE_L, EYE_R):
    eye = g.landmarks[idx]
    upper = _smooth(eye[[0, 1, 2, 3]], closed=False, n=3)
    lower = _smooth(eye[[3, 4, 5, 0]], closed=False, n=3)
    d.polygon(_cv(np.concatenate([upper, lower[1:-1]])), fill=pal.sclera)
    frame = _frame(eye[0], eye[3])
    w = frame[3]
    c = np.array([g.gaze[0] * 0.5 * w, g.gaze[1] * 0.25 * w])
    for r, col in ((max(0.27 * w, 0.09 * u), pal.iris), (max(0.12 * w, 0.04 * u), (15, 10, 10))):
      s = c[0] + r * _DISC_S
      h = np.sqrt(np.clip(r**2 - (s - c[0]) ** 2, 0, None))
      d.polygon(_cv(_between(upper, lower, frame, s, c[1] - h, c[1] + h)), fill=col)
    d.line(_cv(upper), fill=lid, width=_lw(0.028 * u), joint='curve')
    d.line(_cv(lower), fill=lid, width=_lw(0.01 * u))


def _draw_nose(d, g: FaceGeometry, pal: _Palette) -> None:
  """Ridge highlight and side shadow along 27..30, wings, nose bottom 31..35 and nostrils."""
  lm, u, skin = g.landmarks, g.unit, pal.skin
  shade = _col(skin * 0.72)
  nw = _lw(0.035 * u)
  ridge = lm[NOSE_BRIDGE]
  side = -1.0 if g.yaw > 0 else 1.0
  d.line(_cv(ridge[1:] + [side * 0.06 * u, 0.0]), fill=shade, width=nw, joint='curve')
  d.line(_cv(ridge), fill=_col(skin * 1.12 + 10), width=_lw(0.017 * u), joint='curve')
  nb = lm[NOSE_BOTTOM]
  for k in (0, 4):
    d.line(_cv([nb[k], nb[k] * 0.6 + lm[30] * 0.4 + [0, -0.05 * u]]), fill=shade, width=nw)
  d.line(_cv(_smooth(nb, closed=False, n=3)), fill=shade, width=nw, joint='curve')
  nr = 0.035 * u
  for k in (1, 3):
    c = nb[k] * 0.7 + nb[2] * 0.3 + [0, -0.025 * u]
    d.ellipse(_cv([c - [nr * 1.3, nr * 0.7], c + [nr * 1.3, nr * 0.7]]), fill=_col(skin * 0.35))


def _draw_mouth(d, g: FaceGeometry, pal: _Palette, rng) -> None:
  """Upper/lower lip polygons (outer 48..59 minus inner 60..67), dark interior and teeth."""
  lm, u = g.landmarks, g.unit
  upper = np.concatenate([lm[48:55], lm[[64, 63, 62, 61, 60]]])
  lower = np.concatenate([lm[[54, 55, 56, 57, 58, 59, 48]], lm[[60, 67, 66, 65, 64]]])
  d.polygon(_cv(_smooth(lower, closed=True, n=2)), fill=pal.lip)
  d.polygon(_cv(_smooth(upper, closed=True, n=2)), fill=_col(np.array(pal.lip) * 0.85))
  inner = lm[LIPS_IN]
  if g.mouth_open > 0.03:
    top = _smooth(inner[[0, 1, 2, 3, 4]], closed=False, n=2)
    bot = _smooth(inner[[4, 5, 6, 7, 0]], closed=False, n=2)
    d.polygon(_cv(np.concatenate([top, bot[1:-1]])), fill=_col(pal.skin * 0.2))
    if rng.random() < 0.7:
      frame = _frame(inner[0], inner[4])
      s = _TEETH_S * frame[3]
      teeth = _between(top, bot, frame, s, np.full(12, -np.inf), depth=0.06 * u)
      d.polygon(_cv(teeth), fill=_col(_jit(rng, [225, 220, 205], 10)))
  d.line(_cv(_smooth(inner[:5], closed=False, n=2)), fill=_col(pal.skin * 0.3), width=_lw(0.02 * u))


def _draw_occluder(d, g: FaceGeometry, pal: _Palette, rng) -> None:
  """A rectangle, ellipse or striped patch over up to 25 % of the landmark box."""
  lo, hi = g.landmarks.min(0), g.landmarks.max(0)
  area = np.prod(hi - lo) * rng.uniform(0.05, 0.25)
  asp = np.exp(rng.uniform(-0.8, 0.8))
  wh = np.array([np.sqrt(area * asp), np.sqrt(area / asp)])
  c = lo + rng.uniform(0, 1, 2) * (hi - lo)
  box = _cv([c - wh / 2, c + wh / 2])
  col = _rand_col(rng) if rng.random() < 0.7 else _col(_jit(rng, pal.skin, 25))
  kind = rng.integers(0, 3)
  if kind == 1:
    d.ellipse(box, fill=col)
    return
  d.rectangle(box, fill=col)
  if kind == 2:
    col2, step = _rand_col(rng), max(2.0, rng.uniform(0.04, 0.12) * g.unit * _SS)
    for y in np.arange(box[1], box[3], 2 * step):
      d.rectangle([box[0], y, box[2], min(y + step, box[3])], fill=col2)


def _photometric(canvas, mask, g: FaceGeometry, skin: np.ndarray, rng, size: int) -> np.ndarray:
  """Downsamples, then face shading, blur, gamma/contrast/brightness/colour cast and noise.

  The brightness is nudged so that the skin tone ends up in [0.2, 0.9] of the range: the face
  is never crushed to black or white.
  """
  img = canvas.reduce(_SS)
  # Directional shading of the face: a linear ramp (darkening only) across the face mask.
  ang = rng.uniform(0, 2 * np.pi)
  strength = rng.uniform(0.0, 0.5)
  ctr = g.landmarks.mean(0)
  ys = (np.arange(size, dtype=np.float32)[:, None] - ctr[1]) * np.sin(ang)
  xs = (np.arange(size, dtype=np.float32)[None, :] - ctr[0]) * np.cos(ang)
  ramp = np.clip((xs + ys) * np.float32(0.5 / (1.2 * g.unit)) + np.float32(0.5), 0, 1)
  shade = 255.0 - strength * ramp * np.asarray(mask, np.float32)
  shade = Image.fromarray(shade.astype(np.uint8), 'L')
  img = ImageChops.multiply(img, Image.merge('RGB', (shade, shade, shade)))
  blur = float(rng.choice([0.0, rng.uniform(0.3, 1.0), rng.uniform(0.8, 2.0)], p=[0.4, 0.4, 0.2]))
  if blur > 0.2:
    img = img.filter(ImageFilter.BoxBlur(blur))
  # Global gamma, contrast, brightness and colour cast through one lookup table.
  gamma = np.exp(rng.uniform(-0.5, 0.5))
  contrast, bright = rng.uniform(0.6, 1.2), rng.uniform(-40, 40)
  cast = rng.uniform(0.9, 1.1, 3)
  lum = float(np.clip(skin @ [0.299, 0.587, 0.114], 0, 255)) / 255.0
  face = ((lum**gamma - 0.5) * contrast + 0.5) * 255.0 + bright
  bright += max(0.2 * 255.0 - face, 0.0) - max(face - 0.9 * 255.0, 0.0)
  v = ((np.arange(256) / 255.0) ** gamma - 0.5) * contrast + 0.5
  lut = np.clip(v[None, :] * 255.0 * cast[:, None] + bright + 0.5, 0, 255).astype(np.int64)
  img = img.point(lut.ravel().tolist())
  sigma = float(rng.choice([0.0, rng.uniform(1, 6), rng.uniform(6, 14)], p=[0.3, 0.5, 0.2]))
  if sigma == 0:
    return np.asarray(img).copy()
  # Additive noise (luminance, sometimes with chroma) via an offset image: out = img + n − 128.
  shape = (size, size, 3) if rng.random() < 0.5 else (size, size)
  noise = np.clip(rng.standard_normal(shape, np.float32) * sigma + 128.5, 0, 255).astype(np.uint8)
  noise = Image.fromarray(noise)
  if noise.mode == 'L':
    noise = Image.merge('RGB', (noise, noise, noise))
  return np.asarray(ImageChops.add(img, noise, offset=-128)).copy()


def render_face(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """Renders one random face.

  Args:
    rng: the random generator (fully determines the output).
    size: output side in pixels.

  Returns:
    (image uint8 (size, size, 3), landmarks float32 (68, 2) in 0-based pixel coordinates).
  """
  g = sample_geometry(rng, size)
  pal = _sample_palette(rng)
  canvas = _background(rng, size)
  d = ImageDraw.Draw(canvas)
  mask = Image.new('L', (size, size))  # face mask for the shading, output resolution
  _draw_head(d, ImageDraw.Draw(mask), g, pal, rng)
  _draw_brows(d, g, pal, rng)
  _draw_eyes(d, g, pal)
  _draw_nose(d, g, pal)
  _draw_mouth(d, g, pal, rng)
  if rng.random() < 0.3:
    _draw_occluder(d, g, pal, rng)  # landmarks stay where they are
  return _photometric(canvas, mask, g, pal.skin, rng, size), g.landmarks
