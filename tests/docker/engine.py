"""A Docker engine and the two images `make test-docker` needs, made without an image registry.

- `Engine`: the docker CLI, docker-compose (v1) and a running daemon. Missing packages come from
  Debian's archive (`docker.io`, `docker-compose`, `debootstrap`); a daemon that is not running is
  started as `dockerd --iptables=false --storage-driver=vfs` and stopped again on the way out.
  `Skip` is raised when neither is possible here (no apt, not root, the daemon does not start).
- `python_base_image()`: Debian bookworm minbase with python3 and python3-venv, made with
  debootstrap from the archive this machine's apt already uses, then `docker import`.
- `consul_image()`: the Consul binary `scripts/fetch-consul.sh` provides, with the shared libraries
  `ldd` names and nothing else.

Both images are kept in the engine's storage and reused by later runs.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
PYTHON_BASE = "consul-elect-offline/python:bookworm"
CONSUL = "consul-elect-offline/consul:1.8.7"

# What each missing command is installed from.
PACKAGES = {"docker": "docker.io", "dockerd": "docker.io", "docker-compose": "docker-compose",
            "debootstrap": "debootstrap"}
# dockerd was ready in about 6 s on a 2-core machine; 60 s leaves room for a first start that
# also initialises its storage.
DAEMON_START_LIMIT = 60.0
# Stopping the daemon stops its containerd too; it has this long before it gets SIGKILL.
DAEMON_STOP_LIMIT = 30.0


class Skip(Exception):
    """No Docker engine can run here; the message says why, in one line."""


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command that must succeed; its output is returned, not printed."""
    kwargs.setdefault("capture_output", True)
    return subprocess.run(argv, check=True, text=True, **kwargs)


def ok(argv: list[str], timeout: float = 30) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def debian_archive_uri() -> str:
    """The Debian archive this machine's apt uses: read the way scripts/fetch-consul.sh reads it."""
    deb822 = pathlib.Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    classic = pathlib.Path("/etc/apt/sources.list")
    if classic.exists():
        for line in classic.read_text().splitlines():
            fields = line.split()
            if fields[:1] == ["deb"] and "security" not in line:
                for field in fields[1:]:
                    if "://" in field:
                        return field
    raise Skip("cannot read a Debian archive URI from the apt sources to build the base image")


class Engine:
    """Packages present and a daemon running; stops the daemon on exit if it started it."""

    def __init__(self, work: pathlib.Path, say) -> None:
        self.work = work
        self.say = say
        self.daemon: subprocess.Popen | None = None
        self.started_daemon_in: float | None = None
        self.installed: list[str] = []

    def __enter__(self) -> Engine:
        try:
            self._install_missing()
            self._start_daemon()
        except BaseException:
            self._stop_daemon()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop_daemon()

    def _install_missing(self) -> None:
        missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})
        if not missing:
            return
        if os.geteuid() != 0:
            raise Skip(f"{', '.join(missing)} missing and not root to install them")
        if shutil.which("apt-get") is None:
            raise Skip(f"{', '.join(missing)} missing and no apt-get to install them")
        self.say(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            run(["apt-get", "update", "-qq"], env=env, timeout=600)
            run(["apt-get", "install", "-y", "-qq", *missing], env=env, timeout=1200)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise Skip(f"apt-get could not install {' '.join(missing)} ({e})") from None
        self.installed = missing

    def _start_daemon(self) -> None:
        if ok(["docker", "info"]):
            return
        if os.geteuid() != 0:
            raise Skip("no Docker daemon running and not root to start one")
        self.say("starting dockerd --iptables=false --storage-driver=vfs")
        t0 = time.monotonic()
        with open(self.work / "dockerd.log", "wb") as log:
            # Its own session, so that a Ctrl-C meant for the test does not stop the daemon before
            # the containers are removed; __exit__ stops it.
            self.daemon = subprocess.Popen(["dockerd", "--iptables=false", "--storage-driver=vfs"],
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - t0 < DAEMON_START_LIMIT:
            if self.daemon.poll() is not None:
                raise Skip(f"dockerd exited with status {self.daemon.returncode} "
                           f"(see {self.work / 'dockerd.log'})")
            if ok(["docker", "info"], timeout=5):
                self.started_daemon_in = time.monotonic() - t0
                return
            time.sleep(0.5)
        raise Skip(f"dockerd did not answer within {DAEMON_START_LIMIT:.0f} s")

    def _stop_daemon(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(DAEMON_STOP_LIMIT)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()


def image_exists(name: str) -> bool:
    return ok(["docker", "image", "inspect", name])


def python_base_image(say) -> str:
    """Debian bookworm minbase + python3 + python3-venv, built once (1-2 min) and reused."""
    if image_exists(PYTHON_BASE):
        return PYTHON_BASE
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise Skip("no image registry, and no debootstrap (as root) to build a base image offline")
    uri = debian_archive_uri()
    say(f"building {PYTHON_BASE} with debootstrap (1-2 min, once)")
    root = pathlib.Path(tempfile.mkdtemp(prefix="consul-elect-rootfs-", dir="/var/tmp"))
    try:
        try:
            run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm",
                 str(root), uri], timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise Skip(f"debootstrap could not build the base image ({e})") from None
        # Package caches and documentation are not needed to run Python, and every layer and
        # every container is a full copy of the file system with the vfs storage driver.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/info", "usr/share/locale"):
            shutil.rmtree(root / junk, ignore_errors=True)
        root.chmod(0o755)  # mkdtemp made it 0700: the image's / would be closed to non-root users
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        # An imported image has no environment at all: give it what a Debian image has.
        changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
        run(["docker", "import", *(arg for change in changes for arg in ("--change", change)),
             "-", PYTHON_BASE], stdin=tar.stdout, timeout=600)
        tar.stdout.close()
        if tar.wait() != 0:
            raise RuntimeError("tar of the base image's root file system failed")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return PYTHON_BASE


def consul_image(say) -> str:
    """The Consul binary that the other tests use, with the libraries it links, as an image."""
    if image_exists(CONSUL):
        return CONSUL
    binary = pathlib.Path(run([str(REPO / "scripts" / "fetch-consul.sh")], timeout=600).stdout.strip())
    say(f"building {CONSUL} from {binary}")
    libs = []
    # A static binary makes ldd say "not a dynamic executable" and fail: then there is nothing to add.
    linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    for line in linked.splitlines():
        path = next((field for field in line.split() if field.startswith("/")), None)
        if path:
            libs.append(pathlib.Path(path))
    dirs = {"bin": 0o755, "tmp": 0o1777, "consul": 0o755, "consul/data": 0o777, "consul/config": 0o755}
    for lib in libs:
        for parent in lib.relative_to("/").parents:
            if str(parent) != ".":
                dirs.setdefault(str(parent), 0o755)
    with tempfile.TemporaryDirectory(prefix="consul-elect-consul-image-") as tmp:
        archive = pathlib.Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, mode="w") as tar:
            for name in sorted(dirs):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, dirs[name]
                tar.addfile(info)
            tar.add(binary, arcname="bin/consul")
            for lib in libs:
                tar.add(lib.resolve(), arcname=str(lib.relative_to("/")))
        run(["docker", "import", "--change", 'ENTRYPOINT ["/bin/consul"]', str(archive), CONSUL], timeout=600)
    return CONSUL
