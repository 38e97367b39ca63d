import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tf_lm import fileio
from tf_lm.fileio import atomic_directory, atomic_write, check_replaceable, not_a_directory


def _names(directory):
    return sorted(os.listdir(directory))


def test_atomic_write_replaces_text_and_bytes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(str(path), "first ü")
    assert path.read_text(encoding="utf-8") == "first ü"
    atomic_write(str(path), b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert _names(tmp_path / "sub") == ["a.txt"]


def _record_syncs_and_renames(monkeypatch):
    """Every fsync and rename of fileio, in order, as `("sync" | "rename", path)`; renames name their source."""
    events, sync, replace = [], fileio._sync, os.replace
    monkeypatch.setattr(fileio, "_sync", lambda path: (events.append(("sync", path)), sync(path)))
    monkeypatch.setattr(os, "replace", lambda source, target: (events.append(("rename", source)),
                                                               replace(source, target)))
    return events


def test_new_content_reaches_the_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    events = _record_syncs_and_renames(monkeypatch)
    atomic_write(str(tmp_path / "a.txt"), "data")
    (first, temporary), second, third = events
    assert (first, second, third) == ("sync", ("rename", temporary), ("sync", str(tmp_path)))

    events.clear()
    with atomic_directory(str(tmp_path / "out"), marker="ours.txt") as staging:
        os.makedirs(os.path.join(staging, "sub"))
        for name in ("ours.txt", "sub/more.txt"):
            with open(os.path.join(staging, name), "w") as f:
                f.write(name)
    synced = {path for kind, path in events[:-2] if kind == "sync"}
    assert synced == {staging, os.path.join(staging, "sub"), os.path.join(staging, "ours.txt"),
                      os.path.join(staging, "sub", "more.txt")}
    assert events[-2:] == [("rename", staging), ("sync", str(tmp_path))]


def test_atomic_write_on_a_gfile_filesystem():
    atomic_write("ram://fileio_test/a.txt", "in memory")
    with tf.io.gfile.GFile("ram://fileio_test/a.txt") as f:
        assert f.read() == "in memory"
    assert tf.io.gfile.listdir("ram://fileio_test") == ["a.txt"]


def test_atomic_write_full_disk_keeps_old_content_and_no_temporary(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past the limit, as a full disk does; in a child so the limit
    # (and its SIGXFSZ) stay out of the test process.
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "from tf_lm.fileio import atomic_write\n"
        "try:\n"
        f"    atomic_write({str(path)!r}, b'x' * 100_000)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__)\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["a.bin"]


def test_atomic_directory_creates_and_replaces_one_of_ours(tmp_path):
    target = tmp_path / "out"
    for content in ("v1", "v2"):
        with atomic_directory(str(target), marker="ours.txt") as staging:
            assert os.path.dirname(staging) == str(tmp_path)
            with open(os.path.join(staging, "ours.txt"), "w") as f:
                f.write(content)
        assert (target / "ours.txt").read_text() == content
        assert _names(target) == ["ours.txt"]
        assert _names(tmp_path) == ["out"]  # no staging or retired directory left


def test_atomic_directory_replaces_a_tree_on_a_gfile_filesystem():
    # ram:// renames a directory's entry but not its files: the swap must still move every file.
    target, files = "ram://fileio_tree/model", tf.io.gfile
    for content in ("v1", "v2"):
        with atomic_directory(target, marker="ours.txt") as staging:
            files.makedirs(f"{staging}/variables")
            for name in ("ours.txt", "variables/data"):
                with files.GFile(f"{staging}/{name}", "w") as f:
                    f.write(content)
        for name in ("ours.txt", "variables/data"):
            with files.GFile(f"{target}/{name}") as f:
                assert f.read() == content
        assert sorted(files.listdir("ram://fileio_tree")) == ["model"]  # no staging or retired directory left


def test_atomic_directory_accepts_an_empty_directory(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_directory(str(tmp_path / "out") + "/", marker="ours.txt") as staging:
        open(os.path.join(staging, "ours.txt"), "w").close()
    assert _names(tmp_path / "out") == ["ours.txt"]


@pytest.mark.parametrize("foreign", ["directory", "file", "cwd"])
def test_atomic_directory_refuses_anything_else_and_touches_nothing(tmp_path, monkeypatch, foreign):
    target = tmp_path / "out"
    if foreign == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "precious.txt").write_text("precious")
    path = str(target)
    if foreign == "cwd":
        monkeypatch.chdir(target)
        path = "."
    with pytest.raises(ValueError, match=r"(is a file|not one of ours).*choose a new or empty directory") as error:
        with atomic_directory(path, marker="ours.txt"):
            raise AssertionError("the body must not run")
    assert "\n" not in str(error.value)
    assert str(target) in str(error.value)
    assert _names(tmp_path) == ["out"]
    assert (target if foreign == "file" else target / "precious.txt").read_text() == "precious"
    with pytest.raises(ValueError):
        check_replaceable(path, "ours.txt")


def test_atomic_directory_failure_keeps_the_old_directory(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic_directory(str(target), marker="ours.txt") as staging:
        (tmp_path / os.path.basename(staging) / "ours.txt").write_text("v1")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(str(target), marker="ours.txt") as staging:
            (tmp_path / os.path.basename(staging) / "ours.txt").write_text("v2")
            raise RuntimeError("boom")
    assert (target / "ours.txt").read_text() == "v1"
    assert _names(tmp_path) == ["out"]
    # A failure of the swap itself (the rename that brings the new directory in) puts the old one back.
    replace = os.replace

    def failing_replace(source, target):
        if ".staging-" in str(source):
            raise OSError("rename failed")
        replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_directory(str(target), marker="ours.txt") as staging:
            (tmp_path / os.path.basename(staging) / "ours.txt").write_text("v3")
    assert (target / "ours.txt").read_text() == "v1"
    assert _names(tmp_path) == ["out"]


def test_atomic_directory_requires_the_marker_in_what_it_swaps_in(tmp_path):
    with pytest.raises(ValueError, match="holds no ours.txt"):
        with atomic_directory(str(tmp_path / "out"), marker="ours.txt") as staging:
            open(os.path.join(staging, "other.txt"), "w").close()
    assert _names(tmp_path) == []


def test_atomic_directory_replaces_the_directory_a_symlink_points_to_and_keeps_the_link(tmp_path):
    # A user keeps run/model on another disk through a link: the real directory is swapped, beside itself.
    (tmp_path / "disk" / "model").mkdir(parents=True)
    (tmp_path / "disk" / "model" / "ours.txt").write_text("v1")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model").symlink_to(tmp_path / "disk" / "model")
    with atomic_directory(str(tmp_path / "run" / "model"), marker="ours.txt") as staging:
        with open(os.path.join(staging, "ours.txt"), "w") as f:
            f.write("v2")
    assert (tmp_path / "run" / "model").is_symlink() and (tmp_path / "run" / "model" / "ours.txt").read_text() == "v2"
    assert _names(tmp_path / "run") == ["model"] and _names(tmp_path / "disk") == ["model"]


@pytest.mark.parametrize("path, expected", [("ram://run/", "ram://run"), ("gs://b/run//", "gs://b/run"),
                                            ("ram://", "ram://"), ("file:///tmp/x/", "file:///tmp/x")])
def test_normalise_path_drops_trailing_slashes_but_keeps_a_scheme_root(path, expected):
    assert fileio.normalise_path(path) == expected


def test_read_json_names_a_damaged_file(tmp_path):
    path = tmp_path / "run_config.json"
    path.write_text('{"model": {"n_layer": 2}, "tra')  # cut short, as by a full disk
    with pytest.raises(ValueError, match=rf"^{path} is damaged: it is not valid JSON \(Unterminated string"):
        fileio.read_json(str(path))
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=rf"^{path} is damaged: it is not UTF-8 text"):
        fileio.read_json(str(path))
    path.write_text('{"a": [1]}')
    assert fileio.read_json(str(path)) == {"a": [1]}


def test_read_json_turns_tensorflow_filesystem_errors_into_os_errors(monkeypatch):
    with pytest.raises(FileNotFoundError, match="^Could not read ram://fileio_missing/a.json: "):
        fileio.read_json("ram://fileio_missing/a.json")

    def denied(path, mode="r"):
        raise tf.errors.PermissionDeniedError(None, None, f"{path}; Permission denied")

    monkeypatch.setattr(tf.io.gfile, "GFile", denied)
    with pytest.raises(OSError, match=r"^Could not read ram://fileio_test/a.json: .*Permission denied$"):
        fileio.read_json("ram://fileio_test/a.json")


def test_a_tensorflow_filesystem_raises_what_os_raises_in_one_line(monkeypatch):
    """So a script reports a `gs://` bucket it cannot reach, or `s3://` (which TensorFlow no longer reads), as it
    reports a missing local path: one `error:` line, not a TensorFlow traceback."""
    with pytest.raises(OSError, match=r"^File system scheme 's3' not implemented \(file: 's3://b/x'\)$"):
        fileio.gfile("s3://b/x").exists("s3://b/x")
    with pytest.raises(FileNotFoundError):
        fileio.gfile("ram://fileio_none").listdir("ram://fileio_none")
    with pytest.raises(FileNotFoundError), fileio.gfile("ram://fileio_none/a").GFile("ram://fileio_none/a", "rb") as f:
        f.read()

    def unreachable(path):
        raise tf.errors.FailedPreconditionError(None, None, f"Could not resolve host\n\t when reading {path}")

    monkeypatch.setattr(tf.io.gfile, "isdir", unreachable)
    with pytest.raises(OSError, match=r"^Could not resolve host when reading gs://b/x$"):
        fileio.gfile("gs://b/x").isdir("gs://b/x")


def test_an_output_of_one_kind_never_replaces_one_of_another(tmp_path):
    """Every output of ours carries EXPORT_MARKER: the kind it records keeps an export off a trained model."""
    model = tmp_path / "run" / "model"
    with atomic_directory(str(model), fileio.EXPORT_MARKER, kind="trained tf_lm model") as staging:
        (tmp_path / "run" / os.path.basename(staging) / "model.keras").write_text("weights")
        fileio.write_export_marker(staging, "test", "trained tf_lm model")
    with pytest.raises(ValueError, match=r"holds a trained tf_lm model, which writing a SavedModel export there would "
                                         r"replace, so it was left untouched"):
        with atomic_directory(str(model), fileio.EXPORT_MARKER, kind="SavedModel export"):
            raise AssertionError("the body must not run")
    assert sorted(os.listdir(model)) == sorted([fileio.EXPORT_MARKER, "model.keras"])
    with atomic_directory(str(model), fileio.EXPORT_MARKER, kind="trained tf_lm model") as staging:
        fileio.write_export_marker(staging, "test", "trained tf_lm model")  # the same kind replaces it
    (model / fileio.EXPORT_MARKER).write_text("{}")  # a marker from before kinds: any of ours may replace it
    check_replaceable(str(model), fileio.EXPORT_MARKER, "SavedModel export")


def test_an_export_holding_a_file_added_since_is_not_replaced(tmp_path):
    """The marker lists the files written; a user's notes or a run trained into the export would be deleted."""
    export = tmp_path / "export"
    for _ in range(2):  # an export of only its own files is replaced
        with atomic_directory(str(export), fileio.EXPORT_MARKER, kind="SavedModel export") as staging:
            os.mkdir(os.path.join(staging, "variables"))
            with open(os.path.join(staging, "variables", "data"), "w") as f:
                f.write("weights")
            fileio.write_export_marker(staging, "test", "SavedModel export")
    assert fileio.read_json(str(export / fileio.EXPORT_MARKER))["files"] == ["variables/data"]
    for added in ("variables/NOTES.md", "NOTES.md"):  # in a folder of the export too
        (export / added).write_text("mine")
        with pytest.raises(ValueError, match=rf"is an earlier SavedModel export but also holds '{added}', which "
                                             r"replacing it would delete, so it was left untouched"):
            with atomic_directory(str(export), fileio.EXPORT_MARKER, kind="SavedModel export"):
                raise AssertionError("the body must not run")
        assert (export / added).read_text() == "mine" and (export / "variables" / "data").is_file()
        (export / added).unlink()


def test_an_export_on_a_tensorflow_filesystem_lists_its_files_too():
    # ram:// appends to a file opened for writing again: the marker, rewritten with the list, must be whole JSON.
    export = "ram://fileio_listed/export"
    with atomic_directory(export, fileio.EXPORT_MARKER, kind="SavedModel export") as staging:
        fileio.write_file(f"{staging}/data", "weights")
        fileio.write_export_marker(staging, "test", "SavedModel export")
    assert fileio.read_json(f"{export}/{fileio.EXPORT_MARKER}")["files"] == ["data"]
    fileio.write_file(f"{export}/NOTES.md", "mine")
    with pytest.raises(ValueError, match="is an earlier SavedModel export but also holds 'NOTES.md'"):
        with atomic_directory(export, fileio.EXPORT_MARKER, kind="SavedModel export"):
            raise AssertionError("the body must not run")


def test_a_marker_listing_only_the_top_level_still_lets_its_export_be_replaced(tmp_path):
    """Markers written before files were listed one by one name the folders, not the files in them."""
    export = tmp_path / "export"
    (export / "variables").mkdir(parents=True)
    (export / "variables" / "data").write_text("w")
    (export / fileio.EXPORT_MARKER).write_text('{"kind": "SavedModel export", "files": ["variables"]}')
    with atomic_directory(str(export), fileio.EXPORT_MARKER, kind="SavedModel export") as staging:
        fileio.write_export_marker(staging, "test", "SavedModel export")
    assert sorted(os.listdir(export)) == [fileio.EXPORT_MARKER]


def test_a_lock_on_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(ValueError, match=r"run is a file, not a directory; choose a new or empty directory\.$"):
        with fileio.directory_lock(str(tmp_path / "run")):
            raise AssertionError("the body must not run")
    assert (tmp_path / "run").read_text() == "not a directory"


@pytest.mark.parametrize("marker", ["not json", "[]"])
def test_a_directory_whose_export_marker_is_damaged_is_refused_untouched(tmp_path, marker):
    """An unreadable marker was taken for one from before markers recorded anything, and the directory (a user's
    notes in it) was replaced."""
    target = tmp_path / "out"
    target.mkdir()
    (target / fileio.EXPORT_MARKER).write_text(marker)
    (target / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=rf"{fileio.EXPORT_MARKER} is damaged: .*restore or remove it"):
        with atomic_directory(str(target), marker=fileio.EXPORT_MARKER, kind="SavedModel export"):
            raise AssertionError("the body must not run")
    assert (target / "notes.txt").read_text() == "precious" and _names(target) == sorted(
        [fileio.EXPORT_MARKER, "notes.txt"])


def test_not_a_directory_says_why_a_path_cannot_be_read_as_one(tmp_path):
    (tmp_path / "file").write_text("x")
    assert not_a_directory(str(tmp_path)) is None
    assert not_a_directory(str(tmp_path / "file")) == "is a file, not a directory"
    assert not_a_directory(str(tmp_path / "missing")) == "does not exist"
    assert not_a_directory("ram://nowhere") == "does not exist"


@pytest.mark.parametrize("files", ['"notes.txt config.json"', "[1, 2]", "{}"])
def test_a_marker_whose_file_list_is_damaged_is_refused_untouched(tmp_path, files):
    """A string was read as a list: any file whose name is part of it counted as the export's own."""
    target = tmp_path / "out"
    target.mkdir()
    (target / fileio.EXPORT_MARKER).write_text(f'{{"kind": "SavedModel export", "files": {files}}}')
    (target / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=rf"{fileio.EXPORT_MARKER} is damaged: its files is .*, not a list of file "
                                         "names, so the directory was left untouched"):
        with atomic_directory(str(target), marker=fileio.EXPORT_MARKER, kind="SavedModel export"):
            raise AssertionError("the body must not run")
    assert (target / "notes.txt").read_text() == "precious"


def test_check_json_types_names_the_file_and_the_first_key_it_refuses():
    types = {"size": (lambda value: type(value) is int, "an integer"), "name": (lambda value: isinstance(value, str),
                                                                                 "a string")}
    fileio.check_json_types("/x/config.json", {"name": "a", "other": None}, types)  # absent keys are not checked
    with pytest.raises(ValueError, match=r"^/x/config\.json is damaged: its size is '3', not an integer; restore it, "
                                         r"or correct that value\.$"):
        fileio.check_json_types("/x/config.json", {"size": "3", "name": 5}, types)
    with pytest.raises(ValueError, match=r"^/x/config\.json is damaged: its model name is 5, not a string;"):
        fileio.check_json_types("/x/config.json", {"name": 5}, types, within="model")
