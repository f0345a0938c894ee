"""Find or make the pyhoptcluster wheel that the worker hosts install, on the control node.

Run by the hyperopt_worker role (tasks/install.yml) with the Python that runs Ansible:

    python worker_wheel.py --collection-dir DIR --cache-dir DIR [--project-dir DIR] [--no-build]

It prints one JSON object: ``{"wheel": path or "", "digest": sha256, "version": ..., "source":
"checkout" | "installed", "built": bool}``. The wheel is the same pyhoptcluster as the control node's:

- from a checkout (the collection dir is a checkout's root, an editable install, or --project-dir):
  ``pip wheel --no-deps`` of that project, reproducible (SOURCE_DATE_EPOCH);
- from an installed pyhoptcluster (a wheel installed by pip, no source tree): its installed files
  packed back into a wheel, without the collection it carries (workers do not run Ansible).

Either way the wheel is kept in ``<cache-dir>/<digest[:16]>/``, the digest being over the package's
files, so it is made once per version of the code. Standard library only, and the package is found
without importing it (importing pyhoptcluster imports hyperopt: ~1 s on every warm run).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", "_collection"}
EPOCH = (1980, 1, 1, 0, 0, 0)


class WheelError(Exception):
    pass


def package_files(pkg: Path) -> list[Path]:
    """The package's files, sorted, without caches and without the collection it carries."""
    found = []
    for path in sorted(pkg.rglob("*")):
        rel = path.relative_to(pkg)
        if path.is_file() and not SKIP_DIRS & set(rel.parts[:-1]) and path.suffix != ".pyc":
            found.append(path)
    return found


def digest(pkg: Path, extra: list[Path], version: str) -> str:
    h = hashlib.sha256(version.encode())
    for path in [*extra, *package_files(pkg)]:
        name = path.name if path in extra else path.relative_to(pkg).as_posix()
        h.update(f"\0{name}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def collection_version(collection_dir: Path) -> str | None:
    """The collection's version: galaxy.yml (a checkout, the wheel's copy) or MANIFEST.json (a
    collection installed by ansible-galaxy)."""
    manifest = collection_dir / "MANIFEST.json"
    if manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8"))["collection_info"]["version"]
    galaxy = collection_dir / "galaxy.yml"
    if galaxy.is_file():
        for line in galaxy.read_text(encoding="utf-8").splitlines():
            if line.startswith("version:"):
                return line.split(":", 1)[1].strip().strip("'\"")
    return None


def pyproject_version(project: Path) -> str:
    for line in (project / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip("'\"")
    raise WheelError(f"{project}/pyproject.toml names no version")


def build_checkout(project: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        argv.append("--no-build-isolation")  # no isolated build env to download
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    done = subprocess.run([*argv, str(project)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise WheelError(f"pip wheel {project} failed: {(done.stderr or done.stdout).strip()[-2000:]}")


def _record_line(name: str, data: bytes) -> str:
    sha = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={sha},{len(data)}"


def pack_installed(pkg: Path, dist: importlib.metadata.Distribution, out: Path) -> Path:
    """The installed package's files as a pure-Python wheel (what pip installed from, minus the
    collection), written atomically."""
    version = dist.version
    info = f"pyhoptcluster-{version}.dist-info"
    entries: list[tuple[str, bytes]] = [
        (f"pyhoptcluster/{p.relative_to(pkg).as_posix()}", p.read_bytes()) for p in package_files(pkg)
    ]
    metadata = dist.read_text("METADATA")
    if metadata is None:
        raise WheelError(f"the installed pyhoptcluster {version} has no METADATA; reinstall it")
    entries.append((f"{info}/METADATA", metadata.encode()))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    wheel = "Wheel-Version: 1.0\nGenerator: worker_wheel.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries.append((f"{info}/WHEEL", wheel.encode()))
    record = "\n".join(_record_line(n, d) for n, d in entries) + f"\n{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"pyhoptcluster-{version}-py3-none-any.whl"
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zinfo = zipfile.ZipInfo(name, EPOCH)
            zinfo.external_attr = 0o644 << 16
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zinfo, data)
    tmp.replace(target)
    return target


def find(collection_dir: Path, cache_dir: Path, project_dir: str, build: bool) -> dict:
    expected = collection_version(collection_dir)
    project = Path(project_dir).expanduser() if project_dir else None
    if project is None and (collection_dir / "pyproject.toml").is_file():
        project = collection_dir  # the collection is a checkout's root
    dist = None
    if project is None:
        spec = importlib.util.find_spec("pyhoptcluster")
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise WheelError(
                f"the pyhoptcluster Python package is not installed in {sys.executable}, the Python that "
                "runs Ansible; the worker hosts get the same package as the control node: pip install "
                f"pyhoptcluster{'==' + expected if expected else ''} there (or set "
                "hyperopt_worker_project_dir to a checkout)"
            )
        pkg = Path(locations[0])
        if (pkg.parent / "pyproject.toml").is_file():
            project = pkg.parent  # an editable install: its checkout
        else:
            dist = importlib.metadata.distribution("pyhoptcluster")
    if project is not None:
        pkg, version, source = project / "pyhoptcluster", pyproject_version(project), "checkout"
        extra = [project / "pyproject.toml"]
    else:
        assert dist is not None
        version, extra, source = dist.version, [], "installed"
    if expected and version != expected:
        raise WheelError(
            f"the control node's pyhoptcluster is {version} ({pkg}) but the collection pyhoptcluster.cluster "
            f"is {expected} ({collection_dir}): install the same version of both "
            f"(pip install pyhoptcluster=={expected}, or ansible-galaxy collection install of {version})"
        )
    key = digest(pkg, extra, version)
    out = cache_dir.expanduser() / key[:16]
    wheels = sorted(out.glob("pyhoptcluster-*.whl")) if out.is_dir() else []
    built = False
    if not wheels and build:
        if source == "checkout":
            build_checkout(project, out)
        else:
            pack_installed(pkg, dist, out)
        wheels, built = sorted(out.glob("pyhoptcluster-*.whl")), True
    return {
        "wheel": str(wheels[0]) if wheels else "",
        "digest": key,
        "version": version,
        "source": source,
        "built": built,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection-dir", required=True, type=Path)
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--project-dir", default="")
    parser.add_argument("--no-build", action="store_true", help="only report (check mode)")
    args = parser.parse_args()
    try:
        result = find(args.collection_dir.resolve(), args.cache_dir, args.project_dir, not args.no_build)
    except (WheelError, OSError, importlib.metadata.PackageNotFoundError) as exc:
        print(json.dumps({"failed": True, "msg": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
