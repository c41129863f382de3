"""Run parameters: YAML files loaded into frozen, documented dataclasses.

- :mod:`cogpo_kit.params.loader`: typed YAML loading, :class:`ParamsError`, ``params_dict``; it imports
  no other part of the kit, so a stage takes what it needs from there;
- :mod:`cogpo_kit.params.run`: :class:`RunParams` (one section per stage, each stage's own config
  class) and ``load_params``.

``from cogpo_kit.params import RunParams, load_params`` works as before: these two names load
:mod:`.run` on first use, so importing this package loads no stage's config (and through it no
other stage's code).
"""

from cogpo_kit.params.loader import ParamsError, from_dict, params_dict, to_dict

_FROM_RUN = ("RunParams", "load_params")


def __getattr__(name: str):
    if name in _FROM_RUN:
        from cogpo_kit.params import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FROM_RUN])


__all__ = ["ParamsError", "RunParams", "from_dict", "load_params", "params_dict", "to_dict"]
