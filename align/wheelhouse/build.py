"""Build an offline wheelhouse: every wheel a GPU node needs for align's ``gpu`` extra, hashed.

``make wheelhouse TARGET=gpu [INSTALLED=node.txt] [PARTS_MB=60]`` runs this on a machine with
PyPI; ``install_offline.py`` (copied into the wheelhouse) installs it on the node with no network.

1. Requirements: align's dependencies (pyproject.toml) plus the target's extra, with the target's
   pins replacing align's own CPU torch pin (the node keeps the CUDA torch it has).
2. Resolve with pip for the target, not for this machine: ``pip install --dry-run --report``,
   wheels only, cp312 on manylinux x86_64 up to the node's glibc, constrained by the node's
   installed list (``pip freeze`` output) so pip keeps what the node has. Two fallbacks, each printed:
   - an installed pin that a requirement contradicts (vllm 0.26.0 pins numba==0.65.0, the H200
     image has 0.68.0) is dropped, so the wheelhouse carries the version needed and the node's
     copy is replaced; torch, triton and the CUDA libraries are never dropped (that is an error);
   - a requirement with no wheel for the target (deepspeed publishes only an sdist) is built here
     from its sdist and kept only if the wheel is pure Python (``py3-none-any``).
3. Download the resolved wheels the node does not already have and check their sha256 against the
   index's. 4. Build align's wheel and mamba_ssm's pure-Python wheel (Triton kernels, no nvcc).
5. Write ``manifest.json``, copy ``install_offline.py``, and optionally cut the folder into parts.

Limit: pip evaluates environment markers with the interpreter running it (this venv's Python), not
the target's; requirements whose markers hold on the target's Python only are added and resolved
again (``_marker_gaps``), ones that hold here only cost an unused wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from align.wheelhouse import install_offline
from align.wheelhouse.install_offline import MANIFEST, WheelhouseError, sha256_file, split_file

ROOT = Path(__file__).resolve().parents[2]
# Never replaced on the node: a different torch or CUDA library breaks everything built against it.
# (cuda-bindings and cuda-core are Python bindings; vllm 0.26.0's humming-kernels needs cuda-core 1.0.)
HARD_PINS = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-toolkit)$")
MAX_FALLBACKS = 30


@dataclass(frozen=True)
class Target:
    name: str
    python_version: str  # the node's interpreter, major.minor
    python_full_version: str  # for environment markers
    glibc: tuple[int, int]  # the node's glibc: manylinux wheels up to this version run there
    extra: str  # align's optional dependency group
    pins: dict[str, str]  # name -> version, replacing align's own specifier
    sdist_builds: dict[str, dict[str, str]] = field(default_factory=dict)  # "name==version" -> env; --no-deps wheels

    def pip_platform_args(self) -> list[str]:
        """pip matches ``--platform`` exactly, so list every manylinux tag the node's glibc runs."""
        args = ["--python-version", self.python_version, "--implementation", "cp"]
        for minor in range(self.glibc[1], 16, -1):
            args += ["--platform", f"manylinux_{self.glibc[0]}_{minor}_x86_64"]
        return args + ["--platform", "manylinux2014_x86_64"]  # pip expands it to manylinux2010 and manylinux1


TARGETS = {
    # The lent H200 image: Python 3.12.3, glibc 2.39, torch 2.11.0+cu130; vllm 0.26.0 pins that torch.
    "gpu": Target(
        name="gpu", python_version="3.12", python_full_version="3.12.3", glibc=(2, 39), extra="gpu",
        pins={"torch": "2.11.0", "vllm": "0.26.0"},
        sdist_builds={"mamba_ssm==2.3.2.post1": {"MAMBA_SKIP_CUDA_BUILD": "TRUE", "MAMBA_FORCE_BUILD": "TRUE"}},
    ),
}  # fmt: skip


def project_requirements(pyproject: Path, target: Target) -> list[str]:
    """align's dependencies plus the target's extra, each pinned name given the target's version."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = []
    for spec in project["dependencies"] + project["optional-dependencies"][target.extra]:
        req = Requirement(spec)
        pin = target.pins.get(canonicalize_name(req.name))
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        reqs.append(f"{req.name}{extras}=={pin}" if pin else spec)
    return reqs


def read_installed(path: Path) -> dict[str, str]:
    """``pip freeze`` output -> {canonical name: version}; editable and URL lines are ignored."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or " @ " in line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise WheelhouseError(f"{path}:{n}: expected NAME==VERSION (pip freeze output), got {line!r}")
        out[canonicalize_name(name.strip())] = version.strip()
    return out


def _pip(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run this venv's pip; its output without the warnings about index folders this machine lacks."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    noise = re.compile(r"^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.\n", re.M)
    proc.stdout, proc.stderr = noise.sub("", proc.stdout), noise.sub("", proc.stderr)
    return proc


def build_sdist_wheel(spec: str, dest: Path, constraints: Path | None = None, env: dict[str, str] | None = None) -> Path:
    """Build one wheel from its sdist here; it must be pure Python to run on the target."""
    args = ["wheel", "--no-deps", "--no-binary", ":all:", "-w", str(dest), spec]
    if env:
        args.append("--no-build-isolation")  # builds that read env vars need torch from this venv
    if constraints:
        args += ["-c", str(constraints)]
    before = set(dest.glob("*.whl"))
    proc = _pip(args, env)
    made = sorted(set(dest.glob("*.whl")) - before)
    if proc.returncode != 0 or len(made) != 1:
        raise WheelhouseError(f"building a wheel of {spec!r} from its sdist failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    tags = parse_wheel_filename(made[0].name)[3]
    if not all(t.abi == "none" and t.platform == "any" for t in tags):
        made[0].unlink()
        raise WheelhouseError(f"{spec}: no wheel for the target on the index, and its sdist builds a platform wheel "
                              f"({sorted(map(str, tags))}): build it on a machine like the node and add it by hand")  # fmt: skip
    print(f"built {made[0].name} from its sdist (pure Python)")
    return made[0]


def _marker_gaps(report: dict, target: Target) -> list[str]:
    """Requirements whose markers hold on the target's Python but not on this one (markers dropped).

    Example: vllm 0.26.0 needs ``setuptools<81; python_version > "3.11"``, the H200 has 81.0.0."""
    host = dict(default_environment())
    tgt = {**host, "python_version": target.python_version, "python_full_version": target.python_full_version}
    gaps = []
    for item in report["install"]:
        for spec in item["metadata"].get("requires_dist") or []:
            req = Requirement(spec)
            if req.marker is None:
                continue
            for extra in ["", *(item.get("requested_extras") or [])]:
                if req.marker.evaluate({**tgt, "extra": extra}) and not req.marker.evaluate({**host, "extra": extra}):
                    req.marker = None
                    gaps.append(str(req))
                    break
    return sorted(set(gaps))


def resolve(reqs: list[str], target: Target, installed: dict[str, str], work: Path, built: Path) -> tuple[dict, list[str]]:
    """pip's resolution for the target; returns the report and the installed pins it had to drop."""
    constraints = dict(installed) | {canonicalize_name(n): v for n, v in target.pins.items()}
    dropped: list[str] = []
    reqs = list(reqs)
    for _ in range(MAX_FALLBACKS):
        (work / "requirements.txt").write_text("\n".join(reqs) + "\n")
        (work / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
        report = work / "report.json"
        proc = _pip(["install", "--dry-run", "--ignore-installed", "--only-binary=:all:", *target.pip_platform_args(),
                     "--find-links", str(built), "-c", str(work / "constraints.txt"), "-r", str(work / "requirements.txt"),
                     "--report", str(report)])  # fmt: skip
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            data = json.loads(report.read_text())
            gaps = [g for g in _marker_gaps(data, target) if g not in reqs]
            if not gaps:
                return data, dropped
            print(f"needed on Python {target.python_version} only, resolving again with them: {gaps}")
            reqs += gaps
            continue
        conflicts = re.findall(r"The user requested \(constraint\) ([A-Za-z0-9._-]+)==(\S+)", out)
        missing = re.search(r"No matching distribution found for (.+?)(?: \(from [^)]*\))?$", out, re.M)
        if conflicts:
            names = {canonicalize_name(name): version for name, version in conflicts}
            if hard := sorted(n for n in names if HARD_PINS.match(n)):
                raise WheelhouseError(f"a requirement needs another {hard} than the node's, which is never replaced:\n{out[-3000:]}")
            if not names.keys() & constraints.keys():
                raise WheelhouseError(f"pip still reports a conflict with {sorted(names)} after dropping them:\n{out[-3000:]}")
            for name in names.keys() & constraints.keys():
                dropped.append(f"{name}=={constraints.pop(name)}")
                print(f"the node's {dropped[-1]} conflicts with a requirement: the wheelhouse replaces it")
        elif missing:
            build_sdist_wheel(missing.group(1).strip(), built, work / "constraints.txt")
        else:
            raise WheelhouseError(f"pip could not resolve the requirements for target {target.name}:\n{out[-4000:]}")
    raise WheelhouseError(f"gave up after {MAX_FALLBACKS} fallbacks while resolving target {target.name}")


def download(items: list[dict], target: Target, built: Path, dest: Path) -> list[Path]:
    """Fetch the given report items' wheels into ``dest`` and check them against the index's sha256."""
    pins = dest.parent / "download.txt"
    pins.write_text("".join(f"{i['metadata']['name']}=={i['metadata']['version']}\n" for i in items))
    proc = _pip(["download", "--no-deps", "--only-binary=:all:", *target.pip_platform_args(), "--find-links", str(built),
                 "-d", str(dest), "-r", str(pins)])  # fmt: skip
    if proc.returncode != 0:
        raise WheelhouseError(f"pip download failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    files = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in dest.glob("*.whl")}
    for item in items:
        name = canonicalize_name(item["metadata"]["name"])
        if name not in files:
            raise WheelhouseError(f"pip download did not save a wheel of {name}=={item['metadata']['version']}")
        want = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if want and sha256_file(files[name]) != want:
            raise WheelhouseError(f"{files[name]}: sha256 differs from the index's {want}: delete it and run again")
    return list(files.values())


def _entry(path: Path, deps: bool) -> dict:
    name, version, _, _ = parse_wheel_filename(path.name)
    return {"file": path.name, "name": str(name), "version": str(version), "sha256": sha256_file(path), "size": path.stat().st_size, "deps": deps}


def build(target: Target, installed_path: Path | None, out: Path, parts_mb: int = 0) -> Path:
    """Write the wheelhouse folder ``out`` (and ``out``'s parts beside it if ``parts_mb``); returns what to copy."""
    if out.exists():
        shutil.rmtree(out)
    work = out.with_name(out.name + ".work")
    built = work / "built"
    built.mkdir(parents=True, exist_ok=True)  # kept between runs: sdist builds are slow
    out.mkdir(parents=True)
    installed = read_installed(installed_path) if installed_path else {}

    report, dropped = resolve(project_requirements(ROOT / "pyproject.toml", target), target, installed, work, built)
    items = report["install"]
    have = [i for i in items if installed.get(canonicalize_name(i["metadata"]["name"])) == i["metadata"]["version"]]
    fetch = [i for i in items if i not in have]
    print(f"resolved {len(items)} packages: {len(have)} already on the node, {len(fetch)} to fetch")
    entries = [_entry(p, deps=True) for p in download(fetch, target, built, out)]

    extra_dir = work / "nodeps"
    shutil.rmtree(extra_dir, ignore_errors=True)
    extra_dir.mkdir()
    for spec, env in target.sdist_builds.items():
        build_sdist_wheel(spec, extra_dir, env=env)
    proc = _pip(["wheel", "--no-deps", "-w", str(extra_dir), str(ROOT)])
    if proc.returncode != 0:
        raise WheelhouseError(f"building align's wheel failed:\n{proc.stderr[-3000:]}")
    for p in sorted(extra_dir.glob("*.whl")):
        entries.append(_entry(shutil.copy2(p, out / p.name), deps=False))

    manifest = {
        "target": target.name, "python": target.python_version, "platforms": target.pip_platform_args()[5::2],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "installed_list": installed_path.name if installed_path else None,
        "replaced_on_node": dropped,
        "skipped": [{"name": i["metadata"]["name"], "version": i["metadata"]["version"]} for i in have],
        "wheels": sorted(entries, key=lambda e: e["name"].lower()),
    }  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copy2(install_offline.__file__, out / "install_offline.py")
    size = sum(e["size"] for e in entries) / 2**20
    print(f"wrote {out}: {len(entries)} wheels, {size:.1f} MiB; replaced on the node: {dropped or 'nothing'}")
    if parts_mb <= 0:
        return out
    return pack_parts(out, parts_mb)


def pack_parts(folder: Path, parts_mb: int) -> Path:
    """Tar ``folder`` (uncompressed: wheels are zip files already) into parts of ``parts_mb`` MiB."""
    parts = folder.with_name(folder.name + "-parts")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    archive = parts / f"{folder.name}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=folder.name)
    index = split_file(archive, parts_mb * 2**20)
    shutil.copy2(install_offline.__file__, parts / "install_offline.py")
    n = len(json.loads(index.read_text())["parts"])
    print(f"wrote {n} parts of at most {parts_mb} MiB to {parts}: copy the folder, then run python3 {parts.name}/install_offline.py {parts.name}")
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--target", choices=sorted(TARGETS), default="gpu")
    p.add_argument("--installed", type=Path, help="the node's `python3 -m pip freeze`: those packages are not fetched")
    p.add_argument("--out", type=Path, help="the wheelhouse folder (default: wheelhouse/TARGET)")
    p.add_argument("--parts-mb", type=int, default=0, help="also cut it into parts of at most this many MiB")
    args = p.parse_args(argv)
    if args.installed and not args.installed.is_file():
        print(f"error: --installed {args.installed}: no such file (make one on the node: python3 -m pip freeze > installed.txt)", file=sys.stderr)
        return 2
    try:
        build(TARGETS[args.target], args.installed, (args.out or ROOT / "wheelhouse" / args.target).resolve(), args.parts_mb)
    except WheelhouseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
