"""Container images: Dockerfile invariants (default suite) and a real build + run (opt-in).

    python -m pytest -q tests/test_images.py                                  # invariants, < 1 s
    SPARSEPIPE_TEST_IMAGES=1 python -m pytest -q -m images tests/test_images.py   # build + run (make test-images)

The opt-in test builds the CPU image with images/build.py (docker, podman or buildah), then runs
data -> train (1 epoch) -> export -> benchmark inside it on a mounted host folder, with no network,
and checks the results from outside. Offline machines pass BASE_IMAGE=localhost/sparsepipe-base:bookworm
and HOST_PIP=1 (images/README.md). It is marked ``images`` (excluded from `make test`)
and skips unless SPARSEPIPE_TEST_IMAGES=1, which `make test-images` sets.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = ROOT / "images"
NAMES = ("cpu", "cuda", "deepsparse")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"images_{name}", IMAGES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _load("lock")
build = _load("build")


# --------------------------------------------------------------------------- Dockerfile parsing

def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, continuation lines joined."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, f"{path}: dangling line continuation"
    return instructions


def arg_defaults(instructions) -> dict[str, str | None]:
    """Every ARG's default (None when it has none); later declarations keep an earlier default."""
    defaults: dict[str, str | None] = {}
    for keyword, rest in instructions:
        if keyword == "ARG":
            name, sep, value = rest.partition("=")
            if sep or name not in defaults:
                defaults[name] = value.strip('"') if sep else None
    return defaults


def env_pairs(rest: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(rest))


def label_pairs(instructions) -> dict[str, str]:
    labels = {}
    for keyword, rest in instructions:
        if keyword == "LABEL":
            labels.update(env_pairs(rest))
    return labels


def index_of(instructions, predicate) -> int:
    return next(i for i, item in enumerate(instructions) if predicate(*item))


@pytest.fixture(scope="module", params=NAMES)
def dockerfile(request):
    path = IMAGES_DIR / request.param / "Dockerfile"
    return request.param, path, parse_dockerfile(path)


def test_exactly_the_three_images_exist():
    found = sorted(p.parent.name for p in IMAGES_DIR.glob("*/Dockerfile"))
    assert found == sorted(NAMES)


def test_base_is_an_argument_pinned_by_version_or_digest(dockerfile):
    name, path, ins = dockerfile
    froms = [rest for keyword, rest in ins if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}"], f"{path}: one stage, FROM ${{BASE_IMAGE}}"
    base = arg_defaults(ins[: index_of(ins, lambda k, r: k == "FROM")])["BASE_IMAGE"]
    assert base and "latest" not in base.lower(), f"{path}: BASE_IMAGE default {base!r}"
    if name == "deepsparse":  # the CPU image of the same release
        assert base == f"sparsepipe-cpu:{VERSION}", f"{path}: BASE_IMAGE default must follow pyproject's version"
    else:
        assert "@sha256:" in base or re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base


def test_nothing_says_latest(dockerfile):
    _, path, _ = dockerfile
    assert not re.search(r":latest\b", path.read_text()), f"{path} mentions :latest"


def test_runs_as_a_numeric_non_root_user(dockerfile):
    _, path, ins = dockerfile
    users = [rest for keyword, rest in ins if keyword == "USER"]
    assert users, f"{path}: no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), f"{path}: final USER {users[-1]}"
    last_user = max(i for i, (k, _) in enumerate(ins) if k == "USER")
    assert all(k != "RUN" or i < last_user or "pip install" not in r for i, (k, r) in enumerate(ins)), \
        f"{path}: installs after switching to the runtime user"


def test_entrypoint_is_the_sparsepipe_console_script(dockerfile):
    _, path, ins = dockerfile
    entrypoints = [rest for keyword, rest in ins if keyword == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["sparsepipe"]], f"{path}: exec-form ENTRYPOINT [\"sparsepipe\"]"
    assert PYPROJECT["project"]["scripts"]["sparsepipe"] == "sparsepipe.cli:main"


SECRETY = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_?KEY|API_?KEY|CREDENTIAL|PRIVATE_?KEY|AUTH)", re.IGNORECASE)


def test_no_credentials_datasets_or_host_pip_config(dockerfile):
    _, path, ins = dockerfile
    text = path.read_text()
    for keyword, rest in ins:
        if keyword == "ENV":
            for key, value in env_pairs(rest).items():
                assert not SECRETY.search(key), f"{path}: ENV {key}"
                assert not key.startswith(("AWS_", "MLFLOW_TRACKING_", "PIP_INDEX", "PIP_EXTRA", "PIP_FIND", "PIP_CERT")), \
                    f"{path}: ENV {key} would bake credentials or this machine's pip sources into the image"
        if keyword == "ARG":
            key, _, value = rest.partition("=")
            assert not SECRETY.search(key), f"{path}: ARG {key} (build args land in the image history)"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{path}: ARG {key} default holds a password"
        if keyword in ("COPY", "ADD"):
            sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
            for source in sources:
                assert source in ("pyproject.toml", "README.md", "src", "recipes") or source.startswith("images/"), \
                    f"{path}: {keyword} {source} (only the package, its recipes and images/ may enter an image)"
    assert "ADD " not in text, f"{path}: use COPY (ADD fetches URLs and unpacks archives)"
    assert not re.search(r"pip\.conf|\.netrc|\.aws|\.env\b|id_rsa|\.pem\b", text), f"{path} copies a config or key"


def test_labels_carry_version_and_source(dockerfile):
    name, _, ins = dockerfile
    labels = label_pairs(ins)
    assert labels["org.opencontainers.image.title"] == f"sparsepipe-{name}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.source"] == "${SOURCE}"
    assert arg_defaults(ins)["SOURCE"].startswith("https://")
    assert labels["org.opencontainers.image.revision"] == "${REVISION}"
    # VERSION has no default and is checked against the installed package inside the build
    assert arg_defaults(ins)["VERSION"] is None
    assert "${VERSION}" in next(r for k, r in ins if k == "RUN" and "importlib.metadata" in r)


def test_package_indexes_are_build_arguments(dockerfile):
    _, path, ins = dockerfile
    defaults = arg_defaults(ins)
    for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"):
        assert arg in defaults, f"{path}: ARG {arg}"
    assert defaults["PIP_INDEX_URL"] == "https://pypi.org/simple"


def test_cpu_and_cuda_install_from_the_shared_lock_before_the_source(dockerfile):
    name, path, ins = dockerfile
    pip_runs = [r for k, r in ins if k == "RUN" and re.search(r"pip install", r)]
    assert pip_runs and all(" -c " in r for r in pip_runs), f"{path}: every pip install takes the constraints"
    if name == "deepsparse":
        assert any("images/deepsparse/constraints.txt" in r for k, r in ins if k == "COPY")
        return
    copy_lock = index_of(ins, lambda k, r: k == "COPY" and "images/constraints.txt" in r and "images/requirements.txt" in r)
    install_deps = index_of(ins, lambda k, r: k == "RUN" and "-r /opt/sparsepipe/requirements.txt" in r)
    copy_src = index_of(ins, lambda k, r: k == "COPY" and r.split()[0] == "src")
    version_arg = index_of(ins, lambda k, r: k == "ARG" and r == "VERSION")
    revision_arg = index_of(ins, lambda k, r: k == "ARG" and r.startswith("REVISION"))
    assert copy_lock < install_deps < copy_src, f"{path}: dependencies must be a layer before the source"
    assert install_deps < version_arg and install_deps < revision_arg, \
        f"{path}: VERSION/REVISION declared before the dependency layer would rebuild it on every release"
    assert any("--no-deps" in r for r in pip_runs), f"{path}: the package goes in without re-resolving deps"


def test_cpu_and_cuda_differ_only_in_torch_source_and_gpu_settings():
    cpu = parse_dockerfile(IMAGES_DIR / "cpu" / "Dockerfile")
    cuda = parse_dockerfile(IMAGES_DIR / "cuda" / "Dockerfile")
    cpu_defaults, cuda_defaults = arg_defaults(cpu), arg_defaults(cuda)
    assert "download.pytorch.org/whl/cpu" in cpu_defaults["PIP_EXTRA_INDEX_URL"]
    assert cuda_defaults["PIP_EXTRA_INDEX_URL"] == ""  # PyPI's torch is the CUDA build
    assert [r for k, r in cpu if k == "RUN"] == [r for k, r in cuda if k == "RUN"]
    cuda_env = {}
    for k, r in cuda:
        if k == "ENV":
            cuda_env.update(env_pairs(r))
    assert cuda_env["NVIDIA_VISIBLE_DEVICES"] == "all"


# --------------------------------------------------------------------------- the shared lock

def test_lock_files_agree_with_pyproject():
    assert lock.problems() == [], "run `python images/lock.py` after changing dependencies"
    assert lock.deepsparse_problems() == []


def test_lock_pins_torch_exactly_and_admits_cpu_builds():
    pins = lock.read_pins(lock.CONSTRAINTS)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert Requirement("torch==2.14.1").specifier.contains("2.14.1+cpu")
    assert "sparsepipe" not in pins


def test_exact_torch_pins_live_in_the_constraints_and_the_build_backend_reads_the_license():
    """pyproject states compatible ranges (a library's job); the lock holds the exact tested pair."""
    import tomllib

    pyproject = tomllib.loads((lock.ROOT / "pyproject.toml").read_text())
    deps = {canonicalize_name(Requirement(r).name): Requirement(r) for r in pyproject["project"]["dependencies"]}
    for name, pinned in (("torch", "2.14.1"), ("torchvision", "0.29.1")):
        assert not any(s.operator == "==" for s in deps[name].specifier), name
        assert deps[name].specifier.contains(pinned) and lock.read_pins(lock.CONSTRAINTS)[name] == pinned
    # a PEP 639 license string needs setuptools >= 77 (older ones reject `license = "Apache-2.0"`)
    assert isinstance(pyproject["project"]["license"], str)
    (backend,) = [Requirement(r) for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    assert not backend.specifier.contains("76.1") and backend.specifier.contains("77.0")


def test_lock_check_reports_drift(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(lock.CONSTRAINTS.read_text().replace("torch==2.14.1", "torch==2.13.0"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==2.14.1\n")
    found = lock.problems(constraints, requirements)
    assert any("requirements.txt differs" in p for p in found)
    assert any("torch==2.13.0" in p and "violates" in p for p in found)


def test_venv_matches_the_lock():
    """The environment running the tests holds exactly the locked versions of sparsepipe's dependencies."""
    pins = lock.read_pins(lock.CONSTRAINTS)
    drift = []
    for text in lock.all_requirements():
        name = canonicalize_name(Requirement(text).name)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if pins.get(name) != installed:
            drift.append(f"{name}: venv {installed}, images/constraints.txt {pins.get(name)}")
    assert not drift, f"venv and images drifted ({drift}): reinstall with -c images/constraints.txt or relock"


# --------------------------------------------------------------------------- build.py

def test_tags_follow_the_pyproject_version_and_the_components(monkeypatch):
    monkeypatch.delenv("REGISTRY", raising=False)
    assert build.tags("cpu") == [f"sparsepipe-cpu:{VERSION}"]
    monkeypatch.setenv("REGISTRY", "registry.example.com/team/")
    assert build.tags("cuda") == [f"sparsepipe-cuda:{VERSION}", f"registry.example.com/team/sparsepipe-cuda:{VERSION}"]
    components = (ROOT / "components" / "images.py").read_text()
    default_repo = re.search(r'DEFAULT_IMAGE_REPO = "([^"]+)"', components).group(1)
    # components default to <repo>/sparsepipe-cpu:<version> and <repo>/sparsepipe-cuda:<version>
    assert '/sparsepipe-cpu:{sparsepipe.__version__}' in components
    assert '/sparsepipe-cuda:{sparsepipe.__version__}' in components
    monkeypatch.setenv("REGISTRY", default_repo)
    assert build.tags("cpu")[-1] == f"{default_repo}/sparsepipe-cpu:{VERSION}"


def test_build_commands_per_engine(monkeypatch, tmp_path):
    for var in ("REGISTRY", "BASE_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "WHEELS", "MOUNTS", "HOST_PIP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BASE_IMAGE", "localhost/sparsepipe-base:bookworm")
    monkeypatch.setenv("WHEELS", str(tmp_path))
    cmd = build.build_command("buildah", "cpu", tmp_path)
    assert cmd[:5] == ["buildah", "bud", "--layers", "--isolation", "chroot"]
    text = shlex.join(cmd)
    assert f"--build-arg VERSION={VERSION}" in text
    assert "--build-arg BASE_IMAGE=localhost/sparsepipe-base:bookworm" in text
    assert f"--volume {tmp_path}:/wheels:ro" in text and "--build-arg PIP_FIND_LINKS=/wheels" in text
    deepsparse = shlex.join(build.build_command("podman", "deepsparse", tmp_path))
    assert f"--build-arg BASE_IMAGE=sparsepipe-cpu:{VERSION}" in deepsparse
    with pytest.raises(SystemExit, match="cannot mount host folders"):
        build.build_command("docker", "cpu", tmp_path)
    monkeypatch.delenv("WHEELS")
    docker = build.build_command("docker", "cuda", tmp_path)
    assert docker[:2] == ["docker", "build"] and "--volume" not in docker


def test_push_needs_a_registry(monkeypatch, capsys):
    monkeypatch.delenv("REGISTRY", raising=False)
    with pytest.raises(SystemExit, match="REGISTRY"):
        build.main(["--dry-run", "push"])
    monkeypatch.setenv("REGISTRY", "registry.example.com/team")
    monkeypatch.setenv("ENGINE", "docker")
    monkeypatch.setattr(build.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert build.main(["--dry-run", "push", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"docker tag sparsepipe-cpu:{VERSION} registry.example.com/team/sparsepipe-cpu:{VERSION}" in out
    assert f"docker push registry.example.com/team/sparsepipe-cpu:{VERSION}" in out


def test_engine_choice(monkeypatch):
    monkeypatch.setenv("ENGINE", "rkt")
    with pytest.raises(SystemExit, match="docker, podman or buildah"):
        build.detect_engine()
    monkeypatch.delenv("ENGINE")
    monkeypatch.setattr(build.shutil, "which", lambda name: "/usr/bin/buildah" if name == "buildah" else None)
    assert build.detect_engine() == "buildah"
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="no container engine"):
        build.detect_engine()


def test_staged_context_holds_only_the_package_and_images(tmp_path):
    build.stage_context(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "images", "pyproject.toml", "recipes", "src"]
    assert not list(tmp_path.rglob("__pycache__")) and not list(tmp_path.rglob("*.egg-info"))


# --------------------------------------------------------------------------- opt-in: build and run

def _engine_or_skip() -> str:
    if os.environ.get("SPARSEPIPE_TEST_IMAGES") != "1":
        pytest.skip("opt-in: make test-images (SPARSEPIPE_TEST_IMAGES=1)")
    try:
        return build.detect_engine()
    except SystemExit as exc:  # asked for (make test-images) but impossible here: a failure, not a skip
        pytest.fail(f"make test-images needs a container engine: {exc}")


@pytest.mark.images
@pytest.mark.timeout(3600)
def test_cpu_image_builds_and_runs_the_steps(tmp_path):
    engine = _engine_or_skip()
    image = build.local_tag("cpu")

    start = time.monotonic()
    subprocess.run([sys.executable, str(IMAGES_DIR / "build.py"), "build", "cpu"], check=True)
    print(f"\nbuilt {image} with {engine} in {time.monotonic() - start:.0f} s")

    config = build.inspect(image, engine)
    assert config["Entrypoint"] == ["sparsepipe"]
    assert config["User"] == "10001:10001"
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    assert config["Labels"]["org.opencontainers.image.source"].startswith("https://")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert not [k for k in env if SECRETY.search(k) or k.startswith(("PIP_INDEX", "PIP_EXTRA", "PIP_FIND", "PIP_CERT"))]

    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the image's user (uid 10001) writes here

    def sparsepipe(*argv: str, entrypoint: str | None = None) -> str:
        began = time.monotonic()
        done = build.run_in_image(image, list(argv), [f"{work}:/work"], entrypoint=entrypoint, engine=engine,
                                  capture_output=True, text=True, timeout=1800)
        print(f"{' '.join(argv)[:70]}: {time.monotonic() - began:.0f} s")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    assert "usage: sparsepipe" in sparsepipe("--help")
    # the shipped recipes are in the image where pipelines look for them
    assert "total epochs: 100" in sparsepipe("recipe", "validate", "/opt/sparsepipe/recipes/yolov8n-pruned50.yaml")
    sparsepipe("data", "--source", "synthetic:train=8,val=4,size=96", "--out", "/work/data")
    sparsepipe("train", "--model", "yolov8n.yaml", "--data", "/work/data", "--epochs", "1", "--imgsz", "64",
               "--batch", "4", "--workers", "0", "--no-track", "--out", "/work/train")
    sparsepipe("export", "--model", "/work/train", "--imgsz", "64", "--no-track", "--out", "/work/export")
    sparsepipe("benchmark", "--model", "/work/export", "--iterations", "5", "--no-track", "--out", "/work/bench")
    # what the KFP launcher runs before a lightweight component: kfp is already there, no network
    sparsepipe("-c", "python3 -m pip install --quiet --no-warn-script-location 'kfp==2.17.0' --no-deps"
               " && python3 -c 'import kfp.dsl.executor_main, sparsepipe.kfp_support'", entrypoint="sh")
    # none of the build's package sources stayed in the image (engines may leave empty mount points)
    pip_config = sparsepipe("-c", "pip config list; find /wheels /opt/wheels /opt/pypi /opt/pypi-more -mindepth 1"
                            " 2>/dev/null | head -3", entrypoint="sh")
    assert not re.search(r"index-url|find-links|cert|\.whl", pip_config), pip_config

    results = {step: json.loads((work / step / "result.json").read_text()) for step in ("data", "train", "export", "bench")}
    assert results["train"]["step"] == "train" and (work / "train" / "model.pt").stat().st_size > 100_000
    onnx_file = work / "export" / "model.onnx"
    assert onnx_file.stat().st_size > 100_000
    assert results["export"]["metrics"]["size_mb"] > 0
    assert results["bench"]["metrics"]["latency_ms_p50"] > 0
    assert results["bench"]["metrics"]["throughput_ips"] > 0
    owners = {p.stat().st_uid for p in work.rglob("*")}
    assert owners == {10001}, f"files written as {owners}"
