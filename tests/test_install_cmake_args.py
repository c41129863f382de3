"""The CMake arguments `make install` builds llama-cpp-python with (Makefile LLAMA_CMAKE_ARGS).

Run: ``.venv/bin/pytest -q tests/test_install_cmake_args.py``

The Makefile prints them with ``make -s llama-cmake-args``. llama-cpp-python forces
``LLAMA_BUILD_COMMON=ON`` in its CMake cache and then adds llama.cpp as a subdirectory;
``cmake/llama_cpp_minimal.cmake`` switches that library off again inside llama.cpp's own scope.
These tests configure a two-level CMake project laid out the same way (no compiler needed) with the
printed arguments and check what llama.cpp's scope sees.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("cmake") is None,
                                reason="make and cmake are needed")

# llama-cpp-python 0.3.36's CMakeLists.txt, reduced to what decides the libraries built: it forces
# the common library on, then adds llama.cpp, whose own CMakeLists declares the option again.
PARENT = """cmake_minimum_required(VERSION 3.21)
project(llama_cpp NONE)
option(LLAVA_BUILD "Build llava shared library" ON)
set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)
add_subdirectory(vendor/llama.cpp)
message(STATUS "SEEN LLAVA_BUILD=${LLAVA_BUILD}")
"""
CHILD = """cmake_minimum_required(VERSION 3.14...3.28)
project("llama.cpp" NONE)
option(LLAMA_BUILD_COMMON "llama: build common utils library" OFF)
option(LLAMA_BUILD_TOOLS "llama: build tools" OFF)
message(STATUS "SEEN LLAMA_BUILD_COMMON=${LLAMA_BUILD_COMMON}")
message(STATUS "SEEN LLAMA_BUILD_TOOLS=${LLAMA_BUILD_TOOLS}")
"""


def make_args(extra_env: dict[str, str] | None = None) -> list[str]:
    """The arguments ``make -s llama-cmake-args`` prints, run outside any make (as a user would)."""
    outer = ("CMAKE_ARGS", "LLAMA_CMAKE_ARGS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    env.update(extra_env or {})
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "llama-cmake-args"],
                         env=env, check=True, capture_output=True, text=True, timeout=60).stdout
    return shlex.split(out)


def configure(tmp_path: Path, args: list[str]) -> dict[str, str]:
    (tmp_path / "src" / "vendor" / "llama.cpp").mkdir(parents=True)
    (tmp_path / "src" / "CMakeLists.txt").write_text(PARENT)
    (tmp_path / "src" / "vendor" / "llama.cpp" / "CMakeLists.txt").write_text(CHILD)
    run = subprocess.run(["cmake", "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build"), *args],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"cmake configure failed with {args}:\n{run.stdout}\n{run.stderr}"
    seen = {}
    for line in run.stdout.splitlines():
        if "SEEN " in line:
            key, value = line.split("SEEN ", 1)[1].split("=", 1)
            seen[key] = value
    return seen


def test_printed_args_name_existing_files_and_leave_out_multimodal():
    args = make_args()
    assert "-DLLAVA_BUILD=OFF" in args, args
    includes = [a.split("=", 1)[1] for a in args if a.startswith("-DCMAKE_PROJECT_INCLUDE=")]
    assert includes, f"no -DCMAKE_PROJECT_INCLUDE in {args}"
    for path in includes:
        assert Path(path).is_file(), f"CMAKE_ARGS names {path}, which does not exist"


def test_common_library_is_off_inside_llama_cpp_despite_the_forced_cache(tmp_path):
    seen = configure(tmp_path, make_args())
    assert seen == {"LLAMA_BUILD_COMMON": "OFF", "LLAMA_BUILD_TOOLS": "OFF", "LLAVA_BUILD": "OFF"}, seen


def test_without_the_include_the_forced_cache_wins(tmp_path):
    # the reduced project reproduces the problem the include solves: -D alone cannot switch it off
    seen = configure(tmp_path, ["-DLLAMA_BUILD_COMMON=OFF"])
    assert seen["LLAMA_BUILD_COMMON"] == "ON", seen


def test_cmake_args_from_the_environment_come_last():
    args = make_args({"CMAKE_ARGS": "-DGGML_CUDA=on -DLLAVA_BUILD=ON"})
    assert args[-2:] == ["-DGGML_CUDA=on", "-DLLAVA_BUILD=ON"], args
    assert "-DLLAVA_BUILD=OFF" in args[:-2]


def test_empty_llama_cmake_args_restore_llama_cpp_python_defaults():
    assert make_args({"LLAMA_CMAKE_ARGS": ""}) == []
