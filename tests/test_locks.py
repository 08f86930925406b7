"""kdepth.locks: one writer per folder, stale locks taken over, released on every way out."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kdepth.locks import LOCK_NAME, FolderLock, FolderLocked, LockHolder, output_folder_lock


def _dead_pid():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _write_lock(where, **fields):
    where.mkdir(parents=True, exist_ok=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-12-01T16:51:00+00:00",
              "command": "kdepth fit --stage 1 --name same", "token": "t", "pid_start": None,
              "folder": str(where.resolve()), **fields}
    (where / LOCK_NAME).write_text(json.dumps(holder))


def test_the_lock_names_this_process_and_goes_at_the_end(tmp_path):
    folder = tmp_path / "runs" / "same" / "stage1"
    with FolderLock(folder):
        holder = LockHolder.read(folder / LOCK_NAME)
        assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
        assert holder.folder == str(folder.resolve()) and holder.command
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # no temporary left
    assert not (folder / LOCK_NAME).exists()


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    with FolderLock(tmp_path, activity="being trained", fix="wait for it, or use --name NEW"):
        with pytest.raises(FolderLocked) as e:
            FolderLock(tmp_path, activity="being trained", fix="wait for it, or use --name NEW").acquire()
    message = str(e.value)
    assert f"{tmp_path} is being trained by process {os.getpid()} on {socket.gethostname()} since " in message
    assert message.endswith("Wait for it, or use --name NEW.")


def test_the_lock_is_released_on_an_exception_and_on_sigterm(tmp_path):
    with pytest.raises(RuntimeError), FolderLock(tmp_path):
        raise RuntimeError("fails")
    assert not (tmp_path / LOCK_NAME).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # else SIGTERM is someone else's to handle
    with pytest.raises(SystemExit) as e, FolderLock(tmp_path):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises in here
    assert e.value.code == 128 + signal.SIGTERM
    assert not (tmp_path / LOCK_NAME).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid())
    messages = []
    with FolderLock(tmp_path, echo=messages.append):
        assert LockHolder.read(tmp_path / LOCK_NAME).pid == os.getpid()
    assert len(messages) == 1 and "is stale (the process is gone); taking it over" in messages[0]


def test_a_lock_of_a_reused_pid_or_copied_from_another_folder_is_stale(tmp_path):
    _write_lock(tmp_path / "a", pid_start=1)  # this pid, but a process that started at another time
    _write_lock(tmp_path / "b", folder=str(tmp_path / "elsewhere"))
    messages = []
    for name in ("a", "b"):
        with FolderLock(tmp_path / name, echo=messages.append):
            pass
    assert "process is gone" in messages[0] and "copied from another folder" in messages[1]


def test_a_lock_from_another_host_is_left_and_the_message_says_how_to_remove_it(tmp_path):
    _write_lock(tmp_path, host="other-machine")
    with pytest.raises(FolderLocked) as e:
        FolderLock(tmp_path).acquire()
    assert "on other-machine" in str(e.value) and "another host" in str(e.value)
    assert f"delete {tmp_path / LOCK_NAME}" in str(e.value)
    assert (tmp_path / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = FolderLock(tmp_path).acquire()
    _write_lock(tmp_path, token="someone else")
    lock.release()
    assert LockHolder.read(tmp_path / LOCK_NAME).token == "someone else"


def test_an_unwritable_folder_is_an_error_naming_the_lock(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception) as e:
        FolderLock(tmp_path / "file" / "sub").acquire()
    assert "cannot create the lock file" in str(e.value) and "Nothing was written" in str(e.value)


def test_output_folder_lock_removes_a_folder_it_made_and_left_empty(tmp_path):
    with output_folder_lock(tmp_path / "out"):
        assert (tmp_path / "out" / LOCK_NAME).exists()
    assert not (tmp_path / "out").exists()
    with output_folder_lock(tmp_path / "out2"):
        (tmp_path / "out2" / "metadata.json").write_text("{}")
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["metadata.json"]
