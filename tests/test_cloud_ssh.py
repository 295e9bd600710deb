"""core.cloud.ssh against a real OpenSSH server on localhost: pinning, copies, detached jobs, and cut connections.

The "remote" machine is this one, so remote files are checked straight on the local disk.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import paramiko
import pytest

from core.cloud.ssh import HostKeyChanged, Remote, SSHError, ensure_key


@pytest.fixture
def connect(sshd, tmp_path: Path):
    """Make a Remote to the test server (quick timeouts, so failures fail fast); all closed afterwards."""
    made: list[Remote] = []

    def make(key: Path | None = None, **kwargs) -> Remote:
        options = {"timeout": 5.0, "retries": 3, "retry_wait_s": 0.1} | kwargs
        remote = Remote(sshd.host, sshd.port, sshd.user, key or sshd.client_key, tmp_path / "known_hosts", **options)
        made.append(remote)
        return remote

    yield make
    for remote in made:
        remote.close()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sample_folder(folder: Path) -> Path:
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "deep" / "pic 1 (ü) & 'x'.bin").write_bytes(os.urandom(70_000))
    (folder / "deep" / "er" / "z.safetensors").write_bytes(os.urandom(300_000))
    return folder


# Connecting -----------------------------------------------------------------------------------------------------


def test_first_contact_pins_the_host_key_and_later_connects_match_it(sshd, connect, tmp_path):
    with connect() as remote:
        assert remote.run("echo hello") == (0, "hello\n")
    known = (tmp_path / "known_hosts").read_text()
    assert known == f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n"
    with connect() as remote:
        assert remote.run("echo again")[1] == "again\n"
    assert (tmp_path / "known_hosts").read_text() == known


def test_a_changed_host_key_is_refused_and_the_pin_kept(sshd, connect, tmp_path):
    connect().connect()
    known = (tmp_path / "known_hosts").read_text()
    sshd.new_host_key()
    with pytest.raises(HostKeyChanged, match="refused to connect") as caught:
        connect().connect()
    assert str(tmp_path / "known_hosts") in str(caught.value)
    assert (tmp_path / "known_hosts").read_text() == known


def test_a_pin_of_another_key_type_counts_as_changed(sshd, connect, tmp_path):
    other = paramiko.ECDSAKey.generate()
    pin = f"[127.0.0.1]:{sshd.port} {other.get_name()} {other.get_base64()}\n"
    (tmp_path / "known_hosts").write_text(pin)
    with pytest.raises(HostKeyChanged):
        connect().connect()
    assert (tmp_path / "known_hosts").read_text() == pin


def test_ensure_key_makes_a_key_the_server_accepts(sshd, connect, tmp_path):
    key = tmp_path / "keys" / "loratrain_ed25519"
    line = ensure_key(key)
    assert line.startswith("ssh-ed25519 AAAA") and line.endswith(" loratrain")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert ensure_key(key) == line  # kept, not replaced
    sshd.authorize(line)
    with connect(key) as remote:
        assert remote.run("echo in")[1] == "in\n"


def test_an_unreachable_machine_and_a_refused_key_are_plain_errors(sshd, connect, tmp_path):
    with pytest.raises(SSHError, match="after 2 tries"):
        Remote("127.0.0.1", 1, "root", sshd.client_key, tmp_path / "kh", retries=1, retry_wait_s=0.01).connect()
    stranger = tmp_path / "stranger"
    ensure_key(stranger)
    with pytest.raises(SSHError, match="did not accept loratrain's SSH key"):
        connect(stranger).connect()


# Commands -------------------------------------------------------------------------------------------------------


def test_a_failing_command_names_itself_and_its_last_lines(connect):
    remote = connect()
    with pytest.raises(SSHError, match="exit code 4") as caught:
        remote.run("for i in $(seq 1 20); do echo line $i; done; echo oops >&2; exit 4")
    message = str(caught.value)
    assert "`for i in …`" in message and "line 20\noops" in message and "line 10\n" not in message
    assert remote.run("exit 4", check=False) == (4, "")


def test_run_reconnects_after_a_cut(sshd, connect):
    remote = connect()
    assert remote.run("echo before")[1] == "before\n"
    sshd.cut()
    assert remote.run("echo after")[1] == "after\n"
    assert sshd.logins() == 2


def test_a_connection_gone_silent_times_out_and_is_replaced(sshd, connect):
    remote = connect(timeout=1.0)
    assert remote.run("echo before")[1] == "before\n"
    sshd.freeze()
    assert remote.run("echo after", timeout=1.0)[1] == "after\n"
    assert sshd.logins() == 2


# Files ----------------------------------------------------------------------------------------------------------


def test_upload_copies_a_folder_exactly_and_skips_what_is_there(connect, tmp_path):
    local = sample_folder(tmp_path / "local")
    target = tmp_path / "remote" / "project"
    remote = connect()
    seen: list[int] = []
    sent = remote.upload(local, str(target), progress=seen.append)
    assert tree(target) == tree(local)
    assert sent == sum(len(b) for b in tree(local).values()) == seen[-1]
    assert remote.upload(local, str(target)) == 0


def test_upload_replaces_a_half_written_part_file(connect, tmp_path):
    local = sample_folder(tmp_path / "local")
    target = tmp_path / "remote"
    remote = connect()
    remote.upload(local, str(target))
    big = target / "deep" / "er" / "z.safetensors"
    big.rename(big.with_name("z.safetensors.part"))  # as a cut upload leaves it: half a file, under .part
    big.with_name("z.safetensors.part").write_bytes(b"half")
    assert remote.upload(local, str(target)) == 300_000
    assert tree(target) == tree(local)


def test_upload_goes_on_after_a_cut_midway(sshd, connect, tmp_path):
    local = tmp_path / "model.safetensors"
    local.write_bytes(os.urandom(4_000_000))
    remote = connect()
    cuts: list[int] = []

    def cut_once(sent: int) -> None:
        if not cuts and sent > 0:
            cuts.append(sent)
            sshd.cut()

    remote.upload(local, str(tmp_path / "remote" / "model.safetensors"), progress=cut_once)
    assert cuts and sshd.logins() == 2
    assert (tmp_path / "remote" / "model.safetensors").read_bytes() == local.read_bytes()
    assert not (tmp_path / "remote" / "model.safetensors.part").exists()


def test_download_copies_a_folder_exactly_and_skips_what_is_here(connect, tmp_path):
    source = sample_folder(tmp_path / "remote")
    local = tmp_path / "local" / "outputs"
    remote = connect()
    assert remote.download(str(source), local) == 370_006
    assert tree(local) == tree(source)
    assert remote.download(str(source), local) == 0
    with pytest.raises(SSHError, match="There is no"):
        remote.download(str(tmp_path / "nothing"), tmp_path / "x")


# Detached jobs --------------------------------------------------------------------------------------------------


def test_a_launched_job_is_followed_to_its_exit_code_and_not_started_twice(connect, tmp_path):
    remote, workdir = connect(), str(tmp_path / "job")
    assert remote.launch("echo one; sleep 0.5; printf 'two\\rthree\\r\\nfour'; exit 3", workdir, "train")
    assert remote.running(workdir, "train")
    assert not remote.launch("echo again", workdir, "train")  # still running
    lines: list[str] = []
    assert remote.follow(workdir, "train", lines.append, poll_s=0.1) == 3
    assert lines == ["one", "two", "three", "four"]
    assert not remote.launch("echo again", workdir, "train")  # finished: its rc is there
    assert remote.exit_code(workdir, "train") == 3 and not remote.running(workdir, "train")
    assert remote.read_log(workdir, "train", 4) == (b"two\rthree\r\nfour", 19)


def test_the_job_survives_a_cut_and_follow_picks_it_up(sshd, connect, tmp_path):
    remote, workdir = connect(), str(tmp_path / "job")
    remote.launch("echo one; sleep 0.6; echo two; sleep 0.3; echo three; exit 3", workdir, "train")
    lines: list[str] = []

    def cut_after_first(line: str) -> None:
        lines.append(line)
        if line == "one":
            sshd.cut()

    assert remote.follow(workdir, "train", cut_after_first, poll_s=0.1) == 3
    assert lines == ["one", "two", "three"] and sshd.logins() == 2


def test_follow_can_be_asked_to_stop_and_reports_a_vanished_job(connect, tmp_path):
    remote, workdir = connect(), str(tmp_path / "job")
    assert remote.exit_code(workdir, "train") is None and not remote.running(workdir, "train")  # never launched
    remote.launch("echo started; sleep 30", workdir, "train")
    assert remote.follow(workdir, "train", lambda line: None, poll_s=0.1, should_stop=lambda: True) is None
    remote.run(f"kill -9 -- -$(cat {tmp_path / 'job' / 'train.pid'})")  # gone without an exit code, as in a reboot
    with pytest.raises(SSHError, match="stopped without finishing"):
        remote.follow(workdir, "train", lambda line: None, poll_s=0.1)


def test_stop_ends_a_long_job(connect, tmp_path):
    remote, workdir = connect(), str(tmp_path / "job")
    remote.launch("sleep 60", workdir, "train")
    remote.stop(workdir, "train", grace_s=5)
    assert not remote.running(workdir, "train") and remote.exit_code(workdir, "train") == 143
    remote.stop(workdir, "train")  # nothing to stop: no error


def test_stop_kills_a_job_that_ignores_sigterm(connect, tmp_path):
    remote, workdir = connect(), str(tmp_path / "job")
    remote.launch("trap '' TERM; sleep 60", workdir, "train")
    remote.stop(workdir, "train", grace_s=0.3)
    assert not remote.running(workdir, "train") and remote.exit_code(workdir, "train") == 137
