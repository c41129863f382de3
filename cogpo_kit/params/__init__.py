"""Run parameters: YAML files loaded into frozen, documented dataclasses."""

from cogpo_kit.params.loader import ParamsError, from_dict, to_dict
from cogpo_kit.params.run import RunParams, load_params, params_dict

__all__ = ["ParamsError", "RunParams", "from_dict", "load_params", "params_dict", "to_dict"]
