"""Files: modes follow the umask, data is fsynced, killed writers leave nothing behind, folders swap in one
step, and broken safetensors files are our own error naming the file."""
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from unicompress import fileio, zoo
from unicompress.errors import CheckpointError
from unicompress.fileio import atomic_directory, atomic_path, atomic_write_bytes, remove_stale_temporaries
from unicompress.zoo.bert import load_safetensors
from unicompress.zoo.checkpoint import read_checkpoint, safetensors_header, save_checkpoint


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(value: int) -> None:
        os.umask(value)
    yield set_
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                        (0o002, 0o664, 0o775)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert _mode(atomic_write_bytes(tmp_path / "a.bin", b"x")) == file_mode
    with atomic_path(tmp_path / "b.onnx") as tmp:
        tmp.write_bytes(b"y")
    assert _mode(tmp_path / "b.onnx") == file_mode
    with atomic_directory(tmp_path / "m.native") as tmp:
        (tmp / "w.bin").write_bytes(b"z")
    assert _mode(tmp_path / "m.native") == dir_mode and _mode(tmp_path / "m.native" / "w.bin") == file_mode


def test_rewriting_a_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "shared.json"
    path.write_text("{}")
    path.chmod(0o644)
    atomic_write_bytes(path, b"[]")
    assert _mode(path) == 0o644 and path.read_bytes() == b"[]"


def test_data_and_the_rename_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    with atomic_path(tmp_path / "m.onnx") as tmp:
        tmp.write_bytes(b"written by an exporter that never fsyncs")
    assert any(".m.onnx." in p for p in synced), synced  # the data, before the rename
    assert str(tmp_path) in synced  # the folder, after it
    synced.clear()
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_bytes(b"1")
    assert any(p.endswith("/f") for p in synced) and str(tmp_path) in synced


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from unicompress.fileio import atomic_directory, atomic_path
    target = sys.argv[1]
    with atomic_path(target + "/model.onnx") as tmp:
        tmp.write_bytes(b"half")
        with atomic_directory(target + "/model.torch") as d:
            (d / "w.bin").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
""")


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(".tmp" in n for n in left), left  # kill -9: nothing cleaned up ...
    assert not (tmp_path / "model.onnx").exists()  # ... and no half-written final file
    atomic_write_bytes(tmp_path / "model.onnx", b"whole")
    with atomic_directory(tmp_path / "model.torch") as d:
        (d / "w.bin").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.torch"]  # the next run swept them


def test_live_writers_temporaries_are_kept(tmp_path):
    with atomic_path(tmp_path / "x.onnx") as tmp:
        tmp.write_bytes(b"in progress")
        assert remove_stale_temporaries(tmp_path / "x.onnx") == [] and tmp.exists()
        other = tmp_path / f".x.onnx.{fileio._host_tag()}1-abcdefgh.tmp.onnx"  # pid 1 is alive
        other.write_bytes(b"")
        assert remove_stale_temporaries(tmp_path / "x.onnx") == [] and other.exists()


def test_a_folder_is_replaced_whole_in_one_step(tmp_path):
    target = tmp_path / "m.torch"
    with atomic_directory(target) as d:
        (d / "old.bin").write_bytes(b"old")
    inode = os.stat(target).st_ino
    with atomic_directory(target) as d:
        (d / "new.bin").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new.bin"] and os.stat(target).st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.torch"]  # no ".old" folder, no temporary


def test_the_exchange_swaps_both_paths_when_the_kernel_can(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "in-a").touch()
    if not fileio._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the two-rename fallback is used")
    assert (b / "in-a").exists() and not (a / "in-a").exists()


def test_a_target_of_the_wrong_kind_is_a_clear_error_and_nothing_is_left(tmp_path):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(IsADirectoryError, match="a folder is in the way"):
        atomic_write_bytes(tmp_path / "m.onnx", b"x")
    (tmp_path / "m.torch").write_bytes(b"a file")
    with pytest.raises(NotADirectoryError, match="a file is in the way"):
        with atomic_directory(tmp_path / "m.torch"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.torch"]


# ---- safetensors: our own error, naming the file -----------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cfg = zoo.config_for("tiny-bert", 3)
    return save_checkpoint(zoo.weights_for("tiny-bert", cfg), tmp_path_factory.mktemp("ck") / "g.safetensors",
                           "tiny-bert").read_bytes()


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _lying_shape(data: bytes) -> bytes:
    header, body = _header(data)
    header["classifier.weight"]["shape"] = [300, 32]
    return _with_header(header, body)


def _unknown_zoo(data: bytes) -> bytes:
    header, body = _header(data)
    header["__metadata__"]["unicompress_zoo"] = "gpt-17"
    return _with_header(header, body)


def _bf16(data: bytes) -> bytes:
    header, body = _header(data)
    entry = header["classifier.bias"]
    entry["dtype"], entry["shape"] = "BF16", [entry["shape"][0] * 2]  # same byte count, a dtype numpy lacks
    return _with_header(header, body)


def test_a_bf16_checkpoint_reads_as_float32_whatever_was_imported_before(tmp_path, good):
    from safetensors.numpy import load, save

    ml_dtypes = pytest.importorskip("ml_dtypes")
    weights = load(good)
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(save({k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()},
                          metadata={"unicompress_zoo": "tiny-bert"}))
    ckpt = read_checkpoint(path)
    w = ckpt.weights["classifier.weight"]
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, weights["classifier.weight"], rtol=2 ** -7, atol=1e-6)  # bf16: 8 mantissa bits


def _missing_tensor(data: bytes) -> bytes:
    from safetensors.numpy import load, save

    weights = load(data)
    del weights["bert.pooler.dense.bias"]
    return save(weights, metadata={"unicompress_zoo": "tiny-bert"})  # a valid file that lacks one tensor


@pytest.mark.parametrize("corrupt, fragment", [
    (lambda d: b"", "not a valid safetensors file"),
    (lambda d: d[:len(d) // 2], "not a valid safetensors file"),
    (lambda d: b"\xff" * 8 + d[8:], "not a valid safetensors file"),
    (_lying_shape, "not a valid safetensors file"),
    (_bf16, "wrong shape: classifier.bias"),  # BF16 is read (ml_dtypes), so the doubled shape is what lies
    (_unknown_zoo, "names zoo model 'gpt-17'"),
    (_missing_tensor, "missing: bert.pooler.dense.bias"),
])
def test_a_corrupt_or_lying_checkpoint_is_our_error_naming_the_file(tmp_path, good, corrupt, fragment):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(corrupt(good))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("make, fragment", [(lambda p: None, "not found"), (lambda p: p.mkdir(), "is a directory")])
def test_missing_weights_files_are_our_error_for_every_reader(tmp_path, make, fragment):
    path = tmp_path / "w.safetensors"
    make(path)
    for read in (read_checkpoint, load_safetensors, safetensors_header):
        with pytest.raises(CheckpointError, match=fragment) as info:
            read(path)
        assert str(path) in str(info.value)


def test_the_header_is_read_without_loading_tensors(tmp_path, good):
    path = tmp_path / "g.safetensors"
    path.write_bytes(good)
    metadata, shapes = safetensors_header(path)
    assert metadata["unicompress_zoo"] == "tiny-bert" and shapes["classifier.weight"] == (3, 32)
    assert read_checkpoint(path).weights["classifier.weight"].dtype == np.float32
