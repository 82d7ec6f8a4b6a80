"""A throw-away, fully private Docker engine for integration tests.

The tests must exercise a real engine, yet must neither depend on nor disturb
a Docker daemon the machine may already run.  So every piece of state the
engine owns lives under one short temporary directory:

* the API socket, pid file, log and daemon config;
* ``--data-root`` (images, containers, containerd's content store) and
  ``--exec-root`` (containerd's socket and state, runc state, netns mounts);
* the trust key (``deprecated-key-path`` in the private daemon.json; by
  default dockerd 20.10 writes ``/etc/docker/key.json``);
* the containers' cgroups (``--cgroup-parent /<tempdir name>``), so that
  :meth:`PrivateDockerd.stop` can find and kill every container process even
  when the daemon had to be SIGKILLed.

Networking is switched off (no bridge, no iptables rules), because a test
engine must not edit the host's firewall or create a ``docker0`` link; the
containers are run with ``network_mode="none"``.

Two host paths are hard-coded inside containerd/dockerd and cannot be moved:
``/run/containerd/s`` (shim sockets, one hashed name per engine, removed by
the shim) and the empty directory ``/run/docker/plugins``.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import docker
import docker.errors
import requests.exceptions

#: Extra dockerd arguments, shell-quoted (e.g. ``--storage-driver=vfs`` on a
#: CI runner whose temp file system cannot host overlayfs).
EXTRA_ARGS_ENV = "HIVE_TEST_DOCKERD_ARGS"

DEFAULT_IMAGE_TAG = "hive-busybox:test"

#: Applets linked into the image; tests may rely on exactly these.
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh",
    "echo",
    "cat",
    "sleep",
    "ls",
    "env",
    "true",
    "false",
    "mkdir",
    "id",
    "yes",
    "head",
)

_DOCKERD_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/usr/local/bin")
_BUSYBOX_PATHS: tuple[str, ...] = ("/usr/bin/busybox", "/bin/busybox")
# dockerd finds containerd, containerd-shim* and runc through PATH; a test
# runner's PATH (a venv, a minimal CI image) may lack the sbin directories.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# On SIGTERM the daemon stops running containers with each one's stop
# timeout (10 s by default) and this flag only sets a floor; stop() therefore
# kills leftover containers itself first.  Kept small for the daemon's own
# remaining shutdown work.
_CONTAINER_SHUTDOWN_S = 3
_POLL_S = 0.05
# Upper bound for waiting on init to reap exited shims (see below).
_REAP_WAIT_S = 5.0
_PT_INTERP = 3  # ELF program header type naming a dynamic loader


class DockerUnavailable(RuntimeError):
    """The private engine cannot be provided on this machine.

    ``reason`` is meant to be shown verbatim as the skip/failure message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DockerCleanupError(RuntimeError):
    """stop() could not remove every process, mount or file it owned."""


def find_dockerd() -> str:
    """Locate the dockerd binary, also where sbin is missing from PATH."""
    found = shutil.which("dockerd")
    if found:
        return found
    for directory in _DOCKERD_DIRS:
        candidate = os.path.join(directory, "dockerd")
        if os.access(candidate, os.X_OK):
            return candidate
    raise DockerUnavailable("dockerd not found on PATH or in " + ", ".join(_DOCKERD_DIRS))


def dockerd_major_version(dockerd: str) -> int | None:
    """Major version from `dockerd --version` ("Docker version 20.10.24+...")."""
    try:
        out = subprocess.run(
            [dockerd, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+)\.", out)
    return int(match.group(1)) if match else None


def is_static_elf(path: str) -> bool:
    """True if ``path`` is an ELF executable without a dynamic loader.

    The imported image holds nothing but busybox, so a dynamically linked
    busybox would fail inside the container with a baffling "no such file".
    """
    with open(path, "rb") as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            return False  # only 64-bit ELF is expected on test machines
        endian = "<" if header[5] == 1 else ">"
        (phoff,) = struct.unpack_from(endian + "Q", header, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    types = (struct.unpack_from(endian + "I", table, i * phentsize)[0] for i in range(phnum))
    return _PT_INTERP not in types


def find_static_busybox() -> str:
    """Return the first statically linked busybox on this machine."""
    which = shutil.which("busybox")
    candidates = list(_BUSYBOX_PATHS) + ([which] if which else [])
    for candidate in candidates:
        if os.path.isfile(candidate) and is_static_elf(candidate):
            return candidate
    raise DockerUnavailable(
        "no statically linked busybox found (looked at "
        + ", ".join(candidates)
        + "); install busybox-static"
    )


def _add_dir(archive: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    archive.addfile(info)


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    archive.addfile(info, io.BytesIO(data))


def build_busybox_tar(busybox: str, applets: Iterable[str] = BUSYBOX_APPLETS) -> bytes:
    """Build a root file system tarball: busybox, applet links, tmp and etc.

    Entries are owned by root with a fixed mtime so the tarball, and hence
    the image ID, is the same on every run.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add_dir(tar, "bin", 0o755)
        _add_dir(tar, "etc", 0o755)
        _add_dir(tar, "tmp", 0o1777)
        _add_file(tar, "bin/busybox", Path(busybox).read_bytes(), 0o755)
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            tar.addfile(link)
        # A passwd/group lets `id` and `--user nobody` resolve names.
        passwd = b"root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/false\n"
        _add_file(tar, "etc/passwd", passwd, 0o644)
        _add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)
    return buffer.getvalue()


def split_tag(tag: str) -> tuple[str, str]:
    """Split "repo[:tag]" into (repo, tag); a port in the registry is no tag."""
    repo, sep, version = tag.rpartition(":")
    if not sep or "/" in version:
        return tag, "latest"
    return repo, version


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""  # gone, or a zombie (empty cmdline): nothing left to kill
    return raw.replace(b"\0", b" ").decode(errors="replace")


def processes_referencing(text: str) -> list[int]:
    """PIDs (not ours) whose command line mentions ``text``.

    dockerd's containerd and every containerd-shim carry the temp dir in
    their arguments, so this finds them even after they were re-parented.
    """
    own = os.getpid()
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and int(entry.name) != own and text in _cmdline(int(entry.name))
    ]


def _unescape_mount_field(field: str) -> str:
    """Undo the octal escapes (space, tab, newline, backslash) of /proc/mounts."""
    return field.encode().decode("unicode_escape")


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, fs type) pairs of this mount namespace."""
    table = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            table.append((_unescape_mount_field(fields[1]), fields[2]))
    return table


def mounts_under(root: str) -> list[str]:
    """Mount points at or below ``root``, deepest first (unmount order)."""
    points = {point for point, _ in _mount_table() if point == root or point.startswith(root + "/")}
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def cgroup_dirs(parent: str) -> list[Path]:
    """The cgroup directories of ``parent`` in every mounted hierarchy."""
    relative = parent.strip("/")
    return [
        Path(point, relative)
        for point, fstype in _mount_table()
        if fstype in ("cgroup", "cgroup2") and Path(point, relative).is_dir()
    ]


def orphaned_shim_zombies() -> list[int]:
    """Exited containerd shims still waiting for PID 1 to reap them.

    containerd-shim-runc-v2 re-parents itself to init on purpose, so after a
    container ends its zombie belongs to PID 1, not to us.
    """
    zombies = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        state_and_ppid = stat[stat.rfind(")") + 1 :].split()[:2]
        if comm.startswith("containerd-shim") and state_and_ppid == ["Z", "1"]:
            zombies.append(int(entry.name))
    return zombies


def wait_for_orphaned_shims_reaped(deadline: float) -> None:
    """Give PID 1 until ``deadline`` to reap exited shims; never fails.

    A zombie is already dead and is init's to collect, but some sandbox
    inits reap lazily, and a `ps` right after the tests should not show them.
    """
    while orphaned_shim_zombies() and time.monotonic() < deadline:
        time.sleep(_POLL_S)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class PrivateDockerd:
    """Start/stop a dockerd whose whole state lives in a private temp dir.

    Usage::

        with PrivateDockerd() as engine:
            tag = engine.import_busybox()
            engine.client().containers.run(tag, ["echo", "hi"], remove=True)
    """

    def __init__(
        self,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args) + shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._clients: list[docker.DockerClient] = []
        #: Seconds start() took until the API answered; useful in reports.
        self.startup_seconds: float | None = None

    # -- public API ---------------------------------------------------------

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("PrivateDockerd is not started")
        return self._root

    @property
    def socket_path(self) -> Path:
        return self.root / "docker.sock"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def cgroup_parent(self) -> str:
        # Unique per engine, so stop() never touches another engine's cgroups.
        return "/" + self.root.name

    def client(self, timeout: int = 120) -> docker.DockerClient:
        """A new SDK client bound to this engine (closed again by stop())."""
        made = docker.DockerClient(base_url=self.base_url, timeout=timeout)
        self._clients.append(made)
        return made

    def start(self) -> PrivateDockerd:
        """Launch dockerd and wait until its API answers.

        Raises DockerUnavailable (after cleaning up) if it cannot run here.
        """
        if self._process is not None:
            return self
        dockerd = find_dockerd()
        # /tmp and a short prefix keep the socket paths (containerd's is the
        # longest, ~45 chars) far below the 107-byte sun_path limit.
        self._root = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp"))
        atexit.register(self.stop)  # last resort if a fixture never tears down
        began = time.monotonic()
        try:
            self._launch(dockerd)
            self._wait_ready(began + self.start_timeout)
        except BaseException as exc:
            self._stop_after_failed_start(exc)
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop dockerd and remove every process, mount and file it made.

        Idempotent.  Raises DockerCleanupError if something survives, so a
        leak shows up as a test error instead of piling up across runs.
        """
        if self._root is None:
            return
        root = str(self._root)
        for made in self._clients:
            made.close()
        self._clients.clear()
        self._kill_containers()
        self._terminate_dockerd()
        problems = self._kill_leftovers(root)
        problems += self._remove_cgroups()
        problems += self._unmount_all(root)
        wait_for_orphaned_shims_reaped(time.monotonic() + _REAP_WAIT_S)
        shutil.rmtree(root, ignore_errors=True)
        if os.path.exists(root):
            problems.append(f"could not remove {root}")
        self._root = None
        atexit.unregister(self.stop)
        if problems:
            raise DockerCleanupError("; ".join(problems))

    def halt(self) -> None:
        """Stop the daemon as `systemctl stop docker` would, keeping its socket path and
        state for `resume()`."""
        self._kill_containers()
        self._terminate_dockerd()

    def resume(self) -> None:
        """Start a halted daemon again, on the same socket and state."""
        if self._process is not None:
            return
        self._launch(find_dockerd())
        self._wait_ready(time.monotonic() + self.start_timeout)

    def import_busybox(self, tag: str = DEFAULT_IMAGE_TAG) -> str:
        """Import a busybox-only image (like `docker import`) and return its tag."""
        data = build_busybox_tar(find_static_busybox())
        repository, version = split_tag(tag)
        client = self.client()
        # The high-level ImageCollection has no import; the low-level API does.
        answer = client.api.import_image_from_data(
            data, repository=repository, tag=version, changes=["ENV PATH=/bin"]
        )
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound as exc:
            raise RuntimeError(f"import of {tag} failed: {answer!r}") from exc
        return tag

    def __enter__(self) -> PrivateDockerd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start-up -------------------------------------------------------------

    def _command(self, dockerd: str) -> list[str]:
        root = self.root
        return [
            dockerd,
            f"--host=unix://{self.socket_path}",
            f"--data-root={root}/data",
            f"--exec-root={root}/exec",
            f"--pidfile={root}/docker.pid",
            # A config of our own: a host /etc/docker/daemon.json (e.g. one
            # setting "hosts") would clash with these flags.
            f"--config-file={root}/daemon.json",
            f"--cgroup-parent={self.cgroup_parent}",
            # No docker0, no iptables chains, no ip_forward sysctl: the
            # host's network configuration stays untouched.
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            f"--shutdown-timeout={_CONTAINER_SHUTDOWN_S}",
            *self.extra_args,
        ]

    def _launch(self, dockerd: str) -> None:
        config: dict[str, str] = {}
        major = dockerd_major_version(dockerd)
        if major is not None and major < 23:
            # dockerd <= 22 has no flag for its trust key and would otherwise
            # write /etc/docker/key.json; 23+ dropped the key (and rejects
            # unknown daemon.json keys, hence the version check).
            config["deprecated-key-path"] = str(self.root / "key.json")
        (self.root / "daemon.json").write_text(json.dumps(config))
        env = dict(os.environ)
        env["PATH"] = env.get("PATH", "") + ":" + _SYSTEM_PATH
        env.pop("NOTIFY_SOCKET", None)  # never talk to the host's systemd
        with open(self.log_path, "wb") as log:
            try:
                self._process = subprocess.Popen(
                    self._command(dockerd),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    # Own session: a Ctrl-C aimed at pytest must not kill the
                    # daemon before stop() has shut its containers down.
                    start_new_session=True,
                )
            except OSError as exc:
                raise DockerUnavailable(f"cannot run {dockerd}: {exc}") from exc

    def _wait_ready(self, deadline: float) -> None:
        """Poll the API until it answers, dockerd dies, or time runs out."""
        assert self._process is not None
        last_error = "no answer yet"
        while True:
            code = self._process.poll()
            if code is not None:
                self._unavailable(f"dockerd exited with status {code}")
            if self.socket_path.exists():
                last_error = self._try_ping()
                if not last_error:
                    return
            if time.monotonic() >= deadline:
                self._unavailable(
                    f"dockerd did not answer within {self.start_timeout:.0f} s ({last_error})"
                )
            time.sleep(_POLL_S)

    def _try_ping(self) -> str:
        """Empty string if the API answers a ping, else why it did not."""
        try:
            # version="auto" (the default) would itself query the daemon.
            probe = docker.DockerClient(base_url=self.base_url, timeout=5)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            return str(exc)
        try:
            probe.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            return str(exc)
        finally:
            probe.close()
        return ""

    def _unavailable(self, what: str) -> None:
        raise DockerUnavailable(
            f"{what}; command: {shlex.join(self._command('dockerd'))}\n"
            f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}"
        )

    def _stop_after_failed_start(self, exc: BaseException) -> None:
        try:
            self.stop()
        except DockerCleanupError as cleanup:
            exc.add_note(f"cleanup after the failed start: {cleanup}")

    # -- shut-down ------------------------------------------------------------

    def _kill_containers(self) -> None:
        """SIGKILL containers a test left running; best effort.

        The engine is thrown away, so a graceful stop buys nothing, while
        dockerd's own shutdown would wait 10 s for every such container.
        """
        if self._process is None or self._process.poll() is not None:
            return
        errors = (docker.errors.DockerException, requests.exceptions.RequestException)
        try:
            api = docker.APIClient(base_url=self.base_url, timeout=10, version="auto")
        except errors:
            return  # a daemon that does not answer gets SIGTERM/SIGKILL next
        try:
            with contextlib.suppress(*errors):
                for container in api.containers(filters={"status": "running"}):
                    with contextlib.suppress(*errors):
                        api.kill(container["Id"])
        finally:
            api.close()

    def _terminate_dockerd(self) -> None:
        """SIGTERM (daemon stops its containers and containerd), then SIGKILL."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=self.stop_timeout)

    def _kill_leftovers(self, root: str) -> list[str]:
        """SIGKILL containerd/shims still alive (only after an unclean stop)."""
        deadline = time.monotonic() + self.stop_timeout
        while True:
            pids = processes_referencing(root)
            if not pids:
                return []
            if time.monotonic() >= deadline:
                return [f"processes survived: {pids}"]
            for pid in pids:
                _kill(pid)
            time.sleep(_POLL_S)

    def _remove_cgroups(self) -> list[str]:
        """Kill container processes left in our cgroups, then remove them."""
        problems: list[str] = []
        for top in cgroup_dirs(self.cgroup_parent):
            # Bottom-up, because rmdir only removes a cgroup without children.
            for directory, _, _ in os.walk(top, topdown=False):
                if not _empty_cgroup(Path(directory), self.stop_timeout):
                    problems.append(f"cgroup {directory} not removable")
        return problems

    def _unmount_all(self, root: str) -> list[str]:
        """Lazily unmount whatever is still mounted below the temp dir."""
        for point in mounts_under(root):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        left = mounts_under(root)
        return [f"still mounted: {left}"] if left else []


def _kill(pid: int) -> None:
    """SIGKILL ``pid``; it may have exited since it was listed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _empty_cgroup(group: Path, timeout: float) -> bool:
    """SIGKILL every process in ``group`` and rmdir it; False on failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return True  # already removed
        for pid in pids:
            _kill(pid)
        try:
            group.rmdir()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(_POLL_S)
