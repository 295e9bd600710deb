"""SSH to a rented GPU: commands, resumable file copies and detached jobs that outlive the connection.

Synchronous (paramiko); callers run it in a thread. Every step is safe to repeat, because the connection to a
machine on the other side of the world drops: a dropped connection is reopened (the machine's pinned identity must
still match) and the step runs again. Training never runs in the foreground channel: ``launch`` starts it detached,
with its log, pid and exit code in files, so ``follow`` can pick it up again after any drop.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shlex
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.cloud.providers import CloudError

log = logging.getLogger(__name__)
q = shlex.quote
T = TypeVar("T")


class SSHError(CloudError):
    """Talking to the rented machine failed; the message says what and what happens next."""


class HostKeyChanged(SSHError):
    """The machine's identity differs from the one pinned at first contact: refuse, it could be someone in between."""

    def __init__(self, where: str, known_hosts: Path) -> None:
        super().__init__(
            f"The rented machine at {where} no longer proves it is the same machine loratrain first connected to "
            "(its SSH host key changed). Someone could be in between, so loratrain refused to connect and sent "
            "nothing to it. If you replaced or rebuilt that machine yourself, remove its line from "
            f"{known_hosts} and try again; otherwise stop the machine in your provider's dashboard."
        )


def ensure_key(path: Path) -> str:
    """Create loratrain's own ed25519 key pair at ``path`` (and ``.pub``) if missing; return the public key line.

    Its own key, so a rented machine never gets access to anything but what loratrain puts there.
    """
    public = path.with_suffix(".pub")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        public.unlink(missing_ok=True)  # a stray public key for some other private key would be a lie
    if not public.exists():
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        public.write_text(f"{line.decode()} loratrain\n")
    return public.read_text().strip()


class _PinFirstKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record the first key a host shows; a host already pinned under another key type is
    refused (paramiko only checks mismatches within one key type)."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        pinned = client.get_host_keys().lookup(hostname)
        if pinned is not None:
            raise paramiko.BadHostKeyException(hostname, key, next(iter(pinned.values())))
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


class Remote:
    """One rented machine over SSH, key auth only, its host key pinned in ``known_hosts``."""

    def __init__(self, host: str, port: int, user: str, key: Path, known_hosts: Path, *, timeout: float = 20.0,
                 keepalive_s: float = 15.0, retries: int = 5, retry_wait_s: float = 3.0) -> None:  # fmt: skip
        self.host, self.port, self.user, self.key, self.known_hosts = host, port, user, key, known_hosts
        self.timeout, self.keepalive_s, self.retries, self.retry_wait_s = timeout, keepalive_s, retries, retry_wait_s
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Remote:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection, retrying while the machine's SSH service is not up yet (a new machine's isn't)."""
        self.close()
        pkey = paramiko.PKey.from_path(self.key)
        for attempt in range(self.retries + 1):
            try:
                self._client = self._open(pkey)
                return
            except paramiko.BadHostKeyException as err:
                raise HostKeyChanged(self.where, self.known_hosts) from err
            except (OSError, EOFError, paramiko.SSHException) as err:
                # A new machine's SSH service may not be up, or may not have installed the key yet (Vast's
                # onstart does it moments after the start): both are retried before giving up.
                if attempt == self.retries:
                    raise self._unreachable(err, attempt) from err
                log.info("SSH to %s not ready (%s); trying again", self.where, err)
                time.sleep(self.retry_wait_s)

    def _unreachable(self, err: Exception, attempt: int) -> SSHError:
        if isinstance(err, paramiko.AuthenticationException):
            return SSHError(f"The rented machine at {self.where} did not accept loratrain's SSH key "
                            f"({self.key.with_suffix('.pub')}) for the user {self.user}. Check that the key is added "
                            "to your cloud provider account.")  # fmt: skip
        return SSHError(f"Could not connect to the rented machine at {self.where} after {attempt + 1} tries ({err}). "
                        "A new machine can take a few minutes to start; if this keeps happening, it may have stopped: "
                        "check your provider's dashboard so it does not keep billing.")  # fmt: skip

    def _open(self, pkey: paramiko.PKey) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(_PinFirstKey(self.known_hosts))
        try:
            client.connect(self.host, self.port, self.user, pkey=pkey, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout, channel_timeout=self.timeout,
                           allow_agent=False, look_for_keys=False)  # fmt: skip
        except BaseException:
            client.close()
            raise
        client.get_transport().set_keepalive(max(1, round(self.keepalive_s)))
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._sftp = None

    # Commands -----------------------------------------------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None, check: bool = True) -> tuple[int, str]:
        """Run ``command`` (safe to repeat) and return its exit code and output (stdout and stderr together).
        ``timeout`` bounds the whole command; None waits as long as it runs."""
        code, output = self._again(f"running {_first_words(command)}", lambda: self._exec(command, timeout))
        text = output.decode(errors="replace")
        if check and code != 0:
            tail = "\n".join(text.strip().splitlines()[-10:])
            raise SSHError(
                f"The command {_first_words(command)} failed on the rented machine (exit code {code}). "
                f"Its last lines:\n{tail}"
            )
        return code, text

    def _exec(self, command: str, timeout: float | None) -> tuple[int, bytes]:
        transport = self._transport()
        channel = transport.open_session(timeout=self.timeout)
        try:
            channel.set_combine_stderr(True)  # before exec: one stream, and no stalled window on unread stderr
            channel.settimeout(timeout)
            channel.exec_command(command)
            deadline = None if timeout is None else time.monotonic() + timeout
            output = bytearray()
            while chunk := channel.recv(1 << 16):
                output += chunk
                if deadline is not None:
                    channel.settimeout(max(deadline - time.monotonic(), 0.001))
            code = channel.recv_exit_status()
        finally:
            channel.close()
        if code == -1 and self._lost():  # -1 is also a command killed by a signal; a dead connection is a drop
            raise EOFError("the connection dropped during the command")
        return code, bytes(output)

    # Connection upkeep --------------------------------------------------------------------------------------------

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            self.connect()
            transport = self._client.get_transport()
        return transport

    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self._transport()  # first: a reconnect drops the old SFTP session
        if self._sftp is None:
            self._sftp = paramiko.SFTPClient.from_transport(transport)
            self._sftp.get_channel().settimeout(self.timeout)  # a silent peer ends in a timeout, not a hang
        return self._sftp

    def _lost(self) -> bool:
        """Whether the connection is gone: asked when an error could be a drop or a real failure."""
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            return True
        try:
            transport.open_session(timeout=self.timeout).close()
        except (OSError, EOFError, paramiko.SSHException):
            return True
        return False

    def _again(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``; when the connection drops, reconnect and run it again, up to ``retries`` times."""
        for _ in range(self.retries + 1):
            try:
                return action()
            except (OSError, EOFError, paramiko.SSHException) as err:
                drop = isinstance(err, (EOFError, paramiko.SSHException, TimeoutError))
                if not drop and not self._lost():
                    raise  # a real failure (a missing file, a full disk), not a connection problem
                log.info("connection to %s dropped while %s (%r); reconnecting", self.where, what, err)
                self.close()
        raise SSHError(
            f"The connection to the rented machine at {self.where} kept dropping while {what}; loratrain tried "
            f"{self.retries + 1} times. Your internet connection or the provider may be having trouble. The machine "
            "may still be running and billing: check your provider's dashboard if this goes on."
        )

    # Files --------------------------------------------------------------------------------------------------------

    def upload(self, local: Path, remote: str, progress: Callable[[int], None] | None = None) -> int:
        """Copy a file or folder to ``remote``, skipping files already there (same size and time), so a cut
        upload just runs again. ``progress`` gets the bytes sent so far. Returns the bytes sent."""
        folders, files = _local_tree(Path(local), remote)
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            if progress:
                progress(sent)

        def attempt() -> None:
            self._exec_checked(f"mkdir -p {' '.join(map(q, folders))}")
            sftp = self._sftp_client()
            listings: dict[str, dict[str, paramiko.SFTPAttributes]] = {}
            for path, target in files:
                folder, name = posixpath.split(target)
                if folder not in listings:
                    listings[folder] = {a.filename: a for a in sftp.listdir_attr(folder)}
                _put(sftp, path, target, listings[folder].get(name), count)

        self._again(f"uploading {Path(local).name}", attempt)
        return sent

    def download(self, remote: str, local: Path) -> int:
        """Copy a remote file or folder to ``local`` by the same rules as ``upload``. Returns the bytes received."""
        received = 0

        def count(n: int) -> None:
            nonlocal received
            received += n

        def attempt() -> None:
            sftp = self._sftp_client()
            try:
                attrs = sftp.stat(remote)
            except FileNotFoundError:
                raise SSHError(f"There is no {remote} on the rented machine, so there was nothing to fetch.") from None
            _fetch(sftp, remote, attrs, Path(local), count)

        self._again(f"downloading {posixpath.basename(remote)}", attempt)
        return received

    def _exec_checked(self, command: str, extra_s: float = 0.0) -> bytes:
        """A quick command (``extra_s`` more than ``timeout``) inside an ``_again`` action: a failure is an
        SSHError, a drop propagates."""
        code, output = self._exec(command, self.timeout + extra_s)
        if code != 0:
            raise SSHError(f"{_first_words(command)} failed on the rented machine: {output.decode(errors='replace')}")
        return output

    # Detached jobs ------------------------------------------------------------------------------------------------

    def launch(self, command: str, workdir: str, name: str) -> bool:
        """Start ``command`` in ``workdir``, detached so it survives the connection. Does nothing (False) when the
        job already ran (``name.rc``) or still runs; True when it started it."""
        rc, tmp = q(f"{name}.rc"), q(f"{name}.rc.tmp")
        # `trap : TERM` keeps the wrapper alive through stop()'s SIGTERM, so it still records the job's exit code.
        wrapper = f"trap : TERM\n(\n{command}\n)\necho $? > {tmp} && mv {tmp} {rc}"
        script = (
            f"mkdir -p {q(workdir)} && cd {q(workdir)} || exit 1\n"
            f"if [ -e {rc} ] || {_alive(name)}; then echo already; exit 0; fi\n"
            f"setsid nohup sh -c {q(wrapper)} >> {q(name + '.log')} 2>&1 < /dev/null &\n"
            f"echo $! > {q(name + '.pid')}; echo started"
        )
        output = self._again(f"starting {name}", lambda: self._exec_checked(script))
        return output.strip().endswith(b"started")

    def exit_code(self, workdir: str, name: str) -> int | None:
        """The job's exit code; None while it runs or when it never ran (tell them apart with ``running``)."""
        state, _ = self._poll(workdir, name, None)
        return int(state.split()[1]) if state.startswith("rc ") else None

    def running(self, workdir: str, name: str) -> bool:
        return self._poll(workdir, name, None)[0] == "running"

    def read_log(self, workdir: str, name: str, offset: int) -> tuple[bytes, int]:
        """The job's log bytes after ``offset``, and the offset to ask from next."""
        data = self._poll(workdir, name, offset)[1]
        return data, offset + len(data)

    def follow(self, workdir: str, name: str, on_output: Callable[[str], None], *, offset: int = 0,
               poll_s: float = 2.0, should_stop: Callable[[], bool] = lambda: False) -> int | None:  # fmt: skip
        """Pass each new log line (``\\r`` ends a line too; blank lines skipped) to ``on_output`` until the job
        ends (its exit code) or ``should_stop()`` (None). Survives drops; a job that vanished is an SSHError."""
        pending = b""
        while True:
            state, data = self._poll(workdir, name, offset)  # the state first: after an rc, the log is complete
            offset += len(data)
            *lines, pending = re.split(rb"[\r\n]", pending + data)
            if state.startswith("rc "):
                lines.append(pending)
            for line in lines:
                if line.strip():
                    on_output(line.decode(errors="replace"))
            if state.startswith("rc "):
                return int(state.split()[1])
            if state == "gone":
                raise SSHError(
                    f"The job {name} on the rented machine stopped without finishing (the machine may have "
                    "restarted). Its log so far is kept; loratrain cannot follow it any further."
                )
            if should_stop():
                return None
            time.sleep(poll_s)

    def stop(self, workdir: str, name: str, grace_s: float = 30.0) -> None:
        """SIGTERM the job's process group, SIGKILL after ``grace_s``; nothing when it is not running."""
        rc = q(name + ".rc")
        script = (
            f"cd {q(workdir)} 2>/dev/null || exit 0\n"
            f"{_alive(name)} || exit 0\n"
            f'kill -s TERM -- "-$p"; i=0\n'
            f"while {_alive(name)} && [ $i -lt {max(1, round(grace_s * 10))} ]; do sleep 0.1; i=$((i+1)); done\n"
            f'if {_alive(name)}; then kill -s KILL -- "-$p"; [ -e {rc} ] || echo 137 > {rc}; fi'
        )
        self._again(f"stopping {name}", lambda: self._exec_checked(script, grace_s))

    def _poll(self, workdir: str, name: str, offset: int | None) -> tuple[str, bytes]:
        """One round trip: the job's state ("running", "rc N" or "gone") and, with an offset, its new log bytes."""
        rc = q(name + ".rc")
        script = (
            f"cd {q(workdir)} 2>/dev/null || {{ echo gone; exit 0; }}\n"
            f"if {_alive(name)}; then echo running; elif [ -e {rc} ]; then echo rc $(cat {rc}); else echo gone; fi\n"
        )
        if offset is not None:
            script += f"tail -c +{offset + 1} {q(name + '.log')} 2>/dev/null; true"
        output = self._again(f"checking {name}", lambda: self._exec_checked(script))
        state, _, data = output.partition(b"\n")
        return state.decode().strip(), data


def _alive(name: str) -> str:
    """Shell test: the pid in ``name.pid`` is alive and still our wrapper (its command line names our rc file),
    so a pid reused after a reboot does not count. Leaves the pid in ``$p``."""
    return (
        f'{{ p=$(cat {q(name + ".pid")} 2>/dev/null) && [ -n "$p" ] '
        f'&& grep -qsF -- {q(name + ".rc.tmp")} "/proc/$p/cmdline"; }}'
    )


def _first_words(command: str) -> str:
    words = command.split()
    return "`" + " ".join(words[:3]) + (" …" if len(words) > 3 else "") + "`"


def _same(size: int, mtime: float, attrs: paramiko.SFTPAttributes | os.stat_result | None) -> bool:
    return attrs is not None and attrs.st_size == size and int(attrs.st_mtime or 0) == int(mtime)


def _local_tree(local: Path, remote: str) -> tuple[list[str], list[tuple[Path, str]]]:
    """Remote folders to create and (file, remote path) pairs. Links to files are followed; linked folders are
    not entered, so the walk never leaves the folder."""
    if not local.is_dir():
        local.stat()  # a missing file fails here, before any network
        return [posixpath.dirname(remote) or "."], [(local, remote)]
    folders, files = [], []
    for dirpath, _, filenames in os.walk(local):
        relative = Path(dirpath).relative_to(local).parts
        folders.append(posixpath.join(remote, *relative))
        for filename in sorted(filenames):
            if Path(dirpath, filename).is_file():
                files.append((Path(dirpath, filename), posixpath.join(remote, *relative, filename)))
    return folders, files


def _put(sftp: paramiko.SFTPClient, path: Path, target: str, existing: paramiko.SFTPAttributes | None,
         count: Callable[[int], None]) -> None:  # fmt: skip
    """Send one file unless its copy is there; via ``.part`` and a rename, so a cut never looks complete."""
    st = path.stat()
    if _same(st.st_size, st.st_mtime, existing):
        return
    with path.open("rb") as f:
        sftp.putfo(f, target + ".part", file_size=st.st_size, callback=_increments(count))
    sftp.utime(target + ".part", (int(st.st_atime), int(st.st_mtime)))
    sftp.posix_rename(target + ".part", target)


def _fetch(sftp: paramiko.SFTPClient, remote: str, attrs: paramiko.SFTPAttributes, local: Path,
           count: Callable[[int], None]) -> None:  # fmt: skip
    """Fetch a remote file or folder (recursively); links to files are followed, linked folders skipped."""
    if stat.S_ISDIR(attrs.st_mode or 0):
        local.mkdir(parents=True, exist_ok=True)
        for entry in sftp.listdir_attr(remote):
            name = entry.filename
            if "/" in name or name in ("", ".", ".."):
                continue  # a name no honest server sends; it must not place a file outside ``local``
            child = posixpath.join(remote, name)
            if stat.S_ISLNK(entry.st_mode or 0):
                try:
                    entry = sftp.stat(child)  # follow a link to a file...
                except FileNotFoundError:
                    continue  # (a broken link)
                if stat.S_ISDIR(entry.st_mode or 0):
                    continue  # ...but never into a linked folder
            _fetch(sftp, child, entry, local / name, count)
        return
    if not stat.S_ISREG(attrs.st_mode or 0) or (local.exists() and _same(attrs.st_size, attrs.st_mtime, local.stat())):
        return
    part = local.with_name(local.name + ".part")
    local.parent.mkdir(parents=True, exist_ok=True)
    sftp.get(remote, str(part), callback=_increments(count))
    os.utime(part, (attrs.st_atime or 0, attrs.st_mtime or 0))
    os.replace(part, local)


def _increments(count: Callable[[int], None]) -> Callable[[int, int], None]:
    """paramiko reports a running total per file; the copy counts increments across files."""
    done = 0

    def step(so_far: int, _size: int) -> None:
        nonlocal done
        count(so_far - done)
        done = so_far

    return step
