"""Build, tag, push and run the sparsepipe images with whichever engine is present.

    python images/build.py build [cpu cuda deepsparse]    # default: all three, in that order
    python images/build.py push [cpu cuda deepsparse]     # needs REGISTRY=host/namespace
    python images/build.py tags                           # the names it builds and pushes
    python images/build.py run [-v HOST:CTR] [--entrypoint X] IMAGE -- ARGS...
    python images/build.py --dry-run build cpu            # print the commands only

Images are tagged ``sparsepipe-<name>:<version>`` (version from pyproject.toml) and, when
``REGISTRY`` is set, also ``$REGISTRY/sparsepipe-<name>:<version>``. ``push`` tags the local images
with ``$REGISTRY`` and pushes them; the Kubeflow components default to
``ghcr.io/sparsepipe/sparsepipe-{cpu,cuda}:<version>`` (components/images.py), i.e. what
``REGISTRY=ghcr.io/sparsepipe`` pushes.

Settings (environment variables; the Makefile passes its command-line variables through):

    ENGINE               docker | podman | buildah (default: the first that works, in that order;
                         docker only when its daemon answers)
    ISOLATION            buildah/podman build isolation (buildah default here: chroot)
    REGISTRY             registry/namespace prefix, e.g. ghcr.io/sparsepipe
    BASE_IMAGE           base of the cpu and cuda images (default: the Dockerfiles' pinned
                         python:3.11.x-slim-bookworm; offline: localhost/sparsepipe-base:bookworm)
    PIP_INDEX_URL        index for the dependency layer (default: PyPI)
    PIP_EXTRA_INDEX_URL  extra index (cpu image default: PyTorch's CPU-only index)
    WHEELS               host folder of wheels, mounted read-only at /wheels (pip --find-links)
    MOUNTS               more host folders, mounted read-only at the same path (file:// indexes)
    HOST_PIP=1           take index-url, extra-index-url, find-links and cert from this machine's
                         pip config (`pip config list`) and mount the local ones read-only for the
                         build; nothing of that config is written into the image

Host mounts need podman or buildah (docker build cannot mount host folders: serve the folder
over HTTP and pass its URL as PIP_EXTRA_INDEX_URL/--find-links instead).

The build context is staged in a temporary folder holding only pyproject.toml, README.md, src/
and images/, so nothing else of the checkout (venv, runs/, mlruns/, credentials) can reach an image.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ("cpu", "cuda", "deepsparse")
LOCAL_BASE = "localhost/sparsepipe-base:bookworm"
HOST_CA_IN_BUILD = "/run/host-ca-certificates.crt"


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "pyproject.toml", "images"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def local_tag(name: str) -> str:
    return f"sparsepipe-{name}:{version()}"


def tags(name: str, registry: str | None = None) -> list[str]:
    registry = (os.environ.get("REGISTRY", "") if registry is None else registry).strip().rstrip("/")
    out = [local_tag(name)]
    if registry:
        out.append(f"{registry}/{local_tag(name)}")
    return out


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_engine() -> str:
    wanted = os.environ.get("ENGINE", "").strip()
    if wanted:
        if wanted not in ("docker", "podman", "buildah"):
            raise SystemExit(f"error: ENGINE={wanted!r}: use docker, podman or buildah")
        if not shutil.which(wanted):
            raise SystemExit(f"error: ENGINE={wanted} but {wanted} is not on PATH")
        return wanted
    if shutil.which("docker") and _works(["docker", "info"]):
        return "docker"
    for engine in ("podman", "buildah"):
        if shutil.which(engine):
            return engine
    raise SystemExit(
        "error: no container engine: install docker (with a running daemon), podman or buildah "
        "(Debian: apt-get install -y buildah), or set ENGINE"
    )


def host_pip_sources() -> tuple[dict[str, str], list[str]]:
    """Build args and read-only mounts reproducing this machine's pip sources."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         check=False, capture_output=True, text=True).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if option in ("index-url", "extra-index-url", "find-links", "cert"):
            config[option] = value.strip().strip("'\"")  # later scopes (user, env) win
    args, mounts = {}, []
    for option, arg in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                        ("find-links", "PIP_FIND_LINKS")):
        if option not in config:
            continue
        args[arg] = config[option]
        for item in config[option].split():
            path = item.removeprefix("file://")
            if path.startswith("/"):
                # mount the folder that holds an index's `simple/` and `files/` alike
                folder = Path(path)
                if folder.name == "simple":
                    folder = folder.parent
                if folder.exists():
                    mounts.append(str(folder))
    cert = config.get("cert", "")
    if cert and Path(cert).is_file():
        # a TLS-intercepting proxy's CA: for pip during the build only (a bind mount, not a layer)
        mounts.append(f"{cert}:{HOST_CA_IN_BUILD}")
        args["PIP_CERT"] = HOST_CA_IN_BUILD
    return args, mounts


def build_settings(name: str) -> tuple[dict[str, str], list[str]]:
    """(build args, host:container read-only mounts) of one image."""
    args = {"VERSION": version(), "REVISION": revision()}
    mounts: list[str] = []
    if os.environ.get("HOST_PIP", "") == "1":
        host_args, host_mounts = host_pip_sources()
        args.update(host_args)
        mounts += [m if ":" in m else f"{m}:{m}" for m in host_mounts]
    for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        if os.environ.get(arg, "").strip():
            args[arg] = os.environ[arg].strip()
    wheels = os.environ.get("WHEELS", "").strip()
    if wheels:
        if not Path(wheels).is_dir():
            raise SystemExit(f"error: WHEELS={wheels} is not a folder")
        mounts.append(f"{Path(wheels).resolve()}:/wheels")
        args["PIP_FIND_LINKS"] = "/wheels"
    for folder in os.environ.get("MOUNTS", "").split():
        if not Path(folder).is_dir():
            raise SystemExit(f"error: MOUNTS: {folder} is not a folder")
        mounts.append(f"{folder}:{folder}")
    if name == "deepsparse":
        # built on the CPU image of the same version (just built, or pulled as $REGISTRY/...)
        args["BASE_IMAGE"] = os.environ.get("DEEPSPARSE_BASE_IMAGE", "").strip() or local_tag("cpu")
    elif os.environ.get("BASE_IMAGE", "").strip():
        args["BASE_IMAGE"] = os.environ["BASE_IMAGE"].strip()
    return args, sorted(set(mounts))


def stage_context(dest: Path) -> Path:
    """Copy what the Dockerfiles may COPY into DEST; return DEST."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".pytest_cache")
    for item in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / item, dest / item)
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore)
    shutil.copytree(ROOT / "images", dest / "images", ignore=ignore)
    shutil.copytree(ROOT / "recipes", dest / "recipes", ignore=ignore)
    return dest


def build_command(engine: str, name: str, context: Path) -> list[str]:
    args, mounts = build_settings(name)
    dockerfile = context / "images" / name / "Dockerfile"
    if engine == "docker":
        if mounts:
            raise SystemExit(
                "error: docker build cannot mount host folders (WHEELS/MOUNTS/HOST_PIP): use podman or "
                "buildah, or serve the folder over HTTP and pass its URL in PIP_EXTRA_INDEX_URL"
            )
        cmd = ["docker", "build"]
    elif engine == "podman":
        cmd = ["podman", "build", "--layers"]
    else:
        cmd = ["buildah", "bud", "--layers", "--isolation", os.environ.get("ISOLATION", "chroot")]
    if engine == "podman" and os.environ.get("ISOLATION"):
        cmd += ["--isolation", os.environ["ISOLATION"]]
    cmd += ["-f", str(dockerfile)]
    for tag in tags(name):
        cmd += ["-t", tag]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    for mount in mounts:
        cmd += ["--volume", f"{mount}:ro"]
    return cmd + [str(context)]


def _run(cmd: list[str], dry_run: bool) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, check=True)


def cmd_build(names: list[str], dry_run: bool) -> None:
    engine = detect_engine()
    with tempfile.TemporaryDirectory(prefix="sparsepipe-context-") as tmp:
        context = stage_context(Path(tmp))
        for name in names:
            start = time.monotonic()
            _run(build_command(engine, name, context), dry_run)
            if not dry_run:
                print(f"built {', '.join(tags(name))} with {engine} in {time.monotonic() - start:.0f} s", flush=True)


def cmd_push(names: list[str], dry_run: bool) -> None:
    registry = os.environ.get("REGISTRY", "").strip().rstrip("/")
    if not registry:
        raise SystemExit("error: set REGISTRY=host/namespace (e.g. make push REGISTRY=ghcr.io/sparsepipe)")
    engine = detect_engine()
    for name in names:
        remote = f"{registry}/{local_tag(name)}"
        _run([engine, "tag", local_tag(name), remote], dry_run)
        _run([engine, "push", remote] + ([f"docker://{remote}"] if engine == "buildah" else []), dry_run)


def inspect(image: str, engine: str | None = None) -> dict:
    """The image's OCI config: {'Entrypoint': [...], 'User': ..., 'Labels': {...}, 'Env': [...], ...}."""
    engine = engine or detect_engine()
    if engine == "buildah":
        data = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", image],
                                         capture_output=True, text=True, check=True).stdout)
        config = data["OCIv1"]["config"]
        return {"Entrypoint": config.get("Entrypoint"), "Cmd": config.get("Cmd"), "User": config.get("User", ""),
                "Labels": config.get("Labels") or {}, "Env": config.get("Env") or [],
                "WorkingDir": config.get("WorkingDir", "")}
    data = json.loads(subprocess.run([engine, "image", "inspect", image],
                                     capture_output=True, text=True, check=True).stdout)[0]["Config"]
    return {key: data.get(key) for key in ("Entrypoint", "Cmd", "User", "Labels", "Env", "WorkingDir")}


def run_in_image(image: str, argv: list[str], volumes: list[str] = (), entrypoint: str | None = None,
                 network: str = "none", dry_run: bool = False, engine: str | None = None,
                 **kwargs) -> subprocess.CompletedProcess:
    """Run IMAGE's ENTRYPOINT (or ``entrypoint``) with ARGV as the image's user; kwargs go to subprocess.run."""
    engine = engine or detect_engine()
    if engine in ("docker", "podman"):
        cmd = [engine, "run", "--rm", "--network", network]
        for volume in volumes:
            cmd += ["-v", volume]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint]
        cmd += [image, *argv]
        print("+ " + shlex.join(cmd), flush=True)
        return subprocess.CompletedProcess(cmd, 0) if dry_run else subprocess.run(cmd, check=False, **kwargs)
    # buildah has no `run IMAGE`: a throw-away working container with the image's entrypoint and user.
    config = inspect(image, "buildah")
    program = [entrypoint] if entrypoint else list(config["Entrypoint"] or [])
    isolation = os.environ.get("ISOLATION", "chroot")
    options = ["--isolation", isolation, "--user", config["User"] or "root"]
    prefix: list[str] = []
    if isolation != "chroot":
        options += ["--network", network]
    elif network == "none":
        # chroot isolation only shares the host network: give buildah itself an empty network
        # namespace instead (root only), so "none" still means no network.
        if os.geteuid() != 0 or not shutil.which("unshare"):
            raise SystemExit("error: --network none with buildah --isolation chroot needs root and unshare")
        prefix = ["unshare", "--net", "--"]
    for volume in volumes:
        options += ["-v", volume]
    if dry_run:
        print(f"+ buildah from --pull=never {image}; {shlex.join(prefix)} buildah run {shlex.join(options)} CONTAINER -- "
              f"{shlex.join(program + argv)}; buildah rm CONTAINER")
        return subprocess.CompletedProcess([], 0)
    container = subprocess.run(["buildah", "from", "--quiet", "--pull=never", image],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        return subprocess.run([*prefix, "buildah", "run", *options, container, "--", *program, *argv],
                              check=False, **kwargs)
    finally:
        subprocess.run(["buildah", "rm", container], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "push"):
        p = sub.add_parser(command)
        p.add_argument("names", nargs="*", metavar="NAME", help="cpu, cuda, deepsparse or all (default: all)")
    sub.add_parser("tags")
    sub.add_parser("engine")
    p = sub.add_parser("run")
    p.add_argument("image")
    p.add_argument("-v", "--volume", action="append", default=[])
    p.add_argument("--entrypoint")
    p.add_argument("--network", default="none")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command in ("build", "push"):
        unknown = [n for n in args.names if n not in (*IMAGES, "all")]
        if unknown:
            parser.error(f"unknown image {unknown[0]!r}: choose from {', '.join(IMAGES)} or all")
        names = list(IMAGES) if not args.names or "all" in args.names else list(dict.fromkeys(args.names))
        (cmd_build if args.command == "build" else cmd_push)(names, args.dry_run)
    elif args.command == "tags":
        for name in IMAGES:
            print(" ".join(tags(name)))
    elif args.command == "engine":
        print(detect_engine())
    elif args.command == "run":
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        return run_in_image(args.image, rest, args.volume, args.entrypoint, args.network, args.dry_run).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
