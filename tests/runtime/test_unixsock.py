"""Unix sockets bound in folders a peer can write: the mode is set on the socket, never through a link."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from clawden import unixsock


def test_a_bound_socket_gets_its_mode_even_at_a_path_longer_than_sun_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    with unixsock.bind(deep / "host.bell", socket.SOCK_DGRAM, mode=0o666):
        assert stat.S_IMODE((deep / "host.bell").lstat().st_mode) == 0o666
        assert unixsock.ring(deep / "host.bell")


def test_a_link_swapped_in_for_the_socket_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    host_file = tmp_path / "shadow"
    host_file.write_text("secret")
    host_file.chmod(0o600)
    sock = unixsock.bind(tmp_path / "host.bell", socket.SOCK_DGRAM, mode=0o600)
    with sock:
        (tmp_path / "host.bell").unlink()  # what an agent sharing the folder could do right after the bind
        (tmp_path / "host.bell").symlink_to(host_file)
        with pytest.raises(OSError) as refused:
            unixsock.chmod_socket(tmp_path / "host.bell", 0o666)
    assert refused.value.errno == errno.EEXIST
    assert stat.S_IMODE(host_file.stat().st_mode) == 0o600


def test_a_plain_file_in_the_sockets_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / "admin.sock").write_text("")
    os.chmod(tmp_path / "admin.sock", 0o600)
    with pytest.raises(OSError):
        unixsock.chmod_socket(tmp_path / "admin.sock", 0o666)
    assert stat.S_IMODE((tmp_path / "admin.sock").stat().st_mode) == 0o600


def test_a_stale_socket_or_link_at_the_path_is_replaced_by_the_new_socket(tmp_path: Path) -> None:
    (tmp_path / "gateway.sock").symlink_to(tmp_path / "elsewhere")
    with unixsock.bind(tmp_path / "gateway.sock", mode=0o660):
        assert stat.S_ISSOCK((tmp_path / "gateway.sock").lstat().st_mode)
        assert stat.S_IMODE((tmp_path / "gateway.sock").lstat().st_mode) == 0o660


def test_a_stream_socket_answers_only_where_someone_listens_even_past_sun_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert not unixsock.answers(deep / "gateway.sock")  # nothing there
    with unixsock.bind(deep / "gateway.sock") as sock:
        assert not unixsock.answers(deep / "gateway.sock")  # bound, not listening: a dead vault's leftover
        sock.listen()
        assert unixsock.answers(deep / "gateway.sock")
