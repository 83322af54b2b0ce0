"""Label formats (CSV, PA-HMDB51 JSON, VP pickle), the safe unpickler, and matching videos to store keys."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from anonfeat.errors import AnonfeatError
from anonfeat.labels import (PA_HMDB51_ATTRIBUTES, SPLIT_FRACTIONS, SPLITS, VP_ATTRIBUTES, load_labels, match_videos,
                             safe_load_pickle, stratified_split)


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
    rows = [[f"v{i}.mp4", f"class{i % 3}", i % 2] for i in range(36)]
    path = write_csv(tmp_path / "l.csv", ["video", "action", "face"], rows)
    first, again, other = (load_labels(path, split_seed=s) for s in (0, 0, 1))
    assert first.split_generated and first.split == again.split and first.split != other.split
    assert first.split_seed == 0 and first.split_strata == "action"
    for c in range(3):
        members = [s for s, r in zip(first.split, rows) if r[1] == f"class{c}"]
        assert (members.count("train"), members.count("attacker"), members.count("test")) == (6, 3, 3)
    assert first.split_counts() == {"train": 18, "attacker": 9, "test": 9}
    assert "--split-seed 0" in first.split_summary() and "18 train / 9 attacker / 9 test" in first.split_summary()


def test_split_function_fractions_stratification_and_determinism():
    sizes = {"a": 4, "b": 5, "c": 7, "d": 13, "e": 21, "f": 40, "g": 3}
    strata = [name for name, n in sizes.items() for _ in range(n)]
    split = stratified_split(strata, seed=7)
    assert split == stratified_split(strata, seed=7) and split != stratified_split(strata, seed=8)
    assert set(split) == set(SPLITS) == {"train", "attacker", "test"}
    n = len(strata)
    for value, share in zip(SPLITS, SPLIT_FRACTIONS):  # the global fractions hold to a video or two
        assert abs(split.count(value) - share * n) <= 2, (value, split.count(value), share * n)
    for name, size in sizes.items():
        members = [v for v, s in zip(split, strata) if s == name]
        assert set(members) == set(SPLITS), name  # every stratum of >= 3 videos lands in all three
        for value, share in zip(SPLITS, SPLIT_FRACTIONS):  # and keeps its fractions to a video
            assert abs(members.count(value) - share * size) <= 1.0, (name, value)
    # the sizes per split depend on the strata only, not on the order of the rows
    shuffled = stratified_split([strata[i] for i in np.random.default_rng(0).permutation(n)], seed=7)
    assert {v: shuffled.count(v) for v in SPLITS} == {v: split.count(v) for v in SPLITS}


def test_split_function_tiny_strata_and_bad_fractions():
    assert stratified_split(["x"], 0) == ["train"]  # one video: train
    assert sorted(stratified_split(["x", "x"], 0)) == ["test", "train"]  # two: train and test
    assert sorted(stratified_split(["x"] * 3, 0)) == ["attacker", "test", "train"]
    assert sorted(stratified_split(["x"] * 4, 0)) == ["attacker", "test", "train", "train"]
    # many singleton strata still follow the global fractions
    singles = stratified_split([f"c{i}" for i in range(40)], 0)
    assert (singles.count("train"), singles.count("attacker"), singles.count("test")) == (20, 10, 10)
    assert stratified_split(["x"] * 10, 0, fractions=(0.8, 0.0, 0.2)).count("attacker") == 0
    with pytest.raises(AnonfeatError, match="fractions"):
        stratified_split(["x"], 0, fractions=(0.5, 0.5, 0.5))


def test_derived_split_is_the_same_for_every_command(tmp_path):
    """Stratified on the action column whatever --task says, drawn over label rows only: the trainers'
    and the audit's loads agree row by row."""
    rows = [[f"c{i % 4}/v{i}.mp4", f"act{i % 4}", f"scene{i % 3}", i % 2, (i // 2) % 2] for i in range(48)]
    path = write_csv(tmp_path / "l.csv", ["video", "action", "scene", "face", "gender"], rows)
    adapter_like = load_labels(path, tasks=("action", "scene"), split_seed=3, require_attributes=False)
    pruner_like = load_labels(path, tasks=("scene",), attributes=["face"], split_seed=3, require_attributes=False)
    audit_like = load_labels(path, tasks=("action",), split_seed=3, keep=["scene"])
    assert adapter_like.split == pruner_like.split == audit_like.split
    assert audit_like.split == stratified_split([r[1] for r in rows], 3)
    no_action = write_csv(tmp_path / "n.csv", ["video", "scene", "face"], [[r[0], r[2], r[3]] for r in rows])
    labels = load_labels(no_action, tasks=("scene",), split_seed=3)
    assert labels.split_strata == "scene" and labels.split == stratified_split([r[2] for r in rows], 3)


def test_split_column_takes_three_values_and_old_two_valued_files(tmp_path):
    header = ["video", "split", "action", "face"]
    three = write_csv(tmp_path / "3.csv", header, [["a", "train", "x", 1], ["b", "Attacker", "x", 0],
                                                   ["c", "test", "x", 1]])
    assert load_labels(three).split == ["train", "attacker", "test"]
    two = write_csv(tmp_path / "2.csv", header, [["a", "train", "x", 1], ["c", "test", "x", 0]])
    labels = load_labels(two)
    assert labels.split == ["train", "test"] and labels.split_counts()["attacker"] == 0


@pytest.mark.parametrize("header,rows,needle", [
    (["video", "split", "face"], [["v", "train", 1], ["w", "test", 0]], "missing column(s) action"),
    (["video", "split", "action", "face"], [["v", "train", "run", 1], ["w", "test", "run", 2]],
     "'face' of video 'w' (row 3) is '2'"),
    (["video", "split", "action", "face"], [["v", "train", "run", 1], ["w", "train", "run", 0]],
     "no test videos"),
    (["video", "split", "action", "face"], [["v", "train", "run", 1], ["w", "val", "run", 0]],
     "use train, attacker or test"),
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
    assert labels.attribute_names == ["face"] and labels.class_columns == []  # kept on request: not a leftover
    unkept = load_labels(path)  # a column of class names is no default attribute, and is recorded as such
    assert unkept.attribute_names == ["face"] and unkept.class_columns == ["gender"]
    words_only = write_csv(tmp_path / "w.csv", ["video", "split", "action", "gender"],
                           [["v", "train", "run", "male"], ["w", "test", "run", "female"]])
    with pytest.raises(AnonfeatError, match=r"no private attribute columns \(gender hold class names, not 0/1"):
        load_labels(words_only)  # the refusal names the column it left out
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
    assert labels.split_generated and labels.split == stratified_split(labels.tasks["action"], 0)
    assert labels.attribute_names == list(VP_ATTRIBUTES)  # default: the 5-attribute protocol
    np.testing.assert_array_equal(labels.attribute_matrix(),
                                  [[1, 1, 1, 0, 1], [0, 1, 0, 1, 0], [1, 0, 1, 1, 0]])
    fine = load_labels(folder, attributes=list(PA_HMDB51_ATTRIBUTES))
    expected = {"face_complete": [1, 0, 0], "gender_male": [1, 0, 1], "gender_female": [1, 0, 0],
                "skin_color_white": [1, 0, 0], "skin_color_black": [0, 1, 0], "nudity_level2": [0, 1, 0]}
    for name, values in expected.items():
        np.testing.assert_array_equal(fine.attributes[name], values, err_msg=name)


def test_pa_hmdb51_split_field(tmp_path):
    entry = {"face": [[0, 9, 1]], "gender": [[0, 9, 1]]}
    data = {f"v{i}.avi": {**entry, "split": split} for i, split in enumerate(["train", "attacker", "test", "train"])}
    (tmp_path / "run.json").write_text(json.dumps(data))
    labels = load_labels(tmp_path)
    assert not labels.split_generated and labels.split == ["train", "attacker", "test", "train"]
    del data["v1.avi"]["split"]
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(AnonfeatError, match="3 of 4 entries have a \"split\" field but 'run/v1.avi' has none"):
        load_labels(tmp_path)


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
    # no split in the file: the derived one, three-valued, stratified on the class folder
    assert labels.split_generated and labels.split == stratified_split(labels.tasks["action"], 0)
    for cls in ("ApplyEyeMakeup", "Archery"):
        assert sorted(s for s, a in zip(labels.split, labels.tasks["action"]) if a == cls) == \
            ["attacker", "test", "train"]


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
