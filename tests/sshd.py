"""A real OpenSSH server on a free loopback port, with throwaway keys, for the SSH tests.

Real sshd rather than an in-process fake, so exec, SFTP, dropped connections and changed host keys behave as on a
rented machine. Runs in the foreground (``-D``) as a child of the test, so the test can stop it. As root it logs
in as root (CI); as a normal user it can only log in as that user.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"  # absolute: sshd re-executes itself for each connection


@dataclass
class SSHServer:
    folder: Path
    port: int
    host: str = "127.0.0.1"
    user: str = field(default_factory=getpass.getuser)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def client_key(self) -> Path:
        return self.folder / "client_ed25519"

    @property
    def host_key(self) -> Path:
        return self.folder / "host_ed25519"

    @property
    def host_key_line(self) -> str:
        """The server's public key as ``type base64``, as it appears in a known_hosts line."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    @classmethod
    def start(cls, folder: Path) -> SSHServer:
        if not os.access(SSHD, os.X_OK):
            pytest.fail("sshd is not installed; .ci/run installs it (apt-get install openssh-server)")
        folder.mkdir(parents=True, exist_ok=True)
        server = cls(folder, _free_port())
        _keygen(server.client_key)
        shutil.copy(server.client_key.with_suffix(".pub"), folder / "authorized_keys")
        server._configure()
        server._launch()
        return server

    def authorize(self, public_key_line: str) -> None:
        """Let another client key in too."""
        with (self.folder / "authorized_keys").open("a") as f:
            f.write(public_key_line.strip() + "\n")

    def cut(self) -> None:
        """Drop every client connection at once, as a network cut would; the listener keeps accepting."""
        self._signal_connections(signal.SIGKILL)

    def freeze(self) -> None:
        """Make every client connection go silent without closing, as a peer lost without a word would."""
        self._signal_connections(signal.SIGSTOP)

    def logins(self) -> int:
        """How many times a client logged in: tells a reconnect from a connection that never dropped."""
        return (self.folder / "sshd.log").read_text().count("Accepted publickey")

    def new_host_key(self) -> None:
        """Restart on the same port under a new host key: what a client sees from a machine in between."""
        self.stop()
        self._configure()
        self._launch()

    def stop(self) -> None:
        if self.process is None:
            return
        self.cut()
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> SSHServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _signal_connections(self, sig: signal.Signals) -> None:
        for pid in _descendants(self.process.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _configure(self) -> None:
        for old in (self.host_key, self.host_key.with_suffix(".pub")):
            old.unlink(missing_ok=True)
        _keygen(self.host_key)
        (self.folder / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress {self.host}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            f"PidFile {self.folder / 'sshd.pid'}\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation; only root's sshd uses it
        check = subprocess.run([SSHD, "-t", "-f", self.folder / "sshd_config"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd refused the test configuration: {check.stderr}")

    def _launch(self) -> None:
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", self.folder / "sshd_config", "-E", self.folder / "sshd.log"], stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.01)
        log = (self.folder / "sshd.log").read_text() if (self.folder / "sshd.log").exists() else ""
        self.stop()
        raise RuntimeError(f"sshd did not start: {log}")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", path], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(root: int) -> list[int]:
    """Every process below ``root``: sshd's per-connection processes and the sessions they run."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # the fields after the command name, which is in parentheses and may hold spaces
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found
