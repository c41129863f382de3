# Leaves llama.cpp's "common" library (and the cpp-httplib it links) out of the llama-cpp-python build.
#
# How it is used: `make install` passes it to llama-cpp-python's CMake build through CMAKE_ARGS as
#   -DCMAKE_PROJECT_INCLUDE=<this file>
# (see LLAMA_CMAKE_ARGS in the Makefile). CMake runs it right after every project() call.
#
# Why: llama-cpp-python 0.3.36 forces LLAMA_BUILD_COMMON=ON in its cache, so -DLLAMA_BUILD_COMMON=OFF
# on the command line has no effect. The Python package never loads that library (it loads libllama,
# libggml* and, for multimodal chat handlers only, libmtmd), and llama-cpp-python itself builds without
# it for WebAssembly. A plain variable set in llama.cpp's own directory scope, after its project() call
# and before its option(LLAMA_BUILD_COMMON ...), wins over the forced cache entry (policy CMP0077), so
# llama.cpp skips common/, its install rule and vendor/cpp-httplib.
if(PROJECT_NAME STREQUAL "llama.cpp")
    set(LLAMA_BUILD_COMMON OFF)
    message(STATUS "cogpo-kit: llama.cpp common library not built (${CMAKE_CURRENT_LIST_FILE})")
endif()
