"""A tiny, hand-built InsightFace face pack: offline, deterministic, a few hundred KB.

:func:`build_face_pack` writes two ONNX files into a folder, which InsightFace 2.1 loads
through exactly the path it takes for ``buffalo_l`` (``FaceAnalysis(name=<folder>)`` →
``model_zoo.get_model`` → routing by input/output shapes):

``det_tiny.onnx``
    A detector with SCRFD's 9-output signature: ``score_8, score_16, score_32,
    bbox_8, bbox_16, bbox_32, kps_8, kps_16, kps_32`` for strides 8/16/32 with 2 anchors
    per location (InsightFace classifies any model with ≥ 5 outputs as SCRFD, and 9
    outputs as "3 strides, 2 anchors, with keypoints"). The input is dynamic
    ``[1, 3, height, width]``, so InsightFace can run it at any detection size.
``rec_tiny.onnx``
    A "recognizer" ``[N, 3, 112, 112] → [N, 512]``: the aligned face crop's 8×8 luma
    pattern (mean removed) and its mean colour, projected by a fixed random matrix, so
    different face content gives different embeddings.

What makes the detector fire
----------------------------
It is a skin-colour blob detector, with no learned weights:

1. A pixel is *skin* when (in 0–255 RGB) ``R > 170``, ``30 < R − B < 100``,
   ``15 < R − G < 70``, ``G − B > 5`` and ``R − G > 0.8·(G − B)``: light skin tones, not
   the orange of a spacesuit, a red flag, a grey/beige wall or blond/brown hair
   (:func:`is_tiny_skin` is the same rule in numpy; :data:`SKIN_RGB` passes it).
2. The skin mask is averaged over 4×4 cells, thresholded at half, and cleaned by a 5×5
   morphological closing (fills eyes and mouth) then a 5×5 opening (specks narrower
   than 5 cells vanish, so a face must be at least ~20 px at detection size).
3. Around every anchor, a window of 8 × stride pixels (64, 128, 256 px) is summarised by
   the blob's area, centroid and second moments. The detector fires when
   - the blob's area is at least 100 px²,
   - the window's outer ring (one stride wide) is empty: the blob is *surrounded* by
     non-skin, so one skin-coloured blob no larger than about 6 × stride pixels at
     detection size (48, 96, 192 px),
   - the blob is compact (area ≥ 0.45 × the area of its moment box — a filled ellipse
     gives 0.79 — so one blob, not two),
   - and not elongated (aspect ratio between 0.4 and 2.5).

   The box is the blob's moment box (centroid ± 2σ, exact for a filled ellipse), so
   every window that sees the whole blob gives the same box and non-maximum suppression
   keeps one. Keypoints are the ArcFace template's five points mapped into that box.

So: a filled, light-skin-coloured ellipse or rectangle on a non-skin background is one
face (use :func:`draw_tiny_face`, with any ``variant`` for different "identities");
two such blobs apart from each other are two faces; a blank or uniform image (even a
uniform skin-coloured one) has none. A face larger than about 192 px *after* InsightFace
resizes the photo to the detection size is not found at that size — exactly the case the
detection-size fallback exists for. In the bundled astronaut photos (``assets/``) the
face is the only skin-coloured blob surrounded by hair, collar and background.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

__all__ = [
    "DETECTOR_FILE",
    "RECOGNIZER_FILE",
    "SKIN_RGB",
    "build_face_pack",
    "draw_tiny_face",
    "is_tiny_skin",
]

logger = logging.getLogger(__name__)

DETECTOR_FILE = "det_tiny.onnx"
RECOGNIZER_FILE = "rec_tiny.onnx"

#: A skin colour the tiny detector fires on (variants shift it slightly).
SKIN_RGB = (226, 184, 158)

_STRIDES = (8, 16, 32)
_CELL = 4  # pixels per cell of the cleaned skin map
_WINDOW_CELLS = 8  # window = 8 strides; its outer ring (1 stride) must be empty
_MIN_AREA = 300.0  # px² at detection size
_MAX_RING_MASS = 16.0  # px²: one cell
_MIN_COMPACTNESS = 0.45
_MIN_ASPECT = 0.4
_OPSET = 17
_IR_VERSION = 8

# ArcFace's five-point template in a 112×112 crop (insightface.utils.face_align.arcface_dst).
_ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# Skin rule: every linear condition c·RGB + d must be > 0 (units: 0–255 levels).
_SKIN_CONDITIONS = np.array(
    [
        # r,   g,    b,    const
        [1.0, 0.0, -1.0, -30.0],  # R − B > 30
        [-1.0, 0.0, 1.0, 100.0],  # R − B < 100
        [1.0, 0.0, 0.0, -170.0],  # R > 170
        [1.0, -1.0, 0.0, -15.0],  # R − G > 15
        [-1.0, 1.0, 0.0, 70.0],  # R − G < 70
        [0.0, 1.0, -1.0, -5.0],  # G − B > 5
        [1.0, -1.8, 0.8, 0.0],  # R − G > 0.8·(G − B): not blond/brown hair
    ]
)
_SKIN_SOFTNESS = 3.0  # levels: sigmoid(min_margin / softness)


def is_tiny_skin(rgb: np.ndarray) -> np.ndarray:
    """The detector's pixel rule on an ``[..., 3]`` uint8/float RGB array (bool mask)."""
    x = np.asarray(rgb, dtype=np.float64)
    margins = x @ _SKIN_CONDITIONS[:, :3].T + _SKIN_CONDITIONS[:, 3]
    return margins.min(axis=-1) > 0


def draw_tiny_face(
    image: Image.Image,
    box: tuple[float, float, float, float],
    variant: int = 0,
) -> Image.Image:
    """Draw one face the tiny detector finds, filling ``box`` = (x1, y1, x2, y2), in place.

    The face is a skin-coloured ellipse with dark eyes, brows and a mouth; ``variant``
    changes the skin tone and the features' size and place, so the tiny recognizer gives
    different embeddings for different variants. Keep the background non-skin (white,
    grey, blue, …), faces at least ~12 px and one stride apart, and no larger than ~192
    px at detection size. Returns the image for chaining.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    rng = np.random.default_rng(variant)
    # Skin tone: stays inside the rule (R−B 54–70, R−G 34–46, G−B 20–26).
    dr, dg = (0, 0) if variant == 0 else (int(rng.integers(-8, 9)), int(rng.integers(-6, 7)))
    skin = (SKIN_RGB[0] + dr, SKIN_RGB[1] + dg, SKIN_RGB[2] + dg)
    draw = ImageDraw.Draw(image)
    draw.ellipse([x1, y1, x2, y2], fill=skin)
    if min(w, h) < 24:
        return image
    dark = (40, 30, 30) if variant == 0 else tuple(int(v) for v in rng.integers(20, 90, 3))
    eye_y = y1 + h * (0.40 + (0.0 if variant == 0 else rng.uniform(-0.04, 0.04)))
    eye_dx = w * (0.18 + (0.0 if variant == 0 else rng.uniform(-0.04, 0.05)))
    eye_r = max(1.0, w * (0.06 + (0.0 if variant == 0 else rng.uniform(-0.02, 0.03))))
    cx = x1 + w / 2
    for sx in (-1, 1):
        ex = cx + sx * eye_dx
        draw.ellipse([ex - eye_r, eye_y - eye_r * 0.7, ex + eye_r, eye_y + eye_r * 0.7], fill=dark)
        draw.line(
            [ex - eye_r * 1.3, eye_y - eye_r * 1.8, ex + eye_r * 1.3, eye_y - eye_r * 2.0],
            fill=dark,
            width=max(1, int(h * 0.02)),
        )
    mouth_y = y1 + h * (0.74 + (0.0 if variant == 0 else rng.uniform(-0.03, 0.03)))
    mouth_w = w * (0.16 + (0.0 if variant == 0 else rng.uniform(-0.04, 0.06)))
    draw.line(
        [cx - mouth_w, mouth_y, cx + mouth_w, mouth_y],
        fill=(150, 60, 60),
        width=max(1, int(h * 0.03)),
    )
    return image


# --------------------------------------------------------------------------- graph helpers


class _Graph:
    """Collects nodes and initializers; names every value uniquely."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, hint: str = "c") -> str:
        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def const64(self, value) -> str:
        name = self._name("i")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        hint: str | None = None,
        out: str | None = None,
        **attrs,
    ) -> str:
        out = out or self._name(hint or op_type.lower())
        # Node names never start with "Sub"/"Mul": ArcFaceONNX reads those as an MXNet
        # model with built-in normalisation.
        self.nodes.append(
            helper.make_node(
                op_type, inputs, [out], name=f"n{len(self.nodes)}_{op_type.lower()}", **attrs
            )
        )
        return out


def _skin_map(g: _Graph, x: str) -> str:
    """[1,3,H,W] SCRFD-normalised RGB → cleaned skin map on 4×4 cells [1,1,H/4,W/4]."""
    # SCRFD feeds (RGB − 127.5) / 128, so RGB = 128·x + 127.5.
    w = _SKIN_CONDITIONS[:, :3] * 128.0 / _SKIN_SOFTNESS
    b = (_SKIN_CONDITIONS[:, :3].sum(axis=1) * 127.5 + _SKIN_CONDITIONS[:, 3]) / _SKIN_SOFTNESS
    margins = g.op("Conv", [x, g.const(w.reshape(-1, 3, 1, 1)), g.const(b)], "skin_margins")
    worst = g.op("ReduceMin", [margins], "skin_min", axes=[1], keepdims=1)
    skin = g.op("Sigmoid", [worst], "skin")
    cells = g.op(
        "AveragePool", [skin], "cells", kernel_shape=[_CELL, _CELL], strides=[_CELL, _CELL]
    )
    # Cell is skin when more than half of its pixels are: sigmoid(20·(c − 0.5)).
    cells = g.op("Add", [cells, g.const(-0.5)], "cells_c")
    cells = g.op("Mul", [cells, g.const(20.0)], "cells_s")
    cells = g.op("Sigmoid", [cells], "cells_q")
    # Closing (fill eyes, mouth), then opening (drop specks of hair, straps, edges).
    closed = _erode(g, _dilate(g, cells, 5), 5)
    return _dilate(g, _erode(g, closed, 5), 5)


def _dilate(g: _Graph, x: str, k: int) -> str:
    pool = {"kernel_shape": [k, k], "strides": [1, 1], "pads": [k // 2] * 4}
    return g.op("MaxPool", [x], "dilated", **pool)


def _erode(g: _Graph, x: str, k: int) -> str:
    # min-pool = −maxpool(−x); padding never counts (MaxPool ignores it).
    return g.op("Neg", [_dilate(g, g.op("Neg", [x], "neg"), k)], "eroded")


def _stride_head(g: _Graph, cells: str, stride: int) -> tuple[str, str, str]:
    """Cleaned cell map → (scores [A,1], bbox [A,4], kps [A,10]) for one stride, A = 2·h·w."""
    per = stride // _CELL  # cells per stride cell
    area = float(_CELL * _CELL)
    # Level A: moments of each stride cell, in pixels, relative to its top-left corner.
    u = _CELL * (np.arange(per) + 0.5)
    xx, yy = np.meshgrid(u, u)  # [row, col]: xx varies along columns
    within = _CELL * _CELL / 12.0  # variance of a uniform 4-px cell
    wa = np.stack([np.ones_like(xx), xx, yy, xx**2 + within, yy**2 + within]) * area
    local = g.op("Conv", [cells, g.const(wa[:, None])], f"mom_local{stride}", strides=[per, per])
    # Level B: window of 8×8 stride cells around each anchor, moments relative to the anchor.
    n = _WINDOW_CELLS
    wb = np.zeros((6, 5, n, n))
    for ki in range(n):
        for kj in range(n):
            oy, ox = (ki - n // 2) * stride, (kj - n // 2) * stride
            wb[0, 0, ki, kj] = 1.0
            wb[1, 1, ki, kj], wb[1, 0, ki, kj] = 1.0, ox
            wb[2, 2, ki, kj], wb[2, 0, ki, kj] = 1.0, oy
            wb[3, 3, ki, kj], wb[3, 1, ki, kj], wb[3, 0, ki, kj] = 1.0, 2 * ox, ox * ox
            wb[4, 4, ki, kj], wb[4, 2, ki, kj], wb[4, 0, ki, kj] = 1.0, 2 * oy, oy * oy
            if ki in (0, n - 1) or kj in (0, n - 1):
                wb[5, 0, ki, kj] = 1.0
    mom = g.op(
        "Conv",
        [local, g.const(wb)],
        f"mom{stride}",
        pads=[n // 2, n // 2, n // 2 - 1, n // 2 - 1],
    )

    def channel(i: int, hint: str) -> str:
        return g.op(
            "Slice",
            [mom, g.const64([i]), g.const64([i + 1]), g.const64([1])],
            f"{hint}{stride}",
        )

    m, mx, my, mxx, myy, ring = (
        channel(i, h) for i, h in enumerate(["m", "mx", "my", "mxx", "myy", "ring"])
    )
    inv = g.op("Reciprocal", [g.op("Add", [m, g.const(1e-3)])], f"inv{stride}")
    cx = g.op("Mul", [mx, inv], f"cx{stride}")
    cy = g.op("Mul", [my, inv], f"cy{stride}")

    def half_extent(mom2: str, c: str, hint: str) -> str:
        var = g.op("Sub", [g.op("Mul", [mom2, inv]), g.op("Mul", [c, c])], f"var{hint}")
        var4 = g.op("Max", [g.op("Mul", [var, g.const(4.0)]), g.const(1.0)], f"var4{hint}")
        return g.op("Sqrt", [var4], f"half{hint}")  # 2σ: an ellipse's semi-axis

    hw = half_extent(mxx, cx, f"x{stride}")
    hh = half_extent(myy, cy, f"y{stride}")

    # Score: sigmoid(8 · min(terms)); every term > 0 ⇔ a face.
    t_area = g.op("Mul", [g.op("Add", [m, g.const(-_MIN_AREA)]), g.const(1.0 / _MIN_AREA)])
    t_ring = g.op(
        "Mul", [g.op("Sub", [g.const(_MAX_RING_MASS), ring]), g.const(1.0 / _MAX_RING_MASS)]
    )
    box_area = g.op("Mul", [g.op("Mul", [hw, hh]), g.const(4.0)])
    compact = g.op("Div", [m, box_area])
    t_compact = g.op(
        "Mul", [g.op("Add", [compact, g.const(-_MIN_COMPACTNESS)]), g.const(1.0 / _MIN_COMPACTNESS)]
    )
    aspect = g.op("Div", [g.op("Min", [hw, hh]), g.op("Max", [hw, hh])])
    t_aspect = g.op(
        "Mul", [g.op("Add", [aspect, g.const(-_MIN_ASPECT)]), g.const(1.0 / _MIN_ASPECT)]
    )
    worst = g.op("Min", [t_area, t_ring, t_compact, t_aspect], f"worst{stride}")
    # sigmoid(10·(worst − 0.1)): a margin, so borderline blobs stay below 0.5.
    logit = g.op("Add", [g.op("Mul", [worst, g.const(10.0)]), g.const(-1.0)])
    score = g.op("Sigmoid", [logit], f"score{stride}")
    # Anchor 1 never fires: each location reports one candidate.
    zero = g.op("Mul", [score, g.const(0.0)])
    scores = g.op("Concat", [score, zero], f"scores{stride}", axis=1)

    inv_s = g.const(1.0 / stride)

    def scaled(v: str) -> str:
        return g.op("Mul", [v, inv_s])

    left = scaled(g.op("Sub", [hw, cx]))
    top = scaled(g.op("Sub", [hh, cy]))
    right = scaled(g.op("Add", [cx, hw]))
    bottom = scaled(g.op("Add", [cy, hh]))
    box = [left, top, right, bottom]
    bbox = g.op("Concat", box + box, f"bbox{stride}", axis=1)

    kps = []
    for tx, ty in _ARCFACE_TEMPLATE / 112.0:
        kx = g.op("Add", [cx, g.op("Mul", [hw, g.const(2.0 * tx - 1.0)])])
        ky = g.op("Add", [cy, g.op("Mul", [hh, g.const(2.0 * ty - 1.0)])])
        kps += [scaled(kx), scaled(ky)]
    kps_all = g.op("Concat", kps + kps, f"kps{stride}", axis=1)

    def flatten(v: str, width: int, out: str) -> str:
        t = g.op("Transpose", [v], perm=[0, 2, 3, 1])
        return g.op("Reshape", [t, g.const64([-1, width])], out=out)

    return (
        flatten(scores, 1, f"score_{stride}"),
        flatten(bbox, 4, f"bbox_{stride}"),
        flatten(kps_all, 10, f"kps_{stride}"),
    )


def _model(g: _Graph, inputs, outputs, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="photomaker.tiny_faces",
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_detector() -> onnx.ModelProto:
    """The tiny SCRFD-signature detector (see the module docstring)."""
    g = _Graph()
    x = "input.1"
    cells = _skin_map(g, x)
    heads = [_stride_head(g, cells, s) for s in _STRIDES]
    outputs = []
    for kind, width in ((0, 1), (1, 4), (2, 10)):
        for s, head in zip(_STRIDES, heads, strict=True):
            outputs.append(
                helper.make_tensor_value_info(head[kind], TensorProto.FLOAT, [f"n{s}", width])
            )
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])]
    return _model(g, inputs, outputs, "tiny_scrfd")


def build_recognizer(seed: int = 0) -> onnx.ModelProto:
    """The tiny recognizer: 112×112 crop → 8×8 luma pattern + mean colour → projection → 512.

    The luma pattern has its mean removed, so the embedding follows the face's layout
    (eyes, brows, mouth) more than its overall colour.
    """
    g = _Graph()
    x = "input.1"
    pooled = g.op("AveragePool", [x], "pooled", kernel_shape=[14, 14], strides=[14, 14])
    luma = g.op(
        "Conv", [pooled, g.const(np.array([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1))], "luma"
    )
    pattern = g.op("Sub", [luma, g.op("ReduceMean", [luma], "luma_mean", axes=[2, 3], keepdims=1)])
    colour = g.op("ReduceMean", [x], "colour", axes=[2, 3], keepdims=1)
    flat = g.op(
        "Concat",
        [g.op("Flatten", [pattern], axis=1), g.op("Flatten", [colour], axis=1)],
        "features",
        axis=1,
    )
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((67, 512)) * (4.0 / np.sqrt(67))
    emb = g.op("MatMul", [flat, g.const(proj)], out="683")
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info(emb, TensorProto.FLOAT, ["N", 512])]
    return _model(g, inputs, outputs, "tiny_arcface")


def build_face_pack(folder: str | Path) -> Path:
    """Write the tiny face pack (detector + recognizer) into ``folder``; return the folder.

    Load it with ``FaceAnalyzer(pack=folder)`` (or ``insightface.app.FaceAnalysis(name=
    str(folder))``). Deterministic: the same bytes every time.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(build_detector(), str(folder / DETECTOR_FILE))
    onnx.save(build_recognizer(), str(folder / RECOGNIZER_FILE))
    logger.debug("wrote the tiny face pack to %s", folder)
    return folder
