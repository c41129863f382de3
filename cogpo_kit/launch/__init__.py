"""Helpers of the cluster recipes in ``params/launch/`` (SLURM batch scripts and their shell equivalents).

- :mod:`cogpo_kit.launch.fleet_params`: wait until a fleet of ``vllm serve`` servers answers, then write the
  params fragment that points the CRV agents at it (``python -m cogpo_kit.launch.fleet_params --help``);
- :mod:`cogpo_kit.launch.global_batch`: the global batch a training launch will have (processes x per-device
  batch x accumulation), checked against the paper's (``python -m cogpo_kit.launch.global_batch --help``).

The recipes use SLURM's own ``srun``/``scontrol``, vLLM's own server and ``accelerate launch``; these modules
only do what a shell script does badly (HTTP checks, YAML, reading params).
"""
