"""Label formats (CSV, PA-HMDB51 JSON, VP pickle), the safe unpickler, and matching videos to store keys."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from anonfeat.errors import AnonfeatError
from anonfeat.labels import (PA_HMDB51_ATTRIBUTES, VP_ATTRIBUTES, load_labels, match_videos, safe_load_pickle,
                             stratified_split)


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


# -- CSV ----------------------------------------------------------------------------------------
def test_csv_with_split(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["video", "split", "action", "face", "gender"],
                     [["a/v1.mp4", "train", "run", 1, 0], ["a/v2.mp4", "TEST", "walk", 0, 1],
                      ["b\\v3.mp4", "train", "walk", 1, 1]])
    labels = load_labels(path)
    assert labels.videos == ["a/v1.mp4", "a/v2.mp4", "b/v3.mp4"]
    assert labels.split == ["train", "test", "train"] and not labels.split_generated
    assert labels.tasks == {"action": ["run", "walk", "walk"]}
    assert labels.attribute_names == ["face", "gender"]
    np.testing.assert_array_equal(labels.attribute_matrix(), [[1, 0], [0, 1], [1, 1]])
    assert labels.task_classes("action") == ["run", "walk"]
    np.testing.assert_array_equal(labels.task_targets("action"), [0, 1, 1])
    np.testing.assert_array_equal(labels.indices("train"), [0, 2])
    assert load_labels(path, attributes=["gender"]).attribute_names == ["gender"]


def test_csv_without_split_is_seeded_and_stratified(tmp_path):
    rows = [[f"v{i}.mp4", f"class{i % 3}", i % 2] for i in range(30)]
    path = write_csv(tmp_path / "l.csv", ["video", "action", "face"], rows)
    first, again, other = (load_labels(path, seed=s) for s in (0, 0, 1))
    assert first.split_generated and first.split == again.split and first.split != other.split
    for c in range(3):
        members = [s for s, r in zip(first.split, rows) if r[1] == f"class{c}"]
        assert members.count("test") == 5 and members.count("train") == 5
    assert stratified_split(["x", "x", "y"], 0.5, 0).count("test") >= 1


@pytest.mark.parametrize("header,rows,needle", [
    (["video", "split", "face"], [["v", "train", 1], ["w", "test", 0]], "missing column(s) action"),
    (["video", "split", "action", "face"], [["v", "train", "run", 1], ["w", "test", "run", 2]],
     "'face' of video 'w' (row 3) is '2'"),
    (["video", "split", "action", "face"], [["v", "train", "run", 1], ["w", "train", "run", 0]],
     "no test videos"),
    (["video", "split", "action", "face"], [["v", "train", "run", 1], ["w", "val", "run", 0]],
     "use train or test"),
    (["video", "split", "action", "face"], [["v", "train", "run", 1], ["v", "test", "run", 0]],
     "listed 2 times"),
    (["video", "split", "action"], [["v", "train", "run"], ["w", "test", "run"]], "no private attribute"),
])
def test_csv_errors_are_one_line_and_name_the_file(tmp_path, header, rows, needle):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(AnonfeatError) as info:
        load_labels(path)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_unknown_task_attribute_and_format(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["video", "split", "action", "face"],
                     [["v", "train", "run", 1], ["w", "test", "walk", 0]])
    with pytest.raises(AnonfeatError, match="missing column.*scene.*--task"):
        load_labels(path, tasks=["scene"])
    with pytest.raises(AnonfeatError, match="no attribute column nudity"):
        load_labels(path, attributes=["nudity"])
    with pytest.raises(AnonfeatError, match="cannot be a private attribute"):
        load_labels(path, attributes=["action"])
    other = tmp_path / "labels.xlsx"
    other.write_text("x")
    with pytest.raises(AnonfeatError, match="unknown labels format"):
        load_labels(other)
    with pytest.raises(AnonfeatError, match="no such labels"):
        load_labels(tmp_path / "absent.csv")


def test_kept_non_binary_column_is_not_an_attribute(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["video", "split", "action", "gender", "face"],
                     [["v", "train", "run", "male", 1], ["w", "test", "run", "female", 0]])
    labels = load_labels(path, keep=["gender"])
    assert labels.attribute_names == ["face"]
    assert labels.group_values("gender") == ["male", "female"]
    assert labels.group_values("face") == ["1", "0"]


# -- PA-HMDB51 ----------------------------------------------------------------------------------
def test_pa_hmdb51_folder(tmp_path):
    folder = tmp_path / "PrivacyAttributes"
    folder.mkdir()
    (folder / "brush_hair.json").write_text(json.dumps({
        "vid_a.avi": {"face": [[0, 49, 2], [50, 99, 1]], "gender": [[0, 99, [1, 2]]], "skin_color": [[0, 99, 1]],
                      "nudity": [[0, 99, 0]], "relationship": [[0, 99, 1]], "review": True, "note": ""},
        "vid_b.avi": {"face": [[0, 10, 0]], "gender": [[0, 10, 0]], "skin_color": [[0, 10, 3]],
                      "nudity": [[0, 5, 2]], "relationship": [[0, 10, 0]], "review": False, "note": "x"},
    }))
    (folder / "pullup.json").write_text(json.dumps({
        "vid_c.avi": {"face": [[0, 9, 1]], "gender": [[0, 9, 1]], "skin_color": [[0, 9, 0]],
                      "nudity": [[0, 9, 1]], "relationship": [[0, 9, 0]]},
    }))
    labels = load_labels(folder)
    assert labels.videos == ["brush_hair/vid_a.avi", "brush_hair/vid_b.avi", "pullup/vid_c.avi"]
    assert labels.tasks["action"] == ["brush_hair", "brush_hair", "pullup"]
    assert labels.split_generated and set(labels.split) == {"train", "test"}
    assert labels.attribute_names == list(VP_ATTRIBUTES)  # default: the 5-attribute protocol
    np.testing.assert_array_equal(labels.attribute_matrix(),
                                  [[1, 1, 1, 0, 1], [0, 1, 0, 1, 0], [1, 0, 1, 1, 0]])
    fine = load_labels(folder, attributes=list(PA_HMDB51_ATTRIBUTES))
    expected = {"face_complete": [1, 0, 0], "gender_male": [1, 0, 1], "gender_female": [1, 0, 0],
                "skin_color_white": [1, 0, 0], "skin_color_black": [0, 1, 0], "nudity_level2": [0, 1, 0]}
    for name, values in expected.items():
        np.testing.assert_array_equal(fine.attributes[name], values, err_msg=name)


def test_pa_hmdb51_malformed_range(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"v.avi": {"face": [[0, 3]]}}))
    with pytest.raises(AnonfeatError, match="run.json.*'v.avi'.*face"):
        load_labels(tmp_path)


# -- VP pickle and the safe unpickler -----------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_vp_pickle_loads(tmp_path, protocol):
    data = {f"{cls}/v_{cls}_g0{i}_c01.mp4": np.array([[i % 2, 1, 0, (i + 1) % 2, 1]], dtype=np.int64)
            for cls in ("ApplyEyeMakeup", "Archery") for i in range(3)}
    path = tmp_path / "vp.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    labels = load_labels(path)
    assert labels.attribute_names == ["face", "skin_color", "gender", "nudity", "relationship"]
    assert labels.videos[0] == "ApplyEyeMakeup/v_ApplyEyeMakeup_g00_c01.mp4"
    assert labels.task_classes("action") == ["ApplyEyeMakeup", "Archery"]
    np.testing.assert_array_equal(labels.attribute_matrix()[:3], [[0, 1, 0, 1, 1], [1, 1, 0, 0, 1], [0, 1, 0, 1, 1]])


class _RunsShell:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _WritesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_RunsShell, _WritesFile])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "vp.pkl"
    path.write_bytes(pickle.dumps({"Archery/v.mp4": np.zeros((1, 5), np.int64), "x": payload(marker)}))
    with pytest.raises(AnonfeatError) as info:
        load_labels(path)
    assert str(path) in str(info.value) and "refused" in str(info.value)
    assert ("system" in str(info.value)) or ("exec" in str(info.value))
    assert not marker.exists()


def test_safe_unpickler_rejects_other_objects_and_garbage(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"a": {1, 2}, "b": slice(1, 2)}))  # builtins.slice: a global
    with pytest.raises(AnonfeatError, match="builtins.slice"):
        safe_load_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(AnonfeatError, match="not a readable pickle"):
        safe_load_pickle(path)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"Archery/v.mp4": np.array([[0, 1, 2, 0, 1]])}))
    with pytest.raises(AnonfeatError, match="expected 5 values of 0/1"):
        load_labels(bad)


# -- matching -----------------------------------------------------------------------------------
def test_match_by_path_then_extension_then_stem(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["video", "split", "action", "face"], [
        ["run/a.avi", "train", "run", 1],       # exact path
        ["run/b.mp4", "test", "run", 0],        # same path, other extension
        ["c.avi", "train", "walk", 1],          # stem only
        ["x/dup.avi", "test", "walk", 0],       # stem shared by two store keys: ambiguous
        ["missing.avi", "train", "walk", 1],    # not in the store
    ])
    labels = load_labels(path)
    keys = ["run/a.avi", "run/b.avi", "walk/c.mp4", "p/dup.mp4", "q/dup.mp4", "extra.mp4"]
    match = match_videos(labels, keys)
    assert match.pairs == [(0, "run/a.avi"), (1, "run/b.avi"), (2, "walk/c.mp4")]
    assert match.unmatched_labels == 2 and match.unmatched_store == 3
    np.testing.assert_array_equal(match.label_indices, [0, 1, 2])
