"""Start llama-cpp-python's OpenAI-compatible server with the kit's llama.cpp model settings.

``python -m cogpo_kit.engines.llamacpp_server --model FILE.gguf --host 127.0.0.1 --port N``
takes the same arguments as ``python -m llama_cpp.server`` and runs that server unchanged, except
that models load with :func:`cogpo_kit.engines.llamacpp_model.model_params` (llama.cpp's AMX kernels
switched off on CPUs that report AMX, where they may die with SIGILL inside containers).
"""

from __future__ import annotations


def main() -> None:
    from cogpo_kit.engines.common import openmp_defaults

    openmp_defaults()  # before the library loads
    import llama_cpp.llama as llama_module

    from cogpo_kit.engines.llamacpp_model import use_extra_buffers

    lib = llama_module.llama_cpp  # the ctypes bindings module llama_cpp.Llama reads its defaults from
    default_params = lib.llama_model_default_params

    def params():
        p = default_params()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = use_extra_buffers()
        return p

    lib.llama_model_default_params = params
    from llama_cpp.server.__main__ import main as server_main

    server_main()


if __name__ == "__main__":
    main()
