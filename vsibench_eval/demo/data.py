"""The demo's synthetic VSI-Bench-shaped set: one question of each type per scene, worded as upstream,
and short mp4 videos of moving boxes, written to test.parquet and {dataset}/{scene_name}.mp4.

Videos are encoded deterministically, so two builds decode to the same
frames.
"""

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# The scenes of the demo set: (dataset, scene_name, width, height, seconds), names in each source's style.
# One runs over 32 s and one under 10 s, so frame sampling sees both cases.
DEMO_SCENES = (
    ("arkitscenes", "41069025", 160, 120, 36),
    ("scannet", "scene0011_00", 128, 96, 8),
    ("scannetpp", "0a5c013435", 144, 108, 20),
    ("arkitscenes", "42445173", 160, 120, 14),
)
DEMO_FPS = 10

OBJECTS = (
    "chair", "table", "sofa", "tv", "door", "bed", "lamp", "window", "sink", "refrigerator",
    "stool", "cabinet", "desk", "monitor", "trash can", "pillow", "toilet", "stove",
)  # fmt: skip

PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("dataset", pa.string()),
        ("scene_name", pa.string()),
        ("question_type", pa.string()),
        ("question", pa.string()),
        ("ground_truth", pa.string()),
        ("options", pa.list_(pa.string())),
    ]
)


# ---------------------------------------------------------------------------------------------------------
# Questions


def _numerical(question, answer):
    return question, answer, None


def _multiple_choice(rng, question, correct, wrong):
    """Shuffle the choices, letter them, and return the correct one's letter as the ground truth."""
    choices = [correct, *wrong]
    order = rng.permutation(len(choices))
    options = [f"{'ABCD'[k]}. {choices[i]}" for k, i in enumerate(order)]
    return question, "ABCD"[int(np.argmin(order))], options


def _pick(rng, choices):
    """One of `choices` as the answer, the rest as the wrong options."""
    answer = str(rng.choice(choices))
    return answer, [c for c in choices if c != answer]


def scene_questions(rng):
    """One question of each VSI-Bench type, worded as upstream, about objects drawn from OBJECTS.

    Returns (question_type, question, ground_truth, options) tuples; options is None for numerical types.
    Upstream's easy direction questions have two options, medium three, the other choice types four.
    """
    a, b, c, d, e = (str(o) for o in rng.choice(OBJECTS, size=5, replace=False))
    standing = f"If I am standing by the {a} and facing the {b}"
    turns = ("Turn Left", "Turn Right", "Turn Back")
    routes = [f"{first}, {second}" for first in turns for second in turns]  # the two [please fill in] steps
    route, *wrong_routes = (str(r) for r in rng.choice(routes, size=4, replace=False))
    order = [a, b, c, d]
    wrong_orders = [", ".join(order[i] for i in p) for p in ([1, 0, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0])]
    rows = {
        "object_counting": _numerical(f"How many {a}(s) are in this room?", str(rng.integers(1, 7))),
        "object_abs_distance": _numerical(
            f"Measuring from the closest point of each object, what is the direct distance between the {a} "
            f"and the {b} (in meters)?",
            f"{rng.uniform(0.5, 5.0):.1f}",
        ),
        "object_size_estimation": _numerical(
            f"What is the length of the longest dimension (length, width, or height) of the {c}, "
            "measured in centimeters?",
            str(rng.integers(30, 250)),
        ),
        "room_size_estimation": _numerical(
            "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the "
            "size of the combined space.",
            f"{rng.uniform(8.0, 60.0):.1f}",
        ),
        "object_rel_distance": _multiple_choice(
            rng,
            "Measuring from the closest point of each object, which of these objects "
            f"({', '.join(rng.permutation([b, c, d, e]))}) is the closest to the {a}?",
            *_pick(rng, [b, c, d, e]),
        ),
        "object_rel_direction_easy": _multiple_choice(
            rng,
            f"{standing}, is the {c} to the left or the right of the {b}?",
            *_pick(rng, ["Left", "Right"]),
        ),
        "object_rel_direction_medium": _multiple_choice(
            rng,
            f"{standing}, is the {c} to my left, right, or back? An object is to my back if I would have to "
            "turn at least 135 degrees in order to face it.",
            *_pick(rng, ["Left", "Right", "Back"]),
        ),
        "object_rel_direction_hard": _multiple_choice(
            rng,
            f"{standing}, is the {c} to my front-left, front-right, back-left, or back-right? The directions "
            "refer to the quadrants of a Cartesian plane (if I am standing at the origin and facing along "
            "the positive y-axis).",
            *_pick(rng, ["front-left", "front-right", "back-left", "back-right"]),
        ),
        "route_planning": _multiple_choice(
            rng,
            f"You are a robot beginning at the {a} facing the {b}. You want to navigate to the {c}. You will "
            "perform the following actions (Note: for each [please fill in] step, choose either 'turn back,' "
            f"'turn left,' or 'turn right.'): 1. Go forward until the {b} 2. [please fill in] 3. Go forward "
            f"until the {d} 4. [please fill in] 5. Go forward until the {c}. You have reached the final "
            "destination.",
            route,
            wrong_routes,
        ),
        "obj_appearance_order": _multiple_choice(
            rng,
            "What will be the first-time appearance order of the following categories in the video: "
            f"{c}, {a}, {d}, {b}?",
            ", ".join(order),
            wrong_orders,
        ),
    }
    return [(question_type, *row) for question_type, row in rows.items()]


# ---------------------------------------------------------------------------------------------------------
# Videos and the parquet


def render_frames(width, height, n_frames, rng):
    """Coloured boxes bouncing over a plain background, so consecutive frames differ."""
    background = rng.integers(40, 200, size=3, dtype=np.uint8)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    frames[:] = background
    for _ in range(3):
        size = rng.integers(height // 6, height // 3, size=2)  # box height, width
        span = np.array([height, width]) - size
        start = rng.uniform(0, span)
        velocity = rng.choice([-1, 1], size=2) * rng.uniform(1.0, 3.0, size=2)  # pixels per frame
        colour = rng.integers(0, 256, size=3, dtype=np.uint8)
        for t in range(n_frames):
            # A triangle wave keeps the box inside the frame: it bounces off the edges.
            y, x = (span - np.abs((start + velocity * t) % (2 * span) - span)).astype(int)
            frames[t, y : y + size[0], x : x + size[1]] = colour
    return frames


def write_video(path, frames, fps):
    """Encode RGB frames as H.264 yuv420p mp4 (MPEG-4 part 2 where this PyAV has no libx264).

    Deterministic: with its default lookahead (and more than one thread) this x264 gives different bytes and
    different decoded pixels on each encode of the same frames, so the lookahead is off and one thread runs."""
    import av  # here, so that the questions above can be used where PyAV is not installed

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={"threads": "1", "x264-params": "rc-lookahead=0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def build_demo_dataset(out_dir, seed=0) -> pathlib.Path:
    """Write DEMO_SCENES' videos and one question of each type per video to `out_dir/test.parquet`."""
    out_dir = pathlib.Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for dataset, scene_name, width, height, seconds in DEMO_SCENES:
        video_path = out_dir / dataset / f"{scene_name}.mp4"
        video_path.parent.mkdir(parents=True, exist_ok=True)
        write_video(video_path, render_frames(width, height, seconds * DEMO_FPS, rng), DEMO_FPS)
        for question_type, question, ground_truth, options in scene_questions(rng):
            rows.append(
                {
                    "dataset": dataset,
                    "scene_name": scene_name,
                    "question_type": question_type,
                    "question": question,
                    "ground_truth": ground_truth,
                    "options": options,
                }
            )
    # Upstream ids have gaps where questions were filtered out: skip every fourth one.
    for i, row in enumerate(rows):
        row["id"] = i + i // 3
    parquet = out_dir / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), parquet)
    return parquet
